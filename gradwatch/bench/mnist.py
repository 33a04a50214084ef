"""MNIST experiments of the Keras tutorial: the deep sigmoid MLP stall and the fixed models."""

from __future__ import annotations

import math
import statistics

from .common import Claim, Context, ExperimentResult, LabelledRun, decide, spread
from .figures import Panel, Reference, plot_curves, save_records_figure
from .nets import DeepMLP, MnistResNet
from .train import TrainRun, train_mnist

__all__ = ["run_sigmoid_mlp", "run_fixed_models", "label_run", "verdicts", "runs_budget",
           "depth_ratio", "seeds_of", "curves", "FULL_EPOCH"]

FULL_EPOCH = 60_000  # training images of one full MNIST epoch (1,875 steps at batch 32)


def seeds_of(ctx: Context) -> list[int]:
    return list(range(ctx.budget.mnist_seeds))


def verdicts(runs: list[TrainRun]) -> str:
    """``k/n runs flagged; seed 0: <verdict>``."""
    flagged = sum(r.flagged for r in runs)
    return f"{flagged}/{len(runs)} runs flagged; seed 0: {runs[0].verdict()}" if runs else "no runs"


def runs_budget(runs: list[TrainRun]) -> str:
    """What a claim's runs cost: steps and images per run, runs (seeds × settings), seconds."""
    steps = sorted({r.steps for r in runs})
    images = sorted({r.images for r in runs})
    return (f"{'/'.join(f'{s:,}' for s in steps)} steps of batch 32 on {'/'.join(f'{i:,}' for i in images)} "
            f"training images, {len(runs)} run(s), {sum(r.seconds for r in runs):.0f} s")


def label_run(res: ExperimentResult, run: TrainRun, label: str, confirmed: bool,
              evidence: str) -> None:
    """Labels ``run`` only when its measured behaviour confirms ``label`` (else a note says so)."""
    if confirmed:
        res.runs.append(LabelledRun(run.name, label, run.flagged, run.verdict(),
                                    tuple(f["kind"] for f in run.findings), evidence))
    else:
        res.notes.append(f"{run.name}: not labelled {label} ({evidence}).")


def depth_ratio(run: TrainRun, first: str, last: str) -> float:
    """Median over recorded steps of ‖∇ layer ``first``‖ / ‖∇ layer ``last``‖."""
    vals = [r.layers[first].norm / r.layers[last].norm for r in run.records
            if first in r.layers and last in r.layers and r.layers[last].norm > 0
            and math.isfinite(r.layers[first].norm / r.layers[last].norm)]
    return statistics.median(vals) if vals else math.nan


def curves(runs: dict[str, TrainRun], ctx: Context, name: str, title: str,
           references: tuple[Reference, ...] = ()) -> str:
    """Training loss and accuracy per run (accuracy in percent, with the claim's reference line
    and each run's test accuracy on all test images as a point at its last step)."""
    panels = {
        "training loss": Panel({k: (r.log_steps, r.losses) for k, r in runs.items()},
                               ylabel="training loss (cross-entropy, nats)"),
        "training accuracy": Panel(
            {k: (r.log_steps, r.accs) for k, r in runs.items()},
            ylabel="training accuracy (batch mean)", percent=True, references=references,
            points={f"{k}: test accuracy": (r.steps, r.test_acc) for k, r in runs.items()
                    if math.isfinite(r.test_acc)})}
    return plot_curves({}, ctx.figure(name), xlabel="optimizer step", ylabel="",
                       title=title, panels=panels)


def run_sigmoid_mlp(ctx: Context) -> ExperimentResult:
    """784→256 + 10×256 sigmoid, Glorot-uniform, zero biases, Adam 1e-3 (ε 1e-7), batch 32."""
    res = ExperimentResult("sigmoid_mlp", "Deep sigmoid MLP on MNIST (Glorot-uniform, Adam 1e-3)")
    b = ctx.budget
    runs = [train_mnist(f"sigmoid seed {s}", lambda: DeepMLP(10, activation="sigmoid"), ctx,
                        epochs=b.sigmoid_epochs, seed=s, histograms=s == 0) for s in seeds_of(ctx)]
    peaks = [max(r.epoch_acc) for r in runs]
    stalled = [p < 0.2 for p in peaks]
    for r, p, ok in zip(runs, peaks, stalled):
        label_run(res, r, "pathological", ok, f"peak epoch training accuracy {p:.1%} "
                  f"({'<' if ok else '≥'} 20%: {'stuck on the plateau' if ok else 'it learned'})")
    res.data["runs"] = [r.to_dict() for r in runs]
    if runs[0].histograms is not None:
        res.data["histograms"] = runs[0].histograms
    enough = b.sigmoid_epochs >= 3 and (b.mnist_train is None or b.mnist_train >= FULL_EPOCH)
    near = [abs(p - 0.112) <= 0.005 for p in peaks]
    res.claims.append(Claim(
        claim="Deep sigmoid MLP (784-256 + 10×256): the loss plateaus and training accuracy "
              "stalls near chance",
        source="accuracy \"peaks at 11.2%\" after 3 epochs (of 10)",
        measured=f"peak per-epoch training accuracy {spread(peaks, '.1%')}; test "
                 f"{spread([r.test_acc for r in runs], '.1%')} (11.2% is the share of the most "
                 f"frequent digit, 1, in the training set)",
        reproduced=decide(stalled, decidable=enough or not all(stalled)),
        verdict=verdicts(runs), seeds=len(runs), behaved=sum(stalled),
        spread=spread(peaks, ".1%"), quantitative="peak 11.2% (±0.5 points)",
        quantitative_measured=spread(peaks, ".2%"),
        quantitative_reproduced=decide(near, decidable=enough), budget=runs_budget(runs)))
    ratios = [depth_ratio(r, "hidden.0.linear", "hidden.9.linear") for r in runs]
    shrink = [x < 0.1 for x in ratios]
    res.claims.append(Claim(
        claim="Deep sigmoid MLP: per-layer weight-gradient norms shrink toward the input side "
              "(the tutorial's per-layer gradient-norm and weight-histogram plots)",
        source="input-side gradients orders of magnitude below the output side's",
        measured=f"median over recorded steps of ‖∇W hidden.0‖/‖∇W hidden.9‖ (same 256×256 "
                 f"shape): {spread(ratios, '.2g')}; per-epoch histograms in data['histograms']",
        reproduced=decide(shrink), verdict=verdicts(runs), seeds=len(runs),
        behaved=sum(shrink), spread=spread(ratios, ".2g"), budget=runs_budget(runs)))
    if ctx.figures:
        res.figures.append(curves({r.name: r for r in runs}, ctx, "sigmoid_mlp_curves.png",
                                  "Deep sigmoid MLP on MNIST",
                                  (Reference(0.112, "source: peaks at 11.2%"),)))
        for kind in ("flow", "heatmap"):
            fig = save_records_figure(kind, runs[0].records, ctx.figure(f"sigmoid_mlp_{kind}.png"))
            if fig:
                res.figures.append(fig)
    res.notes.append(f"Keras setup: Glorot-uniform weights, zero biases, Adam 1e-3 (ε 1e-7), "
                     f"batch 32; {runs_budget(runs)}; gradwatch records every {b.every} step(s). "
                     f"Keras adds ε to √v̂·√(1−β2^t) rather than to √v̂: the same update after the "
                     f"first few steps.")
    return res


def run_fixed_models(ctx: Context) -> ExperimentResult:
    """The remedies: ReLU + He, ReLU + He + batch norm, the tutorial's ResNet (he_normal convs)."""
    res = ExperimentResult("fixed_models", "Fixed MNIST models: ReLU+He, +batch norm, ResNet")
    b = ctx.budget
    per_chunk = b.resnet_train or FULL_EPOCH
    makers = {
        "ReLU + He": dict(make=lambda: DeepMLP(10, activation="relu", init="he"),
                          epochs=b.fixed_epochs, train_limit=None, eval_every=None),
        "ReLU + He + batch norm": dict(
            make=lambda: DeepMLP(10, activation="relu", init="he", batch_norm=True),
            epochs=b.fixed_epochs, train_limit=None, eval_every=None),
        "ResNet": dict(make=MnistResNet, epochs=1, train_limit=per_chunk * b.resnet_chunks,
                       eval_every=per_chunk // 32),
    }
    all_runs: dict[str, list[TrainRun]] = {}
    for key, m in makers.items():
        runs = [train_mnist(f"{key} seed {s}", m["make"], ctx, epochs=m["epochs"], seed=s,
                            train_limit=m["train_limit"], eval_every=m["eval_every"],
                            stop_at_acc=0.9) for s in seeds_of(ctx)]
        all_runs[key] = runs
        accs = [r.test_acc for r in runs]
        passed = [a > 0.9 for a in accs]
        for r, ok in zip(runs, passed):
            label_run(res, r, "healthy", ok, f"test accuracy {r.test_acc:.1%} after {r.steps} steps")
        res.data[key] = [r.to_dict() for r in runs]
        full = all(r.steps * 32 >= FULL_EPOCH for r in runs)
        steps_to = [r.steps if ok else None for r, ok in zip(runs, passed)]
        res.claims.append(Claim(
            claim=f"{key} converges fast: test accuracy well above 90%",
            source="fast convergence, accuracy \"well above 90%\"",
            measured=f"test accuracy (all {len(ctx.mnist().test_y):,} test images) "
                     f"{spread(accs, '.1%')}; steps until above 90%: {spread(steps_to, ',.0f')}",
            reproduced=decide(passed, decidable=all(passed) or full), verdict=verdicts(runs),
            seeds=len(runs), behaved=sum(passed), spread=spread(accs, ".1%"),
            quantitative="test accuracy > 90%", quantitative_measured=spread(accs, ".1%"),
            quantitative_reproduced=decide(passed, decidable=all(passed) or full),
            budget=runs_budget(runs)))
    if ctx.figures:
        res.figures.append(curves({k: v[0] for k, v in all_runs.items()}, ctx,
                                  "fixed_models_curves.png", "Fixed models on MNIST (seed 0)",
                                  (Reference(0.9, "source: well above 90%"),)))
        fig = save_records_figure("flow", all_runs["ReLU + He"][0].records,
                                  ctx.figure("relu_he_flow.png"))
        if fig:
            res.figures.append(fig)
    res.notes.append(f"Each run stops at the first evaluation above 90% test accuracy (MLPs: "
                     f"after each full epoch, at most {b.fixed_epochs}; ResNet: every "
                     f"{per_chunk:,} images, at most {per_chunk * b.resnet_chunks:,}). The ResNet: "
                     f"conv 64 7×7/2, BN, max-pool 3/2, residual blocks 64, 64, 128/2, 128, 256/2, "
                     f"256, dense softmax, he_normal convs.")
    return res
