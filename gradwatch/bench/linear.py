"""The Keras tutorial's deep linear MLP: exploding loss and gradients, and clipping as the fix."""

from __future__ import annotations

import math
import statistics

from ..clip import GlobalNorm, PerTensorNorm
from ..plot import global_clip_level
from .common import Claim, Context, ExperimentResult, decide, spread
from .figures import save_records_figure
from .mnist import FULL_EPOCH, label_run, runs_budget, seeds_of, verdicts, curves
from .nets import DeepMLP
from .train import TrainRun, train_mnist

__all__ = ["run_deep_linear", "blowup_step", "grad_jump", "linear_runs", "VARIANTS"]

VARIANTS = {"no clip": lambda: None, "per-tensor 1.0": lambda: PerTensorNorm(1.0),
            "global norm 1.0": lambda: GlobalNorm(1.0), 'gradwatch clip="auto"': lambda: "auto"}
"""Clipping variants: name -> a fresh policy (state is per run)."""


def blowup_step(run: TrainRun, factor: float = 5.0) -> int | None:
    """First logged step whose loss is non-finite or ``factor`` times the best loss so far."""
    best = math.inf
    for step, loss in zip(run.log_steps, run.losses):
        if not math.isfinite(loss) or loss > factor * best:
            return step
        best = min(best, loss)
    return run.diverged_step


def grad_jump(run: TrainRun, step: int | None) -> float:
    """Largest recorded total gradient norm from the ``step``-th step on (1-based, as
    `blowup_step`; record steps are 0-based), over the median recorded norm before it."""
    if step is None:
        return math.nan
    before = [r.total_norm for r in run.records if r.step + 1 < step and math.isfinite(r.total_norm)]
    after = [r.total_norm for r in run.records if r.step + 1 >= step]
    if not before or not after:
        return math.nan
    peak = max(after, key=lambda v: v if math.isfinite(v) else math.inf)
    return peak / statistics.median(before)


def linear_runs(ctx: Context, variant: str, *, weight_decay: float = 0.0) -> list[TrainRun]:
    """The deep linear MLP's runs for one variant, shared between experiments of one bench run."""
    b = ctx.budget
    seeds = seeds_of(ctx) if weight_decay == 0 else list(range(b.reg_seeds or b.mnist_seeds))
    tag = variant + (f" + L2 {weight_decay:g}" if weight_decay else "")

    def make() -> list[TrainRun]:
        return [train_mnist(f"linear {tag} seed {s}", lambda: DeepMLP(20, activation="linear"),
                            ctx, epochs=b.linear_epochs, seed=s, clip=VARIANTS[variant](),
                            weight_decay=weight_decay, histograms=s == 0 and variant == "no clip"
                            and not weight_decay) for s in seeds]
    return ctx.memo(f"deep_linear/{tag}", make)


def describe(runs: list[TrainRun]) -> dict[str, list]:
    """Per run: blow-up step and epoch, gradient jump, final test accuracy."""
    steps = [blowup_step(r) for r in runs]
    per_epoch = [math.ceil(r.images / 32) for r in runs]
    return {"blowup_step": steps,
            "blowup_epoch": [None if s is None else math.ceil(s / n) for s, n in zip(steps, per_epoch)],
            "grad_jump": [grad_jump(r, s) for r, s in zip(runs, steps)],
            "test_acc": [r.test_acc for r in runs], "weight_norm": [r.weight_norm for r in runs]}


def run_deep_linear(ctx: Context) -> ExperimentResult:
    """784→256 + 20 linear 256-unit layers; no clipping vs Keras clipnorm (and more in --full)."""
    res = ExperimentResult("deep_linear", "Deep linear MLP on MNIST: exploding gradients and clipping")
    b = ctx.budget
    all_runs = {v: linear_runs(ctx, v) for v in b.linear_variants}
    desc = {v: describe(r) for v, r in all_runs.items()}
    for v, runs in all_runs.items():
        res.data[v] = [dict(r.to_dict(), blowup_step=s, grad_jump=j) for r, s, j in
                       zip(runs, desc[v]["blowup_step"], desc[v]["grad_jump"])]
    none, d = all_runs["no clip"], desc["no clip"]
    if none[0].histograms is not None:
        res.data["histograms"] = none[0].histograms
    blew = [s is not None and (j >= 10 or not math.isfinite(j))
            for s, j in zip(d["blowup_step"], d["grad_jump"])]
    for r, s, j, ok in zip(none, d["blowup_step"], d["grad_jump"], blew):
        label_run(res, r, "pathological", ok, f"loss blow-up at step {s}, gradient norm ×{j:.3g}"
                  if ok else "no blow-up of loss and gradient norm in this run")
    long_enough = all(r.steps >= 5 * 1875 and r.images >= FULL_EPOCH for r in none)
    near3 = [e is not None and 2 <= e <= 4 for e in d["blowup_epoch"]]
    res.claims.append(Claim(
        claim="Deep linear MLP (784-256 + 20×256) without clipping: loss and weight-gradient "
              "norms sky-rocket",
        source="loss and gradient norms \"sky-rocket\" at epoch 3 (≈ steps 3,750–5,625)",
        measured=f"blow-up (loss > 5× best so far, gradient norm ≥ 10× its earlier median) in "
                 f"{sum(blew)}/{len(blew)} runs; at step {spread(d['blowup_step'], ',.0f')}; "
                 f"gradient-norm jump {spread(d['grad_jump'], '.3g')}×; final test "
                 f"{spread(d['test_acc'], '.1%')}",
        reproduced=decide(blew, decidable=long_enough or any(blew)), verdict=verdicts(none),
        seeds=len(none), behaved=sum(blew), spread=spread(d["blowup_step"], ",.0f"),
        quantitative="at epoch 3 (±1)", quantitative_measured=f"epoch {spread(d['blowup_epoch'], '.0f')}",
        quantitative_reproduced=decide(near3, decidable=long_enough or all(near3)),
        budget=runs_budget(none)))
    for v in [v for v in all_runs if v != "no clip"]:
        runs, dv = all_runs[v], desc[v]
        stable = [s is None for s in dv["blowup_step"]]
        clipped = [sum(x.clipped for x in r.records) / max(1, len(r.records)) for r in runs]
        res.claims.append(Claim(
            claim=f"With {'Keras clipnorm=1.0 (per-tensor clipping)' if v == 'per-tensor 1.0' else v}"
                  f" the deep linear MLP trains stably",
            source="Adam(1e-3, clipnorm=1.0) trains it stably" if v == "per-tensor 1.0"
            else "(not in the source: gradwatch's other policies)",
            measured=f"runs without a blow-up {sum(stable)}/{len(stable)}; final test "
                     f"{spread(dv['test_acc'], '.1%')}; clipped on {spread(clipped, '.0%')} of "
                     f"recorded steps",
            reproduced=decide(stable, decidable=long_enough or not all(stable)),
            verdict=verdicts(runs), seeds=len(runs), behaved=sum(stable),
            spread=spread(dv["test_acc"], ".1%"), budget=runs_budget(runs)))
    for key in [k for k in all_runs if ctx.figures]:
        level = global_clip_level(VARIANTS[key]())  # drawn where the run clipped at one level
        per_tensor = " (each tensor clipped apart: no global level)" if key.startswith(
            "per-tensor") else ""
        fig = save_records_figure("norms", all_runs[key][0].records,
                                  ctx.figure(f"deep_linear_norms_{key.split()[0]}.png"),
                                  band=True, layers=["input", "output"], clip_level=level,
                                  title=f"Deep linear MLP, {key}{per_tensor}: gradient norms")
        if fig:
            res.figures.append(fig)
    if ctx.figures:
        res.figures.insert(0, curves({k: v[0] for k, v in all_runs.items()}, ctx,
                                     "deep_linear_curves.png", "Deep linear MLP (seed 0)"))
    res.notes.append(f"Keras setup (Glorot-uniform, zero biases, Adam 1e-3 ε 1e-7, batch 32), "
                     f"{b.linear_epochs} epochs of all training images per run; clipped runs are "
                     f"not labelled (their raw gradients are what clipping tames). "
                     f"Clipping is gradwatch's {type(VARIANTS['per-tensor 1.0']()).__module__}."
                     f"PerTensorNorm: g·c/max(‖g‖, c) per tensor, as Keras' clipnorm.")
    return res
