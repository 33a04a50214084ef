"""Command line: ``python -m gradwatch report RUN.jsonl --out DIR`` renders a past run's log."""

from __future__ import annotations

import argparse
import importlib.util
import sys
import warnings
from pathlib import Path
from typing import Sequence

from .loggers import read_jsonl
from .records import StepRecord

__all__ = ["main", "build_parser"]

_FIGURES = (("flow.png", "Gradient flow across layers (first, middle and last step)"),
            ("norms.png", "Gradient norms over steps"),
            ("heatmap.png", "log10 gradient norm per layer and step"))


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


def build_parser() -> argparse.ArgumentParser:
    """The ``gradwatch`` argument parser (subcommand ``report``)."""
    parser = argparse.ArgumentParser(
        prog="gradwatch", description="Inspect gradient logs written by gradwatch.JsonlLogger.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    rep = sub.add_parser(
        "report", help="render figures and a summary from a JSON-lines log",
        description="Render gradient-flow, norms-over-steps and heat-map figures plus report.md "
                    "(and report.html with --html) from a log written by JsonlLogger; works on "
                    "the log of a crashed run (a truncated last line is skipped).")
    rep.add_argument("log", type=Path, metavar="RUN.jsonl", help="log written by JsonlLogger")
    rep.add_argument("--out", type=Path, default=Path("gradwatch-report"), metavar="DIR",
                     help="output folder, created if needed (default: %(default)s)")
    rep.add_argument("--html", action="store_true",
                     help="also write report.html with the figures embedded (self-contained)")
    rep.add_argument("--vanishing", type=float, metavar="NORM",
                     help="shade norms below NORM as vanishing (the log does not store thresholds)")
    rep.add_argument("--exploding", type=float, metavar="NORM",
                     help="shade norms above NORM as exploding")
    rep.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser


def _read(path: Path, progress: bool) -> list[StepRecord]:
    """Reads every record, turning the reader's warnings into one-line messages on stderr."""
    from tqdm import tqdm

    if not path.is_file():
        raise CliError(f"{path}: no such file; pass the JSON-lines log written by JsonlLogger.")
    with open(path, "rb") as f:
        lines = sum(1 for _ in f)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            records = list(tqdm(read_jsonl(path), total=lines, desc="reading", unit=" records",
                                disable=None if progress else True, leave=False))
        except UnicodeDecodeError as err:
            raise CliError(f"{path}: not a text file ({err.reason}); expected a JSON-lines log "
                           f"written by JsonlLogger.") from None
        except ValueError as err:
            raise CliError(str(err)) from None
    for w in caught:
        print(f"gradwatch: warning: {w.message}", file=sys.stderr)
    if not records:
        why = "its only line is malformed" if caught else "it is empty"
        raise CliError(f"{path}: no gradwatch records ({why}); was the run stopped before its "
                       f"first recorded step?")
    return records


def _report(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("matplotlib") is None:
        raise CliError("the report needs matplotlib; pip install 'gradwatch[plot]'.")
    from tqdm import tqdm

    from .plot import plot_flow, plot_heatmap, plot_norms
    from .report import html_report, markdown_report

    records = _read(args.log, not args.no_progress)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CliError(f"{args.out}: cannot create the output folder ({err.strerror}).") from None
    bounds = dict(vanishing=args.vanishing, exploding=args.exploding)
    draw = {"flow.png": lambda p: plot_flow(records, path=p, **bounds),
            "norms.png": lambda p: plot_norms(records, path=p),
            "heatmap.png": lambda p: plot_heatmap(records, path=p, **bounds)}
    written = []
    for name, _caption in tqdm(_FIGURES, desc="rendering", unit=" figures",
                               disable=None if not args.no_progress else True, leave=False):
        try:
            draw[name](args.out / name)
        except ValueError as err:  # e.g. a log without per-layer statistics
            print(f"gradwatch: warning: skipped {name}: {err}", file=sys.stderr)
            continue
        written.append(name)
    title = f"gradwatch report: {args.log.name}"
    captions = dict(_FIGURES)
    (args.out / "report.md").write_text(
        markdown_report(records, title=title, images={captions[n]: n for n in written}),
        encoding="utf-8")
    written.append("report.md")
    if args.html:
        pngs = {captions[n]: (args.out / n).read_bytes() for n in written if n in captions}
        (args.out / "report.html").write_text(html_report(records, title=title, images=pngs),
                                              encoding="utf-8")
        written.append("report.html")
    print(f"{len(records)} records from {args.log} -> {args.out}/: {', '.join(written)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``gradwatch`` command line and returns its exit status (0 ok, 1 error, 2 usage)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2), already printed by argparse
        return int(exit_.code or 0)
    try:
        return {"report": _report}[args.command](args)
    except CliError as err:
        print(f"gradwatch: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"gradwatch: error: {err.filename or ''}: {err.strerror or err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("gradwatch: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
