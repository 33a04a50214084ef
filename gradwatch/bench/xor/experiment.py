"""The XOR experiment: seed 004's from-scratch book's plain vs residual sigmoid nets, its own Adam."""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import numpy as np

from ..common import Budget, Context, ExperimentResult
from .claims import depth_claim, labelled_runs, plain_claim, residual_claim
from .core import XorBatch, XorTrial
from .plot import plot_depth_sweep, plot_loss_spread
from .train import TrialResult, sample_updates, train_trials
from .watch import Replay, replay_trial

__all__ = ["KINDS", "SOURCE_EPOCHS", "SOURCE_DEPTH", "CLAIM_SEEDS", "TOL", "run_xor",
           "claim_seeds", "xor_trials", "init_grad_ratio"]

SOURCE_EPOCHS = 100_000  # the source's epoch budget
SOURCE_DEPTH = 10  # the source's deep nets: 10 hidden 4->4 layers
CLAIM_SEEDS = 16  # seeds of the two depth-10 claims (the sweep's other depths: `Budget.seeds`)
DECIDING_EPOCHS = 10_000  # shorter XOR budgets are smoke runs: no claim converges in them
TOL = 1e-7  # the source's stopping criterion on the summed epoch loss
LR = 1e-3
KINDS: dict[str, tuple[bool, tuple[float, float]]] = {
    "plain": (False, (0.9, 0.999)), "residual": (True, (0.99, 0.9999))}
"""kind -> (residual hidden blocks, the source's Adam betas for it)."""
REPLAY_POINTS = 20  # at most this many log-spaced and as many evenly spaced replayed updates
SWEEP_REPLAYS = 8  # replayed snapshots per run of the sweep's other depths


def claim_seeds(budget: Budget) -> int:
    """Seeds at the deepest depth: `CLAIM_SEEDS` for a budget long enough to decide claims,
    4 for a smoke budget, never fewer than `Budget.seeds`."""
    own = CLAIM_SEEDS if budget.xor_epochs >= DECIDING_EPOCHS else 4
    return max(own, budget.seeds)


def xor_trials(kind: str, depths: Sequence[int], *, deep_seeds: int,
               seeds: int) -> list[XorTrial]:
    """The runs of one kind: ``deep_seeds`` seeds at the deepest depth, ``seeds`` elsewhere."""
    residual, betas = KINDS[kind]
    deep = max(depths)
    return [XorTrial(d, residual, s, lr=LR, betas=betas)
            for d in sorted(set(depths)) for s in range(deep_seeds if d == deep else seeds)]


def _curve_epochs(epochs: int) -> list[int]:
    """About 250 epochs to record the loss at: log-spaced early, evenly spaced later."""
    logs = np.unique(np.round(np.geomspace(1, epochs, 60)).astype(int))
    lin = np.linspace(0, epochs, 201)[1:].round().astype(int)
    return sorted({int(e) for e in np.concatenate([logs, lin]) if 1 <= e <= epochs})


def _thin(items: Sequence[Any], k: int) -> list[Any]:
    """``k`` items spread evenly over ``items`` (first and last kept)."""
    if len(items) <= k:
        return list(items)
    return [items[i] for i in np.unique(np.linspace(0, len(items) - 1, k).round().astype(int))]


def init_grad_ratio(trials: Sequence[XorTrial]) -> list[float]:
    """Per trial at initialisation, ‖input-layer gradient‖ / ‖output-layer gradient‖ of the
    loss summed over the four patterns (None where the output layer's is exactly 0: saturated)."""
    batch = XorBatch(trials)
    total = np.zeros_like(batch.grad)
    for p in range(4):
        batch.forward_backward(p)
        total += batch.grad
    batch.grad[...] = total
    first = np.linalg.norm(batch.gWb[0], axis=(1, 2))
    last = np.linalg.norm(batch.gWb[-1], axis=(1, 2))
    return [float(f / l) if l > 0 else None for f, l in zip(first, last)]


def _gradwatch_row(reps: Sequence[dict[str, Replay]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for ph in ("stalled", "converging", "other"):
        got = [r[ph] for r in reps if ph in r]
        out[ph] = {"runs": len(got), "flagged": sum(r.flagged for r in got),
                   "replayed_updates": sum(len(r.updates) for r in got),
                   "first_flag_update": [r.first_flag_update() for r in got],
                   "findings": sorted({f.kind for r in got for f in r.findings}),
                   "layers": _layer_counts(got)}
    return out


def _layer_counts(reps: Sequence[Replay]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for r in reps:
        for status, per in r.summary.layers.items():
            tgt = counts.setdefault(status, {})
            for name, k in per.items():
                tgt[name] = tgt.get(name, 0) + k
    return counts


def run_xor(ctx: Context) -> ExperimentResult:
    """Plain and residual 2-4-(N×4)-1 sigmoid nets on XOR, trained as the source trains them."""
    b = ctx.budget
    depths = sorted(set(b.xor_depths))
    deep, epochs = depths[-1], b.xor_epochs
    deep_seeds = claim_seeds(b)
    res = ExperimentResult("xor", "XOR (seed 004): sigmoid nets 2→4→(4→4)×N→1, U[0,1) "
                                  "init, the source's per-pattern Adam")
    curve_epochs = _curve_epochs(epochs)
    points = min(REPLAY_POINTS, max(3, round(4 * math.log10(epochs))))  # ~4 per decade
    samples = sample_updates(epochs, log_points=points, linear_points=points)
    table: dict[str, dict[str, Any]] = {}
    results: dict[str, list[TrialResult]] = {}
    replays: dict[str, list[dict[str, Replay]]] = {}
    seconds: dict[str, float] = {}
    for kind in KINDS:
        trials = xor_trials(kind, depths, deep_seeds=deep_seeds, seeds=b.seeds)
        t0 = time.perf_counter()
        out = train_trials(trials, epochs=epochs, tol=TOL, curve_epochs=curve_epochs,
                           snapshot_at=samples, progress=ctx.progress, desc=f"xor {kind}")
        t1 = time.perf_counter()
        reps = [replay_trial(r, deep, r.snapshots if r.trial.depth == deep
                             else _thin(r.snapshots, SWEEP_REPLAYS)) for r in out]
        seconds[f"{kind}_train"], seconds[f"{kind}_replay"] = t1 - t0, time.perf_counter() - t1
        for r in out:
            r.snapshots = []  # the weights are not needed past here
        results[kind], replays[kind] = out, reps
        ratios = init_grad_ratio(trials)
        for d in depths:
            idx = [i for i, t in enumerate(trials) if t.depth == d]
            rows = [out[i] for i in idx]
            table[f"{kind} {d}"] = {
                "kind": kind, "depth": d, "seeds": [r.trial.seed for r in rows],
                "converged_epoch": [r.converged_epoch for r in rows],
                "converged_fraction": sum(r.converged_epoch is not None for r in rows) / len(rows),
                "plateau_end": [r.plateau_end for r in rows],
                "first_change": [r.first_change for r in rows],
                "prints_zero": [r.prints_zero for r in rows],
                "final_loss": [r.final_loss for r in rows],
                "outputs": [r.outputs for r in rows],
                "epochs_run": [r.epochs_run for r in rows],
                "init_grad_ratio": [ratios[i] for i in idx],
                "gradwatch": _gradwatch_row([reps[i] for i in idx])}
        res.data[f"{kind}_epochs_run"] = max(r.epochs_run for r in out)
        res.data[f"{kind}_curves"] = {"epochs": curve_epochs,
                                      "trials": [[t.depth, t.seed] for t in trials],
                                      "summed_loss": [r.curve for r in out]}
        res.runs += labelled_runs(out, reps)
    res.data.update(table=table, max_epochs=epochs, seconds=seconds, deep_seeds=deep_seeds,
                    sweep_seeds=b.seeds, replayed_updates_per_deep_run=len(samples) + 1)
    res.claims += plain_claim(table[f"plain {deep}"], deep, epochs, replays["plain"])
    res.claims += residual_claim(table[f"residual {deep}"], deep, epochs)
    res.claims.append(depth_claim(table, depths, epochs))
    _figures(res, ctx, results, deep, depths, epochs)
    res.notes += _notes(deep_seeds, b.seeds, depths, epochs, len(samples) + 1)
    return res


def _figures(res: ExperimentResult, ctx: Context, results: dict[str, list[TrialResult]],
             deep: int, depths: Sequence[int], epochs: int) -> None:
    panels = {}
    for kind, out in results.items():
        runs = [r for r in out if r.trial.depth == deep]
        b1, b2 = KINDS[kind][1]
        panels[f"{kind}, {deep} hidden layers, Adam β=({b1}, {b2})"] = (
            res.data[f"{kind}_curves"]["epochs"], [r.curve for r in runs])
    residual_panel = next(k for k in panels if k.startswith("residual"))
    res.figures.append(plot_loss_spread(
        panels, ctx.figure("xor_loss.png"), tol=TOL,
        marks={residual_panel: [(4_000, "source: falls from epoch 4,000"),
                                (13_000, "source: 0.000000 by epoch 13,000")]},
        title=f"XOR, 2→4→({deep}×4)→1 sigmoid nets: summed loss per epoch (a run that "
              f"stopped holds its last loss)"))
    sweep = {kind: {d: [r.converged_epoch for r in out if r.trial.depth == d] for d in depths}
             for kind, out in results.items()}
    res.figures.append(plot_depth_sweep(
        sweep, ctx.figure("xor_depth.png"), epochs=epochs,
        marks=[(13_000, "source's residual run: 0.000000 by epoch 13,000")],
        title="XOR: epochs to converge by depth (one marker per seed)"))


def _notes(deep_seeds: int, seeds: int, depths: Sequence[int], epochs: int,
           replays: int) -> list[str]:
    return [
        f"Setup as the source: per epoch the four patterns in fixed order, one Adam update "
        f"each (lr 1e-3; β=(0.9, 0.999) plain, (0.99, 0.9999) residual; "
        f"lr_t = lr·√(1−β2^t)/(1−β1^t), θ −= lr_t·m/(√v + 1e-7) with ε on √v of the raw "
        f"second moment); every W and b from U[0, 1); sigmoid everywhere; residual hidden blocks "
        f"x + sigmoid(Wx + b); float64; a run stops after the first epoch whose summed loss "
        f"Σ½(y−t)² (each pattern's loss taken before its own update, as the source sums it) "
        f"is ≤ 1e-7; at most {epochs:,} epochs (the source: 100,000).",
        f"Where the bench differs from the source: the source ran one unseeded run; here "
        f"{deep_seeds} seeds at depth {max(depths)} and {seeds} at each other depth "
        f"({', '.join(map(str, depths))}), initial values from numpy.random.default_rng(seed) "
        f"in layer order (W, then b), so the exact numbers of the source's run cannot be "
        f"matched, only its behaviour and its scale. All runs of a kind train in one "
        f"vectorised float64 numpy program (hand-written forward/backward, checked against "
        f"torch.autograd in tests/bench/test_xor.py); each run is exactly as if alone and leaves "
        f"the batch when it converges.",
        f"gradwatch watches a sample, not every update: {replays} updates per depth-"
        f"{max(depths)} run ({SWEEP_REPLAYS} per other run), log-spaced from the first "
        f"update plus evenly spaced, and the state at the end, are replayed on a float64 "
        f"torch copy with the same weights and Adam state (GradWatch(model, "
        f"optimizer=SourceAdam)) on a torch net of plain nn.Linear and nn.Sigmoid modules. "
        f"Each replayed update gets the run's state then, from the loss alone: 'stalled' "
        f"(summed loss ≥ 0.49, no better than a constant output, for ≥ 1,000 more epochs), "
        f"'converging' (after leaving that plateau, in a run that reached 1e-7) or 'other'. "
        f"Labelled for the calibration: a run that never left the plateau (pathological) and "
        f"the converging updates of a run that converged (healthy); a plateau a run later "
        f"left (the residual nets' saturated start) is reported per row, not labelled.",
    ]
