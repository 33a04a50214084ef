"""``python -m gradwatch.bench``: reproduce the documented vanishing/exploding-gradient results."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from .common import BUDGETS, Budget, Context, ExperimentResult
from .writeup import write_report

__all__ = ["EXPERIMENTS", "BUDGETS", "Budget", "ExperimentResult", "default_threads", "run_bench"]


def _lazy(module: str, func: str) -> Callable[[Context], ExperimentResult]:
    def run(ctx: Context) -> ExperimentResult:
        from importlib import import_module

        return getattr(import_module(f"{__name__}.{module}"), func)(ctx)

    run.__name__ = func
    return run


EXPERIMENTS: dict[str, tuple[str, Callable[[Context], ExperimentResult]]] = {
    "tanh_chain": ("20-layer scalar tanh chain, weight scales 0.5/1.0/1.5",
                   _lazy("chains", "run_tanh_chain")),
    "identity_chain": ("100 linear layers W = c·I, c = 2 and 0.5 (exact)",
                       _lazy("chains", "run_identity_chain")),
    "clip_reference": ("clip_gradient_norm(max_norm=0.25) vs gradwatch vs torch",
                       _lazy("clipref", "run_clip_reference")),
    "xor": ("XOR, plain vs residual sigmoid nets over depths and seeds", _lazy("xor", "run_xor")),
    "sigmoid_mlp": ("deep sigmoid MLP on MNIST (stalls)", _lazy("mnist", "run_sigmoid_mlp")),
    "fixed_models": ("ReLU+He, +BN, ResNet on MNIST", _lazy("mnist", "run_fixed_models")),
    "deep_linear": ("deep linear MLP on MNIST, no clip vs Keras clipnorm (per-tensor) clipping",
                    _lazy("linear", "run_deep_linear")),
    "regularisation": ("deep linear MLP on MNIST with an L2 penalty (weight decay)",
                       _lazy("regularisation", "run_regularisation")),
    "learning_rate": ("ReLU MLP on MNIST, SGD at lr 0.01 / 0.1 / 1.0",
                      _lazy("lr", "run_learning_rate")),
    "dying_relu": ("ReLU MLP on MNIST, Adam lr 1e-3 vs 0.1: dead units",
                   _lazy("dying", "run_dying_relu")),
    "rnn": ("tanh RNN: gradients through time, large recurrent weights, clipping",
            _lazy("rnn", "run_rnn")),
    "grid": ("mitigation grid: activation × init × BN × residual", _lazy("grid", "run_grid")),
}
"""name -> (description, runner), in report order."""


def default_threads() -> int:
    """Up to two threads, but only on cores that are idle now.

    Intra-op threads that share a busy core with another process spin and wait on each other:
    on a loaded 2-core machine two threads ran 10-50x slower per step than one.
    """
    cpus = os.cpu_count() or 1
    try:
        idle = cpus - os.getloadavg()[0]
    except OSError:  # no load average on this platform
        idle = cpus
    return max(1, min(2, cpus, int(idle + 0.5)))


def run_bench(names: Sequence[str] | None = None, *, budget: Budget | str = "default",
              out: str | os.PathLike[str] = "gradwatch-report", device: str = "cpu",
              data_dir: str | os.PathLike[str] | None = None, seeds: int | None = None,
              threads: int | None = None, progress: bool = True,
              cache_dir: str | os.PathLike[str] | None = None,
              figures: bool = True) -> tuple[Path, Path]:
    """Runs the named experiments (all by default) and writes the report; returns its paths.

    ``figures=False`` skips the experiments' figures (the numbers are the same).

    Raises:
        ValueError: An unknown experiment or budget name.
    """
    unknown = [n for n in names or () if n not in EXPERIMENTS]
    if unknown:
        raise ValueError(f"Unknown experiment(s) {unknown}; expected names from "
                         f"{', '.join(EXPERIMENTS)} (see --list).")
    if isinstance(budget, str):
        if budget not in BUDGETS:
            raise ValueError(f"Expected `budget` to be one of {', '.join(BUDGETS)}, "
                             f"but got {budget!r}.")
        budget = BUDGETS[budget]
    budget = budget.with_seeds(seeds)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("`--device cuda` was asked for but torch.cuda.is_available() is False.")
    if threads is None:
        threads = default_threads()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    ctx = Context(budget, Path(out), device=dev, data_dir=data_dir, progress=progress,
                  cache_dir=cache_dir, figures=figures)
    results: list[ExperimentResult] = []
    start = time.perf_counter()
    try:
        planned = list(names or EXPERIMENTS)
        for k, name in enumerate(planned, 1):
            t0 = time.perf_counter()
            # Tiny per-sample XOR steps are faster on one thread than on two.
            torch.set_num_threads(1 if name in ("xor", "tanh_chain", "identity_chain", "rnn")
                                  else threads)
            result = EXPERIMENTS[name][1](ctx)
            result.seconds = time.perf_counter() - t0
            results.append(result)
            # Rewritten after every experiment: an interrupted run keeps what it finished.
            # `planned`: until the last one, the report names the experiments not run yet, so
            # a run killed outright (SIGKILL, out of memory) still says what it lacks
            paths = write_report(ctx.out, results, budget=budget,
                                 seconds=time.perf_counter() - start, device=str(dev),
                                 threads=threads, planned=planned)
            # one line per experiment on stderr, bars or not (a redirected run shows it too)
            print(f"[gradwatch.bench] {k} of {len(planned)} experiments: {name} "
                  f"{result.seconds:.0f} s, elapsed {time.perf_counter() - start:.0f} s",
                  file=sys.stderr, flush=True)
    finally:
        torch.set_num_threads(previous)
    return paths
