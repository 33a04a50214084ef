"""A learning rate that is too large makes gradients explode (the Keras tutorial's text, seed 003).

A 784-256 + 3×256 ReLU MLP (He init) on MNIST with plain SGD, batch 32: lr 0.01 and 0.1 train;
lr 1.0 overshoots, and the gradient norm grows by orders of magnitude within a few steps
until the loss is non-finite (the textbook picture: a step beyond 2/L diverges).
"""

from __future__ import annotations

import math
import warnings

from .common import Claim, Context, ExperimentResult, decide, spread
from .mnist import label_run, runs_budget, verdicts
from .nets import DeepMLP
from .rnn import ENOUGH_STEPS
from .train import TrainRun, train_mnist

__all__ = ["LEARNING_RATES", "TOO_LARGE", "norm_growth", "small_mnist_run", "run_learning_rate"]

LEARNING_RATES = (0.01, 0.1, 1.0)
TOO_LARGE = 1.0


def norm_growth(run: TrainRun) -> float:
    """Largest recorded total gradient norm over the first one (inf when it became non-finite)."""
    norms = [r.total_norm for r in run.records]
    if not norms or not norms[0] > 0:
        return math.nan
    return max((v if math.isfinite(v) else math.inf) for v in norms) / norms[0]


def small_mnist_run(name: str, ctx: Context, seed: int, **kw) -> TrainRun:
    """A short run of the small ReLU MLP on the budget's small MNIST subset, every step recorded."""
    b = ctx.budget
    model = kw.pop("model", lambda: DeepMLP(3, activation="relu", init="he"))
    with warnings.catch_warnings():  # diverging runs warn about NaN/Inf at every step
        warnings.simplefilter("ignore")
        return train_mnist(name, model, ctx, epochs=math.ceil(b.small_steps * 32 / b.small_train),
                           seed=seed, train_limit=b.small_train, max_steps=b.small_steps,
                           every=1, log_every=5, **kw)


def run_learning_rate(ctx: Context) -> ExperimentResult:
    """SGD at three learning rates, ``seeds`` seeds each."""
    res = ExperimentResult("learning_rate", "Learning rate: SGD at 0.01, 0.1 and 1.0 on a ReLU MLP")
    seeds = list(range(ctx.budget.seeds))
    runs = {lr: [small_mnist_run(f"SGD lr {lr:g} seed {s}", ctx, s, optimizer="sgd", lr=lr)
                 for s in seeds] for lr in LEARNING_RATES}
    growth = {lr: [norm_growth(r) for r in rs] for lr, rs in runs.items()}
    for lr, rs in runs.items():
        res.data[f"lr {lr:g}"] = [r.to_dict() | {"norm_growth": g} for r, g in zip(rs, growth[lr])]
        for r in rs:
            first, last = r.losses[0], r.losses[-1]
            if lr == TOO_LARGE:
                label_run(res, r, "pathological", r.diverged_step is not None,
                          f"loss non-finite from step {r.diverged_step}" if r.diverged_step
                          else "the loss stayed finite")
            else:
                label_run(res, r, "healthy", math.isfinite(last) and last < 0.5 * first,
                          f"loss {first:.2f} → {last:.2f}")
    enough = ctx.budget.small_steps >= ENOUGH_STEPS
    big = growth[TOO_LARGE]
    exploded = [g >= 1e3 for g in big]
    calm = [g < 1e2 for lr in LEARNING_RATES if lr != TOO_LARGE for g in growth[lr]]
    diverged = [r.diverged_step for r in runs[TOO_LARGE]]
    res.claims.append(Claim(
        claim="A learning rate that is too large makes gradients explode",
        source="\"large learning rates cause exploding gradients\" (Keras tutorial's text)",
        measured=f"max/initial total gradient norm: lr {TOO_LARGE:g}: {spread(big, '.3g')}, loss "
                 f"non-finite at step {spread(diverged, '.0f')}; "
                 + "; ".join(f"lr {lr:g}: {spread(growth[lr], '.3g')}" for lr in LEARNING_RATES
                             if lr != TOO_LARGE),
        reproduced=decide(exploded, decidable=any(exploded) or enough),
        verdict=f"lr {TOO_LARGE:g}: {verdicts(runs[TOO_LARGE])} | lr 0.1: {verdicts(runs[0.1])}",
        seeds=len(big), behaved=sum(exploded), spread=spread(big, ".3g"),
        quantitative="growth ≥ 10³× at lr 1.0 and < 10²× at lr ≤ 0.1",
        quantitative_measured=f"{sum(exploded)}/{len(big)} and {sum(calm)}/{len(calm)}",
        quantitative_reproduced=(decide(exploded, decidable=any(exploded) or enough)
                                 and all(calm)),
        budget=runs_budget([r for rs in runs.values() for r in rs])))
    res.notes.append(f"784-256 + 3×256 ReLU MLP, He init, plain SGD, batch 32, at most "
                     f"{ctx.budget.small_steps} steps on {ctx.budget.small_train:,} training "
                     f"images, every step recorded; a run stops at its first non-finite logged "
                     f"loss. Growth = largest recorded total gradient norm / the first one.")
    return res
