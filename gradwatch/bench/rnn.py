"""Recurrent nets (the Keras tutorial's text, seed 003): gradients vanish through time on long
sequences, large recurrent weights make them explode, and clipping is the usual remedy.

Task: a tanh ``nn.RNN`` (1 → 32) reads a sequence of N(0, 1) numbers and must output the
first one at the last step (a dependency across the whole sequence); squared error. The
through-time gradient is ‖∂L/∂x_1‖ / ‖∂L/∂x_T‖: the gradient reaching the first input over the
one reaching the last (plain autograd on the inputs, independent of gradwatch).
"""

from __future__ import annotations

import math
import statistics
import time
import warnings

import torch
from torch import nn

from ..monitor import GradWatch
from ..plot import global_clip_level
from .chains import verdict_window
from .common import Claim, Context, ExperimentResult, LabelledRun, decide, spread, summarize_records
from .figures import save_records_figure
from .train import findings_of, make_optimizer

__all__ = ["RecallNet", "time_ratio", "train_recall", "run_rnn", "ENOUGH_STEPS"]

ENOUGH_STEPS = 300  # steps a run needs before "not learned" or "did not diverge" means anything
CLIP = 1.0  # the clipped runs' global max norm (GradWatch(clip=CLIP))


class RecallNet(nn.Module):
    """``nn.RNN(1, hidden)`` (tanh) and a dense head on the last hidden state.

    Args:
        hidden: Hidden units.
        recurrent_scale: When given, the recurrent matrix is ``scale · Q`` with Q a random
            orthogonal matrix (all singular values = scale); else PyTorch's default init.
    """

    def __init__(self, hidden: int = 32, recurrent_scale: float | None = None) -> None:
        super().__init__()
        self.rnn = nn.RNN(1, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)
        if recurrent_scale is not None:
            with torch.no_grad():
                q, _ = torch.linalg.qr(torch.randn(hidden, hidden))
                self.rnn.weight_hh_l0.copy_(q * recurrent_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1]).squeeze(-1)


def _batch(gen: torch.Generator, length: int, batch: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(batch, length, 1, generator=gen)
    return x, x[:, 0, 0].clone()


def time_ratio(x_grad: torch.Tensor) -> float:
    """‖∂L/∂x_1‖ / ‖∂L/∂x_T‖ from the input gradient ``(B, T, features)``."""
    g = torch.linalg.vector_norm(x_grad.double(), dim=(0, 2))
    return float(g[0] / g[-1]) if g[-1] > 0 else math.nan


def _through_time(records) -> dict[str, float]:
    """gradwatch's through-time statistics of the last record (values whose name says time)."""
    if not records:
        return {}
    out = {}
    for layer, stat in records[-1].layers.items():
        for k, v in getattr(stat, "values", {}).items():
            if v is not None and any(w in k for w in ("time", "first", "last")):
                out[f"{layer}.{k}"] = float(v)
    return out


def train_recall(length: int, seed: int, *, steps: int, scale: float | None = None,
                 optimizer: str = "adam", lr: float = 1e-3, clip=None,
                 keep_records: bool = False) -> dict:
    """Trains `RecallNet` on sequences of ``length``; stops at the first non-finite loss.

    With ``keep_records`` the result holds gradwatch's records under ``"records"`` (pop them
    before the result goes into ``results.json``)."""
    torch.manual_seed(seed)
    model = RecallNet(recurrent_scale=scale)
    opt = make_optimizer(model.parameters(), optimizer, lr)
    gen = torch.Generator().manual_seed(10_000 + seed)
    losses, ratios, diverged = [], [], None
    start = time.perf_counter()
    with warnings.catch_warnings(), GradWatch(model, clip=clip) as watch:
        warnings.simplefilter("ignore")  # a diverging run warns about NaN/Inf at every step
        for step in range(1, steps + 1):
            x, y = _batch(gen, length)
            x.requires_grad_(True)
            loss = (model(x) - y).square().mean()
            opt.zero_grad()
            loss.backward()
            watch.step(loss=loss)
            opt.step()
            losses.append(float(loss))
            ratios.append(time_ratio(x.grad))
            if not math.isfinite(losses[-1]):
                diverged = step
                break
        records = list(watch.history)
        findings = findings_of(watch)
    s = summarize_records(records)
    head = statistics.fmean(losses[:10])
    tail = statistics.fmean(losses[-10:])
    kept = {"records": records} if keep_records else {}
    return kept | {"length": length, "seed": seed, "scale": scale, "steps": len(losses),
            "loss_start": head, "loss_end": tail, "diverged_step": diverged,
            "ratio_init": ratios[0], "ratio_median": statistics.median(ratios),
            "max_total_norm": max((r.total_norm for r in records), default=math.nan),
            "flagged": bool(findings) or s.flagged, "findings": findings,
            "verdict": (", ".join(f["kind"] for f in findings) if findings else "no finding")
                       + "; " + s.text(2),
            "through_time": _through_time(records), "seconds": time.perf_counter() - start}


def _label(res: ExperimentResult, run: dict, name: str, label: str, ok: bool, why: str) -> None:
    if ok:
        res.runs.append(LabelledRun(name, label, run["flagged"], run["verdict"],
                                    tuple(f["kind"] for f in run["findings"]), why))
    else:
        res.notes.append(f"{name}: not labelled {label} ({why}).")


def _tt_text(runs: list[dict]) -> str:
    kinds = {f["kind"] for r in runs for f in r["findings"]}
    tt = runs[0]["through_time"]
    view = (", ".join(f"{k}={v:.3g}" for k, v in tt.items()) if tt
            else "no time_ratio at seed 0's last record (no finite gradient reached a time step)")
    return (f"{sum(r['flagged'] for r in runs)}/{len(runs)} runs flagged; findings "
            f"{sorted(kinds) or 'none'}; seed 0: {runs[0]['verdict']}; through-time view: {view}")


def run_rnn(ctx: Context) -> ExperimentResult:
    """Vanishing through time (T = 5 vs 100), large recurrent weights, clipping as the remedy."""
    res = ExperimentResult("rnn", "Recurrent nets: gradients through time, large weights, clipping")
    b, seeds = ctx.budget, list(range(ctx.budget.seeds))
    enough = b.small_steps >= ENOUGH_STEPS  # shorter runs cannot show "not learned" / divergence
    short = [train_recall(5, s, steps=b.small_steps) for s in seeds]
    long = [train_recall(100, s, steps=b.small_steps) for s in seeds]
    res.data.update({"T=5": short, "T=100": long})
    for r in short:
        _label(res, r, f"RNN T=5 seed {r['seed']}", "healthy", r["loss_end"] < 0.2 * r["loss_start"],
               f"loss {r['loss_start']:.2f} → {r['loss_end']:.3f}")
    for r in long:
        _label(res, r, f"RNN T=100 seed {r['seed']}", "pathological",
               r["ratio_median"] < 1e-6 and r["loss_end"] > 0.5 * r["loss_start"],
               f"through-time ratio {r['ratio_median']:.2g}, loss {r['loss_start']:.2f} → "
               f"{r['loss_end']:.2f}")
    vanished = [r["ratio_median"] < 1e-6 and r["loss_end"] > 0.5 * r["loss_start"] for r in long]
    res.claims.append(Claim(
        claim="RNNs lose long-term dependencies: the gradient vanishes through time on long "
              "sequences",
        source="\"RNNs and LSTMs lose long-term dependencies as gradients vanish through time "
               "steps\" (Keras tutorial's text)",
        measured=f"‖∂L/∂x_1‖/‖∂L/∂x_T‖ (median over steps): T=100 {spread([r['ratio_median'] for r in long], '.2g')}, "
                 f"T=5 {spread([r['ratio_median'] for r in short], '.2g')}; loss end/start: T=100 "
                 f"{spread([r['loss_end'] / r['loss_start'] for r in long], '.2f')}, T=5 "
                 f"{spread([r['loss_end'] / r['loss_start'] for r in short], '.2f')}",
        reproduced=decide(vanished, decidable=enough), verdict=_tt_text(long), seeds=len(long),
        behaved=sum(vanished), spread=spread([r["ratio_median"] for r in long], ".2g"),
        quantitative="T=100: ratio < 1e-6 and the first input is not learned",
        quantitative_measured=f"{sum(vanished)}/{len(long)} runs",
        quantitative_reproduced=decide(vanished, decidable=enough),
        budget=f"{b.small_steps} Adam steps of batch 32 per run, {len(seeds)} seeds per length"))
    # No update (SGD at lr 0): the same gradient state over gradwatch's verdict window.
    window = verdict_window()
    big = [train_recall(50, s, steps=window, scale=3.0, optimizer="sgd", lr=0.0) for s in seeds]
    base = [train_recall(50, s, steps=window, optimizer="sgd", lr=0.0) for s in seeds]
    res.data.update({"T=50 W_hh=3Q": big, "T=50 default": base})
    grew = [r["ratio_init"] >= 1e3 for r in big]
    res.claims.append(Claim(
        claim="RNNs with large recurrent weights: the gradient explodes through time",
        source="\"RNNs with large weights explode\" (Keras tutorial's text)",
        measured=f"at init, T=50: W_hh = 3·Q (orthogonal Q) ratio {spread([r['ratio_init'] for r in big], '.3g')}, "
                 f"total norm {spread([r['max_total_norm'] for r in big], '.3g')}; PyTorch default "
                 f"init ratio {spread([r['ratio_init'] for r in base], '.2g')}, total norm "
                 f"{spread([r['max_total_norm'] for r in base], '.3g')}",
        reproduced=decide(grew), verdict=_tt_text(big), seeds=len(big), behaved=sum(grew),
        spread=spread([r["ratio_init"] for r in big], ".3g"),
        budget=f"{window} backward passes at init (no update) per seed, {len(seeds)} seeds"))
    for r in big:
        _label(res, r, f"RNN W_hh=3Q seed {r['seed']}", "pathological", r["ratio_init"] >= 1e3,
               f"through-time ratio {r['ratio_init']:.3g} at init")
    plain = [train_recall(20, s, steps=b.small_steps, scale=2.0, optimizer="sgd", lr=0.2)
             for s in seeds]
    clipped = [train_recall(20, s, steps=b.small_steps, scale=2.0, optimizer="sgd", lr=0.2,
                            clip=CLIP, keep_records=s == seeds[0]) for s in seeds]
    records = clipped[0].pop("records")
    fig = ctx.figures and save_records_figure(
        "norms", records, ctx.figure("rnn_norms_clip.png"), clip_level=global_clip_level(CLIP),
        title=f"RNN, T=20, W_hh = 2·Q, SGD lr 0.2, clip={CLIP:g} (seed {seeds[0]}): gradient norms")
    if fig:
        res.figures.append(fig)
    res.data.update({"clip none": plain, "clip 1.0": clipped})
    for r in plain:
        _label(res, r, f"RNN W_hh=2Q SGD no clip seed {r['seed']}", "pathological",
               r["diverged_step"] is not None, f"loss non-finite at step {r['diverged_step']}")
    fixed = [r["diverged_step"] is None and r["loss_end"] < 0.5 * r["loss_start"] for r in clipped]
    broke = [r["diverged_step"] is not None for r in plain]
    res.claims.append(Claim(
        claim="Clipping is the usual remedy for exploding gradients in RNNs",
        source="\"clipping is the usual remedy in RNNs\" (Keras tutorial's text; Pascanu et al. 2013)",
        measured=f"T=20, W_hh = 2·Q, SGD lr 0.2: without clipping {sum(broke)}/{len(broke)} runs "
                 f"diverge (step {spread([r['diverged_step'] for r in plain], '.0f')}); with "
                 f"gradwatch clip={CLIP:g} {sum(fixed)}/{len(fixed)} train (loss end/start "
                 f"{spread([r['loss_end'] / r['loss_start'] for r in clipped], '.2f')})",
        reproduced=decide([a and c for a, c in zip(broke, fixed)], decidable=enough),
        verdict=f"no clip: {_tt_text(plain)} | clip: {_tt_text(clipped)}", seeds=len(fixed),
        behaved=sum(a and c for a, c in zip(broke, fixed)),
        spread=spread([r["loss_end"] for r in clipped], ".3f"),
        budget=f"{b.small_steps} SGD steps of batch 32 per run, {len(seeds)} seeds each"))
    res.notes.append("Clipped runs are not labelled: their raw gradients are the exploding ones "
                     "that clipping tames. Through-time view: gradwatch's per-layer statistics "
                     "whose name mentions time/first/last (the lead's through-time statistic), "
                     "as recorded on the run's last step.")
    return res
