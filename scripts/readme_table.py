"""Regenerates the bench headline table on the docs' bench page (and its figure) from ``results.json``.

The README's numbers then come from a run, not from hand: the table goes between the markers
``<!-- bench-table:start -->`` and ``<!-- bench-table:end -->``, and the figure is copied from the
run's ``figures/`` folder. Usage, after a fresh default run::

    python -m gradwatch.bench --threads 1 --out gradwatch-report   # (--force: over an old one)
    python scripts/readme_table.py gradwatch-report/results.json            # writes docs/bench.md
    python scripts/readme_table.py gradwatch-report/results.json --check    # exit 1 if stale
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gradwatch.bench.wording import budget_text, claim_columns, duration  # noqa: E402

__all__ = ["START", "END", "headline", "replace_between", "main"]

START, END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"
FIGURE = ("sigmoid_mlp_flow.png", "docs/img/flow_sigmoid_mlp.png")  # run figure -> README image


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def headline(payload: Mapping[str, Any]) -> str:
    """The Markdown between the markers: run line, claim table and calibration counts."""
    meta, cal = payload["meta"], payload["calibration"]
    threads = meta["threads"]
    lines = [f"Headline table of one `{meta['budget']['name']}` run on {meta['device']} "
             f"(`--threads {threads}`, torch {meta['torch']}), **{duration(meta['seconds'])}** "
             f"wall time; generated from its `results.json` by `scripts/readme_table.py`.", "",
             budget_text(meta["budget"]), ""]
    claims = [c for exp in payload["experiments"].values() for c in exp["claims"]]
    columns = [(h, cell) for h, cell in claim_columns(claims) if h not in ("claim", "source")]
    lines += ["| claim (source) | " + " | ".join(h for h, _ in columns) + " |",
              "| --- |" + " --- |" * len(columns)]
    for c in claims:
        lines.append(f"| {_cell(c['claim'])} ({_cell(c['source'])}) | "
                     + " | ".join(_cell(cell(c)) for _, cell in columns) + " |")
    lines += ["", f"Calibration of the default `Thresholds()` (runs labelled from the literature "
                  f"before reading the verdicts): **{cal['pathological_flagged']} / "
                  f"{cal['pathological_total']} pathological runs flagged** and "
                  f"**{cal['healthy_flagged']} / {cal['healthy_total']} healthy runs flagged**."]
    if cal["missed"]:
        lines.append(f"Missed: {', '.join(cal['missed'])}.")
    return "\n".join(lines)


def replace_between(text: str, block: str, start: str = START, end: str = END) -> str:
    """``text`` with everything between the two marker lines replaced by ``block``.

    Raises:
        ValueError: A marker is missing, repeated, or the end comes before the start.
    """
    if text.count(start) != 1 or text.count(end) != 1:
        raise ValueError(f"Expected exactly one {start!r} and one {end!r} in the README, but got "
                         f"{text.count(start)} and {text.count(end)}; fix by putting the two "
                         f"marker lines around the bench table once.")
    i, j = text.index(start) + len(start), text.index(end)
    if j < i:
        raise ValueError(f"Expected {start!r} before {end!r}, but the end marker comes first.")
    return text[:i] + "\n" + block + "\n" + text[j:]


def main(argv: Sequence[str] | None = None) -> int:
    """Parses ``argv``, rewrites the README block and copies the figure; the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", type=Path, help="results.json of a fresh default run")
    parser.add_argument("--readme", type=Path, default=REPO / "docs" / "bench.md",
                        help="the page holding the table markers (default: docs/bench.md)")
    parser.add_argument("--figure", default=FIGURE[0], help="figure of the run to copy ('' none)")
    parser.add_argument("--figure-to", type=Path, default=REPO / FIGURE[1])
    parser.add_argument("--any-budget", action="store_true",
                        help="accept a run whose budget is not `default`")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when the README differs from the run")
    args = parser.parse_args(argv)
    try:
        payload = json.loads(args.results.read_text(encoding="utf-8"))
        name, partial = payload["meta"]["budget"]["name"], payload["meta"].get("partial")
    except (OSError, ValueError, KeyError) as err:
        print(f"error: cannot read a bench results.json at {args.results} ({err}); fix by "
              f"running `python -m gradwatch.bench` first.", file=sys.stderr)
        return 2
    if partial:
        print(f"error: {args.results} is from a partial run ({partial}); rerun the bench.",
              file=sys.stderr)
        return 2
    if name != "default" and not args.any_budget:
        print(f"error: {args.results} is a `{name}` run; the README states the default budget "
              f"(rerun without --quick/--full, or pass --any-budget).", file=sys.stderr)
        return 2
    try:
        old = args.readme.read_text(encoding="utf-8")
        new = replace_between(old, headline(payload))
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    figure = args.results.parent / "figures" / args.figure if args.figure else None
    if figure is not None and not figure.is_file():
        print(f"error: the run has no figure {figure}; pass --figure '' to skip it.",
              file=sys.stderr)
        return 2
    if args.check:
        stale = new != old or (figure is not None and (
            not args.figure_to.is_file() or args.figure_to.read_bytes() != figure.read_bytes()))
        print("README is stale" if stale else "README matches the run")
        return int(stale)
    args.readme.write_text(new, encoding="utf-8")
    if figure is not None:
        args.figure_to.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(figure, args.figure_to)
    print(f"wrote {args.readme}" + (f" and {args.figure_to}" if figure is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
