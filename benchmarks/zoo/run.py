"""Run the labelled zoo under GradWatch (default thresholds), print the verdict table, save JSONL.

``python -m benchmarks.zoo [--quick] [--only NAME ...] [--out DIR] [--force]`` from the repository
root (or ``python benchmarks/zoo/run.py``). It is a measurement: it exits 0 whatever gradwatch
says. An ``--out`` that already holds a zoo.jsonl is kept unless ``--force``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from typing import Any, Sequence

if __package__ in (None, ""):  # run as a script: make `benchmarks.zoo` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    __package__ = "benchmarks.zoo"

import torch

import gradwatch
from benchmarks.zoo.judge import Verdict, read_verdict, score
from benchmarks.zoo.spec import Run
from benchmarks.zoo.train import CHECKS, after_probe, train

__all__ = ["all_runs", "main", "run_one", "select"]


def all_runs() -> tuple[Run, ...]:
    """Every run: the healthy ones, then the pathological ones."""
    from benchmarks.zoo.models import HEALTHY_RUNS
    from benchmarks.zoo.pathologies import PATHOLOGICAL_RUNS
    from benchmarks.zoo.silent import SILENT_RUNS
    runs = HEALTHY_RUNS + PATHOLOGICAL_RUNS + SILENT_RUNS
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"Expected unique run names, but got duplicates in {names}.")
    return runs


def select(quick: bool = False, only: Sequence[str] = ()) -> list[Run]:
    """The runs to do: all, the reduced set, or the named ones (``ValueError`` on unknown names)."""
    runs = all_runs()
    if only:
        known = {r.name: r for r in runs}
        unknown = [n for n in only if n not in known]
        if unknown:
            raise ValueError(f"Expected `--only` names from the zoo, but got {unknown}; known: "
                             f"{sorted(known)}.")
        return [known[n] for n in only]
    return [r for r in runs if r.quick or not quick]


def missing(run: Run) -> list[str]:
    return [m for m in run.requires if importlib.util.find_spec(m) is None]


def run_one(run: Run) -> dict[str, Any]:
    """Train ``run`` under ``GradWatch(model, optimizer=opt)``; its sanity, verdict and records."""
    def factory(setup: Any) -> gradwatch.GradWatch:
        return gradwatch.GradWatch(setup.model, optimizer=setup.optimizer, scaler=setup.scaler)
    trace, setup, watch = train(run, factory)
    verdict = read_verdict(watch)
    records = [r.to_dict() for r in watch.history]
    header = watch._ledger.header()  # thresholds, layers and their roles: for offline tuning
    head = watch.head
    watch.close()
    after_probe(setup, trace, run.steps)
    sanity = {c: bool(CHECKS[c][1](trace)) for c in run.checks}
    return {"name": run.name, "family": run.family, "split": run.split, "note": run.note,
            "steps": run.steps, "label": run.label.__dict__, "checks": sanity,
            "sane": all(sanity.values()), "trace": trace.to_dict(), "verdict": verdict.__dict__,
            "score": score(run.label, verdict), "roles": header["roles"], "head": head,
            "records": records}


def _mark(ok: bool | None) -> str:
    return "-" if ok is None else ("right" if ok else "WRONG")


def _row(r: dict[str, Any]) -> str:
    label, s = r["label"], r["score"]
    want = label["kind"] + (f" @{label['birth']}" if label["birth"] else "")
    if label["kind"] == "healthy":
        right = _mark(not s["alarm"])
    else:
        right = _mark(s["found"] and s["kind_right"] and s["origin_right"] is not False)
    said = Verdict(**r["verdict"]).text()
    return (f"| {r['name']} | {r['split']} | {want} | {said} | {right} | "
            f"{'yes' if r['sane'] else 'NO'} | {r['trace']['wall_s']:.1f} |")


def totals(results: list[dict[str, Any]], split: str) -> str:
    rs = [r for r in results if r["split"] == split]
    healthy = [r for r in rs if r["label"]["kind"] == "healthy"]
    bad = [r for r in rs if r["label"]["kind"] != "healthy"]
    nan = [r for r in bad if r["label"]["birth"]]
    return (f"{split}: healthy runs with a finding or a flagged layer "
            f"{sum(r['score']['alarm'] for r in healthy)} of {len(healthy)}; pathological found "
            f"{sum(r['score']['found'] for r in bad)} of {len(bad)}, right kind "
            f"{sum(r['score']['kind_right'] for r in bad)} of {len(bad)}; NaN origin right "
            f"{sum(r['score']['origin_right'] for r in nan)} of {len(nan)}; sanity checks passed "
            f"{sum(r['sane'] for r in rs)} of {len(rs)}")


def _args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[Run], str]:
    """Parses and checks the flags before any run: the arguments, the runs and the JSONL path.

    Bad input is a usage error (exit 2, one line): a non-positive ``--threads``, unknown
    ``--only`` names, an ``--out`` that is a file or cannot be made, and an ``--out`` that
    already holds an earlier run's zoo.jsonl (kept unless ``--force``: a ``--only`` rerun into
    the default folder would otherwise wipe a full run's records).
    """
    from benchmarks._cli import positive_int

    p = argparse.ArgumentParser(prog="python -m benchmarks.zoo", description=__doc__)
    p.add_argument("--quick", action="store_true", help="the reduced set (the test suite's)")
    p.add_argument("--only", nargs="+", default=(), metavar="NAME", help="just these runs")
    p.add_argument("--out", default="/tmp/gw-zoo", help="folder for zoo.jsonl (default /tmp/gw-zoo)")
    p.add_argument("--force", action="store_true",
                   help="replace the zoo.jsonl of an earlier run in --out (kept otherwise)")
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")
    p.add_argument("--list", action="store_true", help="print the runs and their labels, then exit")
    args = p.parse_args(argv)
    try:
        runs = select(args.quick, args.only)
    except ValueError:
        known = {r.name for r in all_runs()}
        bad = [n for n in args.only if n not in known]
        p.error(f"--only: unknown run name(s) {', '.join(map(repr, bad))}; see the names with "
                f"python -m benchmarks.zoo --list")
    path = os.path.join(args.out, "zoo.jsonl")
    if args.list:
        return args, runs, path
    try:
        os.makedirs(args.out, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        p.error(f"--out {args.out!r} is (or lies under) a file, not a folder; pass a folder")
    except OSError as err:
        p.error(f"--out {args.out!r} cannot be created ({err.strerror or err}); pass a folder")
    earlier = _earlier_runs(path)
    if earlier and not args.force:
        p.error(f"--out {args.out!r} already holds {path} with {earlier} runs of an earlier zoo "
                f"run; pass --force to replace it, or another --out")
    if earlier:
        print(f"replacing {path} ({earlier} runs of an earlier zoo run; --force)", flush=True)
    return args, runs, path


def _earlier_runs(path: str) -> int:
    """How many runs an existing zoo.jsonl holds (0 when there is none)."""
    try:
        with open(path, encoding="utf-8") as fh:
            return sum(1 for line in fh if line.strip())
    except OSError:
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    args, runs, path = _args(argv)
    torch.set_num_threads(args.threads)
    if args.list:
        for r in runs:
            print(f"{r.name:30s} {r.split:9s} {r.label.kind:24s} {r.label.birth or '':34s} {r.note}")
        return 0
    results, start = [], time.perf_counter()
    stopped = None
    with open(path, "w") as fh:
        try:
            for i, run in enumerate(runs, 1):
                gone = missing(run)
                if gone:
                    print(f"[{i}/{len(runs)}] {run.name}: skipped (needs {', '.join(gone)})",
                          flush=True)
                    continue
                print(f"[{i}/{len(runs)}] {run.name} ...", end=" ", flush=True)
                r = run_one(run)
                results.append(r)
                fh.write(json.dumps(r) + "\n")
                fh.flush()
                print(f"{r['trace']['wall_s']:.1f}s sane={r['sane']} said: "
                      f"{Verdict(**r['verdict']).text()}", flush=True)
        except KeyboardInterrupt:  # the finished runs are in zoo.jsonl: show their table
            stopped = f"interrupted (Ctrl-C) after {len(results)} of {len(runs)} runs"
            print(f"\n{stopped}", flush=True)
    _report(results, path, time.perf_counter() - start)
    return 130 if stopped else 0


def _report(results: list[dict[str, Any]], path: str, wall: float) -> None:
    """Prints the verdict table, the totals per split and where the records are."""
    print(f"\nverdicts from diagnose(); default Thresholds(); {torch.get_num_threads()} "
          f"thread(s); wall {wall:.1f} s\n")
    print("| run | split | label | gradwatch said | verdict | sane | s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(_row(r))
    print()
    for split in ("tuning", "held-out"):
        print(totals(results, split))
    insane = [r["name"] for r in results if not r["sane"]]
    if insane:
        print(f"runs failing their own sanity checks (fix the zoo, not gradwatch): {insane}")
    print(f"records and metadata: {path}")

if __name__ == "__main__":
    sys.exit(main())
