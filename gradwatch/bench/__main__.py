"""Command line: ``python -m gradwatch.bench [names...] [--quick | --full] [options]``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Sequence

from . import BUDGETS, EXPERIMENTS, run_bench

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Parses ``argv`` and runs the bench; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m gradwatch.bench",
        description="Reproduce the documented vanishing/exploding-gradient experiments and write "
                    "a report (Markdown, PNG figures, JSON of every number).")
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="experiments to run (default: all; see --list)")
    parser.add_argument("--list", action="store_true", help="list the experiments and exit")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smoke run of about two minutes")
    size.add_argument("--full", action="store_true",
                      help="the documented budgets (10 MNIST epochs, 100,000 XOR epochs): hours")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per random experiment")
    parser.add_argument("--data-dir", default=None,
                        help="folder holding MNIST/raw/ (default: $GRADWATCH_DATA, else the cache)")
    parser.add_argument("--out", default="gradwatch-report", help="report folder")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: up to 2, on idle cores only)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--xor-epochs", type=int, default=None,
                        help="override the budget's maximum XOR epochs (the source: 100000)")
    parser.add_argument("--xor-depths", default=None,
                        help="override the budget's XOR depths, comma-separated, e.g. 5,10")
    args = parser.parse_args(argv)
    if args.list:
        width = max(map(len, EXPERIMENTS))
        for name, (desc, _) in EXPERIMENTS.items():
            print(f"{name:<{width}}  {desc}")
        print("budgets: " + ", ".join(BUDGETS) + " (default: default)")
        return 0
    if args.seeds is not None and args.seeds < 1:
        parser.error(f"--seeds must be a positive integer, got {args.seeds}")
    unknown = [n for n in args.names if n not in EXPERIMENTS]
    if unknown:
        parser.error(f"unknown experiment(s) {', '.join(unknown)}; choose from "
                     f"{', '.join(EXPERIMENTS)}")
    budget = BUDGETS["quick" if args.quick else "full" if args.full else "default"]
    if args.xor_epochs is not None:
        if args.xor_epochs < 1:
            parser.error(f"--xor-epochs must be a positive integer, got {args.xor_epochs}")
        budget = dataclasses.replace(budget, xor_epochs=args.xor_epochs)
    if args.xor_depths is not None:
        try:
            depths = tuple(int(d) for d in args.xor_depths.split(","))
        except ValueError:
            depths = ()
        if not depths or min(depths) < 1:
            parser.error(f"--xor-depths must be positive integers separated by commas, e.g. "
                         f"5,10; got {args.xor_depths!r}")
        budget = dataclasses.replace(budget, xor_depths=depths)
    try:
        md, js = run_bench(args.names or None, budget=budget, out=args.out, device=args.device,
                           data_dir=args.data_dir, seeds=args.seeds, threads=args.threads,
                           progress=not args.no_progress)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"report: {md}\nnumbers: {js}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
