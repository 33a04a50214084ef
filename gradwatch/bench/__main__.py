"""Command line: ``python -m gradwatch.bench [names...] [--quick | --full] [options]``."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from . import BUDGETS, EXPERIMENTS, run_bench

__all__ = ["main", "needs_mnist", "mnist_problem"]

NO_DATA = frozenset({"tanh_chain", "identity_chain", "clip_reference", "xor"})
"""Experiments that need no MNIST."""
GET_MNIST = ("put the four MNIST files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
             "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) in DATA/MNIST/raw/ and pass "
             "--data-dir DATA (or set GRADWATCH_DATA=DATA)")


def needs_mnist(names: Sequence[str]) -> bool:
    """Whether any of the experiments ``names`` trains on MNIST."""
    return any(n not in NO_DATA for n in names)


def _has_files(raw: Path) -> bool:
    from .data import MNIST_FILES

    return all((raw / f).is_file() or (raw / (f + ".gz")).is_file() for f in MNIST_FILES)


def mnist_problem(data_dir: str | None) -> tuple[str | None, str | None]:
    """Looks MNIST up before anything runs: ``(error, notice)``, each a line or None.

    An explicit ``--data-dir`` or ``$GRADWATCH_DATA`` without the files is an error; with
    neither, a cache without the files gets a notice that torchvision will try to download
    them (the caller tries at once, so a failure still stops the run before it starts).
    """
    from .data import default_cache_dir

    given = data_dir or os.environ.get("GRADWATCH_DATA")
    root = Path(given).expanduser() if given else default_cache_dir()
    raw = root / "MNIST" / "raw"
    origin = "--data-dir" if data_dir else "GRADWATCH_DATA" if given else "the cache"
    if _has_files(raw):
        return _bad_file(raw, origin, given is not None), None
    if given:
        return (f"MNIST is not under {str(raw)!r} (from {origin}); fix by: {GET_MNIST}.", None)
    return None, (f"MNIST is not in the cache {str(raw)!r}; trying a download through "
                  f"torchvision (about 12 MB). Offline? {GET_MNIST}.")


def _bad_file(raw: Path, origin: str, given: bool) -> str | None:
    """The error line for a truncated, corrupt or mismatched MNIST file under ``raw``, or None."""
    from .preflight import mnist_file_problem

    found = mnist_file_problem(raw)
    if found is None:
        return None
    path, problem = found
    fix = ("replace it with a fresh copy of the official file, or point --data-dir (or "
           "GRADWATCH_DATA) at a folder with good files" if given else
           f"delete it so that torchvision downloads it again, or {GET_MNIST}")
    return f"MNIST file {str(path)!r} {problem} (found through {origin}); fix by: {fix}."


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gradwatch.bench",
        description="Reproduce the documented vanishing/exploding-gradient experiments and write "
                    "a report (Markdown, PNG figures, JSON of every number).")
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="experiments to run (default: all; see --list)")
    parser.add_argument("--list", action="store_true", help="list the experiments and exit")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smoke run of about a minute")
    size.add_argument("--full", action="store_true",
                      help="the documented budgets (10 MNIST epochs, 100,000 XOR epochs): hours")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per random experiment")
    parser.add_argument("--data-dir", default=None,
                        help="folder holding MNIST/raw/ (default: $GRADWATCH_DATA, else the cache)")
    parser.add_argument("--out", default="gradwatch-report", help="report folder")
    parser.add_argument("--force", action="store_true",
                        help="replace the report of an earlier run in --out (kept otherwise)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: up to 2, on idle cores only)")
    bars = parser.add_mutually_exclusive_group()
    bars.add_argument("--progress", dest="progress", action="store_true", default=None,
                      help="progress bars even when stderr is not a terminal")
    bars.add_argument("--no-progress", dest="progress", action="store_false",
                      help="no progress bars (the default when stderr is not a terminal)")
    parser.add_argument("--xor-epochs", type=int, default=None,
                        help="override the budget's maximum XOR epochs (the source: 100000)")
    parser.add_argument("--xor-depths", default=None,
                        help="override the budget's XOR depths, comma-separated, e.g. 5,10")
    return parser


def _fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def cuda_problem(torch: Any) -> str:
    """Why ``--device cuda`` cannot run here, naming the real cause, and the fix."""
    fix = "fix by leaving out --device (the bench runs on the CPU)"
    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        return (f"--device cuda, but this torch ({torch.__version__}) is a CPU-only build; "
                f"{fix}, or install a CUDA build of torch.")
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hidden is not None and hidden.strip() in ("", "-1"):
        cause = f"CUDA_VISIBLE_DEVICES={hidden!r} hides every GPU from this process"
    elif not Path("/proc/driver/nvidia/version").exists() and sys.platform.startswith("linux"):
        cause = "this machine has no NVIDIA GPU driver loaded (no GPU, or no driver installed)"
    else:
        cause = "torch sees no usable GPU (torch.cuda.device_count() is 0)"
    return (f"--device cuda, but {cause}; torch {torch.__version__} is a CUDA "
            f"{torch.version.cuda or torch.version.hip} build, so the build is not the problem; "
            f"{fix}, or run on a machine with a GPU.")


def _preflight(args: argparse.Namespace, names: Sequence[str]) -> str | None:
    """Everything that can fail before an experiment runs; the error line, or None."""
    if importlib.util.find_spec("matplotlib") is None:
        return "the bench draws figures with matplotlib, which is not installed; fix by " \
               "pip install matplotlib (or pip install -e '.[bench]' in a gradwatch checkout)."
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            return cuda_problem(torch)
    from .preflight import earlier_report, free_folder, out_problem

    earlier = earlier_report(args.out)
    if earlier and not args.force:  # (before MNIST: a second run of the same command)
        return (f"--out {args.out!r} already holds {earlier}, which this run would replace; "
                f"pass --force to replace it, or keep it and write this run elsewhere with "
                f"--out {free_folder(args.out)}.")
    if needs_mnist(names):
        if importlib.util.find_spec("torchvision") is None:
            return "the MNIST experiments read data through torchvision, which is not " \
                   "installed; fix by pip install torchvision (or pip install -e '.[bench]' " \
                   "in a gradwatch checkout)."
        error, notice = mnist_problem(args.data_dir)
        if error:
            return error
        if notice:
            print(notice, file=sys.stderr, flush=True)
            from .data import load_mnist

            try:
                load_mnist(None, train_limit=1, test_limit=1)
            except (FileNotFoundError, OSError, RuntimeError) as err:
                return f"could not download MNIST ({type(err).__name__}); fix by: {GET_MNIST}."
    problem = out_problem(args.out)  # last: it creates the folder the run is about to fill
    if earlier and not problem:
        print(f"replacing {earlier} in {args.out} (--force)", file=sys.stderr, flush=True)
    return problem


def main(argv: Sequence[str] | None = None) -> int:
    """Parses ``argv`` and runs the bench; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.list:
        width = max(map(len, EXPERIMENTS))
        for name, (desc, _) in EXPERIMENTS.items():
            print(f"{name:<{width}}  {desc}")
        print("budgets: " + ", ".join(BUDGETS) + " (default: default)")
        return 0
    if args.seeds is not None and args.seeds < 1:
        parser.error(f"--seeds must be a positive integer, got {args.seeds}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be a positive integer (torch threads), got {args.threads}; "
                     f"leave it out for the default")
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
    names = list(args.names or EXPERIMENTS)
    problem = _preflight(args, names)
    if problem:
        return _fail(problem)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    start = time.time()
    previous = _on_sigterm()
    try:
        md, js = run_bench(args.names or None, budget=budget, out=args.out, device=args.device,
                           data_dir=args.data_dir, seeds=args.seeds, threads=args.threads,
                           progress=progress)
    except (OSError, ValueError, ImportError) as err:
        return _fail(_stopped(args.out, start, f"{type(err).__name__}: {err}"))
    except KeyboardInterrupt:
        return _fail(_stopped(args.out, start, "interrupted (Ctrl-C)"), 130)
    except Terminated:
        return _fail(_stopped(args.out, start, "terminated (SIGTERM)"), 143)
    except Exception as err:  # a bug: keep the traceback, but never leave an unmarked report
        _stopped(args.out, start, f"{type(err).__name__}: {err}")
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    print(f"report: {md}\nnumbers: {js}")
    return 0


class Terminated(Exception):
    """Raised in the main thread when the bench gets SIGTERM (``kill``, a job scheduler)."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def _on_sigterm() -> Any:
    """Makes SIGTERM stop the run as Ctrl-C does (report marked partial, one line, exit 143).

    Returns the previous handler to restore, or None where no handler can be set (not the
    main thread).
    """
    try:
        return signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:
        return None


def _stopped(out: str, start: float, reason: str) -> str:
    """Marks a report this run already wrote as partial; the one-line message to print."""
    from .writeup import mark_partial

    md = Path(out) / "report.md"
    if md.is_file() and md.stat().st_mtime >= start - 1 and mark_partial(Path(out), reason):
        return f"{reason} (the report in {out} holds the experiments that finished, marked partial)"
    return reason


if __name__ == "__main__":
    sys.exit(main())
