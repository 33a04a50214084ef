"""Command line: ``python -m gradwatch report RUN.jsonl`` renders one run of a log (or all runs)."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Sequence

from .. import __version__
from .runlog import LogFormatError, LogScan, Run, describe_problem, pick_run, scan_log

__all__ = ["DEFAULT_ROOT", "build_parser", "default_out", "main"]

DEFAULT_ROOT = "gradwatch-report"
"""The bench's default folder (`gradwatch.bench.run_bench`); a log's report goes in a subfolder."""

_FIGURES = (("flow.png", "Gradient flow across layers (first, middle and last step)"),
            ("norms.png", "Gradient norms over steps"),
            ("heatmap.png", "gradient norm per layer and step (log colour scale)"),
            ("loss.png", "Loss over steps (as passed to gradwatch)"))


PLOT_INSTALL = ('install it with pip install matplotlib (or pip install -e ".[plot]" in the '
                'gradwatch checkout)')
"""How to get matplotlib: gradwatch is not on a package index, so no ``gradwatch[plot]``."""

_MOST_WARNINGS = 10  # bad lines named one by one; the rest are counted


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 1 (``code``: another)."""

    code = 1


class UsageError(CliError):
    """A user-facing failure of the flags: exit status 2."""

    code = 2


def default_out(log: Path) -> Path:
    """``gradwatch-report/<log name without .jsonl>``: beside the bench's report, never over it."""
    return Path(DEFAULT_ROOT) / (log.stem or "run")


def build_parser() -> argparse.ArgumentParser:
    """The ``gradwatch`` argument parser (``--version``, subcommand ``report``)."""
    parser = argparse.ArgumentParser(
        prog="gradwatch", description="Inspect gradient logs written by gradwatch.JsonlLogger.")
    parser.add_argument("--version", action="version", version=f"gradwatch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    rep = sub.add_parser(
        "report", help="render figures and a summary from a JSON-lines log",
        description="Render gradient-flow, norms-over-steps and heat-map figures plus report.md "
                    "(and report.html with --html) for one run of a log written by JsonlLogger "
                    "(the last run by default). Works on the log of a crashed or resumed run: "
                    "lines cut by a kill are skipped with a warning.")
    rep.set_defaults(parser=rep)
    rep.add_argument("log", type=Path, metavar="RUN.jsonl", help="log written by JsonlLogger")
    rep.add_argument("--out", type=Path, metavar="DIR",
                     help=f"output folder, created if needed (default: {DEFAULT_ROOT}/<log name>,"
                          f" next to the bench's report in {DEFAULT_ROOT}/)")
    which = rep.add_mutually_exclusive_group()
    which.add_argument("--list", action="store_true", help="list the runs in the log and exit")
    which.add_argument("--run", metavar="ID_OR_INDEX",
                       help="the run to report: an index (0 first, -1 last) or a run id prefix")
    which.add_argument("--all", action="store_true",
                       help="report every run, each in its own subfolder run-<index>/")
    rep.add_argument("--html", action="store_true",
                     help="also write report.html with the figures embedded (self-contained)")
    rep.add_argument("--vanishing", type=float, metavar="NORM",
                     help="absolute vanishing bound to draw: a dotted line in flow.png and a "
                          "mark on the heat map's colour bar (default: the run's thresholds; "
                          "the shaded bands are the relative bounds the verdicts read)")
    rep.add_argument("--exploding", type=float, metavar="NORM",
                     help="absolute exploding bound to draw, as --vanishing (default: the "
                          "run's thresholds)")
    rep.add_argument("--force", action="store_true",
                     help="write into an --out that holds a bench report (refused otherwise)")
    rep.add_argument("--skip-bad-lines", action="store_true",
                     help="skip lines that are JSON but not gradwatch records instead of stopping")
    rep.add_argument("--no-progress", action="store_true",
                     help="hide the progress bars (shown only when stderr is a terminal)")
    return parser


def _warn(message: str) -> None:
    print(f"gradwatch: warning: {message}", file=sys.stderr)


def _scan(path: Path, *, progress: bool, skip_bad: bool, layers: bool = True) -> LogScan:
    """Reads the log; one-line errors for what cannot be reported, warnings for the rest.
    With ``layers=False`` (``--list``) the layers are checked, not kept."""
    if path.is_dir():
        inside = sorted(path.glob("*.jsonl"))[:1]
        raise CliError(f"{path}: is a directory; pass the .jsonl file"
                       + (f", e.g. {inside[0]}" if inside else " written by JsonlLogger") + ".")
    if not path.is_file():
        raise CliError(f"{path}: no such file; pass the JSON-lines log written by JsonlLogger.")
    try:
        scan = scan_log(path, progress=progress, layers=layers)
    except LogFormatError as err:
        raise CliError(str(err)) from None
    if not scan.runs and scan.lines > 1 and scan.problems:  # one line, not one per bad line
        first = scan.problems[0]
        raise CliError(f"{path}: not a gradwatch log (none of its {scan.lines} lines is a "
                       f"gradwatch record or run header; line {first.line}: {first.message}); "
                       f"pass the JSON-lines file written by JsonlLogger.")
    foreign = [p for p in scan.problems if p.kind == "schema"]
    if foreign and not skip_bad:
        more = f" ({len(foreign) - 1} more such line(s))" if len(foreign) > 1 else ""
        raise CliError(f"{path}:{foreign[0].line}: not a gradwatch record: {foreign[0].message}"
                       f"{more}; fix or delete the line, or pass --skip-bad-lines.")
    for p in scan.problems[:_MOST_WARNINGS]:
        _warn(f"{path}:{p.line}: {describe_problem(p)}")
    if len(scan.problems) > _MOST_WARNINGS:
        _warn(f"{path}: skipped {len(scan.problems) - _MOST_WARNINGS} more bad line(s).")
    for note in scan.notes:
        _warn(note)
    if not scan.runs:
        if not scan.problems:
            why = "it is empty"
        elif scan.lines <= 1:
            why = "its only line is malformed"
        else:
            why = f"none of its {len(scan.problems)} lines is readable"
        raise CliError(f"{path}: no gradwatch records ({why}); was the run stopped before its "
                       f"first recorded step?")
    return scan


def _list(scan: LogScan) -> int:
    print(f"{scan.path}: {len(scan.runs)} run{'s' * (len(scan.runs) != 1)}")
    for run in scan.runs:
        h = run.header or {}
        extra = f" · gradwatch {h['gradwatch']}" if isinstance(h.get("gradwatch"), str) else ""
        print(f"  {run.describe()}{extra}")
    return 0


def _pick(runs: Sequence[Run], text: str) -> Run:
    """``--run``: an index or a run id (prefix) (`pick_run`)."""
    try:
        return pick_run(runs, text)
    except ValueError as err:
        raise CliError(f"--run {text}: {err} --list shows the runs.") from None


def _bounds(args: argparse.Namespace, run: Run) -> dict[str, float | None]:
    """Shading bounds: the flags, else the run header's thresholds (when they are usable)."""
    out: dict[str, float | None] = {}
    for name in ("vanishing", "exploding"):
        flag, logged = getattr(args, name), run.thresholds.get(name)
        if flag is not None:
            out[name] = flag
        elif logged is None or (isinstance(logged, (int, float)) and not isinstance(logged, bool)
                                and not math.isnan(logged) and logged >= 0):
            out[name] = logged
        else:
            _warn(f"ignored the logged threshold {name}={logged!r} (not a norm >= 0).")
            out[name] = None
    lo, hi = out["vanishing"], out["exploding"]
    if lo and hi and 0 < lo < math.inf and 0 < hi < math.inf and lo >= hi:
        raise CliError(f"expected vanishing < exploding, but got {lo:g} >= {hi:g}; "
                       f"pass --vanishing/--exploding to override.")
    return out


def _render(run: Run, out: Path, *, title: str, bounds: dict[str, float | None], html: bool,
            progress: bool) -> list[str]:
    from tqdm import tqdm

    from ..plot import plot_flow, plot_heatmap, plot_loss, plot_norms
    from ..plot.loss import passed_loss
    from ..plot.norms import global_clip_level
    from .report import html_report, markdown_report

    records = list(run.records)  # the plots read the records; the reports read the columns
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CliError(f"{out}: cannot create the output folder ({err.strerror}).") from None
    relative = {f"relative_{k}": run.thresholds.get(f"relative_{k}")
                for k in ("vanishing", "exploding")}
    roles = (run.header or {}).get("roles")
    clip = ((run.header or {}).get("options") or {}).get("clip")
    draw = {"flow.png": lambda p: plot_flow(records, path=p, **bounds, **relative,
                                            roles=roles if isinstance(roles, dict) else None),
            "norms.png": lambda p: plot_norms(records, path=p, clip_level=global_clip_level(clip)),
            "heatmap.png": lambda p: plot_heatmap(records, path=p, **bounds),
            "loss.png": lambda p: plot_loss(records, path=p)}
    # no loss passed: no loss figure, silently (it is optional); a loss passed but NaN/Inf at
    # every step: plot_loss refuses, and the warning below says why loss.png is missing
    figures = [f for f in _FIGURES if f[0] != "loss.png" or passed_loss(records)]
    written = []
    for name, _caption in tqdm(figures, desc="rendering", unit=" figures", disable=not progress,
                               leave=False):
        try:
            draw[name](out / name)
        except ValueError as err:  # e.g. a log without per-layer statistics
            _warn(f"skipped {name}: {err}")
            continue
        written.append(name)
    captions = dict(_FIGURES)
    (out / "report.md").write_text(  # the run's summary is computed once, for both reports
        markdown_report(run.records, title=title, header=run.header,
                        images={captions[n]: n for n in written}), encoding="utf-8")
    written.append("report.md")
    if html:
        pngs = {captions[n]: (out / n).read_bytes() for n in written if n in captions}
        (out / "report.html").write_text(
            html_report(run.records, title=title, header=run.header, images=pngs),
            encoding="utf-8")
        written.append("report.html")
    return written


def _keep_bench(folder: Path, args: argparse.Namespace) -> None:
    """Refuses (unless ``--force``) a folder holding a bench report: its report.md would go."""
    if (folder / "results.json").is_file() and not args.force:
        raise UsageError(f"--out {str(folder)!r} holds a bench report (results.json), whose "
                         f"report.md this report would replace; pass another --out (or leave "
                         f"it out: {default_out(args.log)}), or --force to write there anyway.")


def _report(args: argparse.Namespace) -> int:
    for name in ("vanishing", "exploding"):
        v = getattr(args, name)
        if v is not None and (math.isnan(v) or v < 0):
            raise CliError(f"--{name} must be a norm >= 0 (0 or inf: no band), but got {v!r}.")
    progress = not args.no_progress and sys.stderr.isatty()
    if not args.list:  # (before a long log is read)
        _keep_bench(args.out if args.out is not None else default_out(args.log), args)
    scan = _scan(args.log, progress=progress, skip_bad=args.skip_bad_lines,
                 layers=not args.list)
    runs = scan.runs
    if args.list:
        return _list(scan)
    if args.all:
        chosen = list(runs)
    elif args.run is not None:
        chosen = [_pick(runs, args.run)]
    else:
        chosen = [runs[-1]]
        if len(runs) > 1:
            _warn(f"{args.log} holds {len(runs)} runs; reporting the last ({runs[-1].describe()})"
                  f". --list shows them; --run ID_OR_INDEX or --all picks others.")
    empty = [r for r in chosen if not r.records]
    if len(empty) == len(chosen):
        raise CliError(f"{args.log}: {empty[0].describe()}: no records yet; --list shows the "
                       f"runs, --run picks another.")
    for r in empty:
        _warn(f"skipped run {r.index}: it has no records.")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CliError(f"the report needs matplotlib; {PLOT_INSTALL}.") from None
    out = args.out if args.out is not None else default_out(args.log)
    for folder in [out] + [out / f"run-{r.index}" for r in chosen if args.all]:
        _keep_bench(folder, args)
    index_lines = [f"# gradwatch report: {args.log.name} ({len(runs)} runs)", ""]
    for run in (r for r in chosen if r.records):
        folder = out / f"run-{run.index}" if args.all else out
        title = f"gradwatch report: {args.log.name}"
        if len(runs) > 1 or run.run_id:
            title += f", run {run.index}" + (f" (id {run.run_id[:8]})" if run.run_id else "")
        written = _render(run, folder, title=title, bounds=_bounds(args, run), html=args.html,
                          progress=progress)
        resumed = f", resumed {len(run.resumes)}x" if run.resumes else ""
        print(f"{len(run.records)} records from {args.log} (run {run.index}{resumed}) -> "
              f"{folder}/: {', '.join(written)}")
        index_lines.append(f"- [{run.describe()}](run-{run.index}/report.md)")
    if args.all:
        (out / "index.md").write_text("\n".join(index_lines) + "\n", encoding="utf-8")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``gradwatch`` command line and returns its exit status (0 ok, 1 error, 2 usage)."""
    try:
        args, extra = build_parser().parse_known_args(argv)
        if extra:  # the subcommand's usage, not the top level's, says what it takes
            args.parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exit_:  # --help/--version (0) or a usage error (2), already printed
        return int(exit_.code or 0)
    try:
        return {"report": _report}[args.command](args)
    except CliError as err:
        print(f"gradwatch: error: {err}", file=sys.stderr)
        return err.code
    except OSError as err:
        print(f"gradwatch: error: {err.filename or ''}: {err.strerror or err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("gradwatch: interrupted", file=sys.stderr)
        return 130

