"""XOR with deep sigmoid nets, plain vs residual: every depth and seed trained at once, batched."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .models import XorNet
from ..records import Status
from ..thresholds import Thresholds, layer_verdicts
from .common import Claim, Context, ExperimentResult, LabelledRun, fmt
from .figures import plot_curves

__all__ = ["XOR_INPUTS", "XOR_TARGETS", "XorTrace", "slice_layer_norms", "train_xor", "run_xor"]

XOR_INPUTS = ((0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0))
XOR_TARGETS = (0.0, 1.0, 1.0, 0.0)
PLAIN_BETAS = (0.9, 0.999)
RESIDUAL_BETAS = (0.99, 0.9999)  # what the reference used for the residual variant


@dataclass
class XorTrace:
    """Per-trial outcome of `train_xor` (lists are indexed by trial)."""

    converged_epoch: list[int | None]  # first epoch whose summed loss <= tol (1-based)
    final_loss: list[float]  # summed loss of the last epoch run
    outputs: list[list[float]]  # outputs on the four patterns after training
    curve_epochs: list[int] = field(default_factory=list)
    curves: list[list[float]] = field(default_factory=list)  # per logged epoch, per trial
    first_flag_step: list[int | None] = field(default_factory=list)
    flagged_checks: list[int] = field(default_factory=list)
    flagged_layers: list[dict[str, int]] = field(default_factory=list)
    checks: int = 0
    epochs_run: int = 0


def slice_layer_norms(model: XorNet) -> list[list[tuple[str, float]]]:
    """Per trial, ``(layer, L2 norm of its weight and bias gradients)`` of the layers it uses."""
    layers = [("input", model.input)] + [(f"hidden.{i}", m) for i, m in enumerate(model.hidden)]
    layers.append(("output", model.output))
    norms = torch.stack([(m.weight.grad.square().sum((1, 2)) + m.bias.grad.square().sum((1, 2)))
                         .double().sqrt() for _, m in layers]).T.tolist()  # (trials, layers)
    out = []
    for s, depth in enumerate(model.depths):
        used = list(range(depth + 1)) + [len(layers) - 1]
        out.append([(layers[i][0], norms[s][i]) for i in used])
    return out


def train_xor(model: XorNet, *, epochs: int, betas: tuple[float, float] = PLAIN_BETAS,
              lr: float = 1e-3, tol: float = 1e-7, points: int = 200, checks: int = 60,
              thresholds: Thresholds | None = None, desc: str = "xor",
              progress: bool = True) -> XorTrace:
    """One Adam update per pattern, patterns in fixed order; stops once every trial converged.

    The loss is the sum over trials of ½(y−t)², so each trial's weights get its own gradient and,
    Adam being elementwise, its own independent Adam update. About ``checks`` times (log-spaced
    in epochs) every trial's layer norms go through gradwatch's `layer_verdicts`.
    """
    th = thresholds if thresholds is not None else Thresholds()
    n = len(model.seeds)
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=betas, fused=True)
    xs = [torch.tensor([p]) for p in XOR_INPUTS]
    log_every = max(1, epochs // points)
    check_at = {0} | {int(round(math.exp(k * math.log(epochs) / checks))) - 1 for k in range(checks + 1)}
    trace = XorTrace([None] * n, [], [], first_flag_step=[None] * n, flagged_checks=[0] * n,
                     flagged_layers=[{} for _ in range(n)])
    conv = torch.full((n,), -1, dtype=torch.long)
    epoch_loss = torch.zeros(n)
    bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False, mininterval=1.0)
    for epoch in bar:
        epoch_loss.zero_()
        for i, (x, t) in enumerate(zip(xs, XOR_TARGETS)):
            per_trial = 0.5 * (model(x).reshape(n) - t).square()
            opt.zero_grad()
            per_trial.sum().backward()
            if i == 0 and epoch in check_at:
                _check(model, th, 4 * epoch, trace)
            opt.step()
            epoch_loss += per_trial.detach()
        conv = torch.where((conv < 0) & (epoch_loss <= tol), epoch + 1, conv)
        if epoch % log_every == 0 or epoch == epochs - 1:
            trace.curve_epochs.append(epoch + 1)
            trace.curves.append(epoch_loss.tolist())
            if bool((conv > 0).all()):
                break
    trace.epochs_run = epoch + 1
    if trace.curve_epochs[-1] != trace.epochs_run:
        trace.curve_epochs.append(trace.epochs_run)
        trace.curves.append(epoch_loss.tolist())
    trace.converged_epoch = [c if c > 0 else None for c in conv.tolist()]
    trace.final_loss = epoch_loss.tolist()
    with torch.no_grad():
        trace.outputs = torch.cat([model(x).reshape(n, 1) for x in xs], 1).tolist()
    return trace


def _check(model: XorNet, th: Thresholds, step: int, trace: XorTrace) -> None:
    trace.checks += 1
    for s, named in enumerate(slice_layer_norms(model)):
        verdicts = layer_verdicts([v for _, v in named], th)
        bad = [name for (name, _), (status, _) in zip(named, verdicts) if status is not Status.OK]
        if bad:
            trace.flagged_checks[s] += 1
            if trace.first_flag_step[s] is None:
                trace.first_flag_step[s] = step
            for name in bad:
                trace.flagged_layers[s][name] = trace.flagged_layers[s].get(name, 0) + 1


def _first_below(trace: XorTrace, i: int, level: float) -> int | None:
    """First logged epoch whose summed loss is below ``level`` (leaving the 0.5 plateau)."""
    return next((e for e, c in zip(trace.curve_epochs, trace.curves) if c[i] < level), None)


def _verdict(trace: XorTrace, idx: list[int]) -> str:
    flagged = [i for i in idx if trace.flagged_checks[i]]
    if not flagged:
        return f"none flagged (0/{len(idx)} seeds, {trace.checks} checks each)"
    layers: dict[str, int] = {}
    for i in flagged:
        for name, k in trace.flagged_layers[i].items():
            layers[name] = layers.get(name, 0) + k
    top = sorted(layers, key=lambda n: -layers[n])[:3]
    firsts = sorted(trace.first_flag_step[i] for i in flagged)
    return (f"{len(flagged)}/{len(idx)} seeds flagged ({', '.join(top)}; first at step "
            f"{firsts[0]}; {sum(trace.flagged_checks[i] for i in flagged)}/"
            f"{trace.checks * len(flagged)} checks)")


def run_xor(ctx: Context) -> ExperimentResult:
    """Plain and residual XOR nets over depths and seeds; success rate and epochs to converge."""
    b = ctx.budget
    res = ExperimentResult("xor", "XOR: sigmoid nets 2→4→(4→4)×N→1, U[0,1) init, Adam per sample")
    depths = sorted(set(b.xor_depths))
    seeds = list(range(b.seeds))
    trials = [(d, s) for d in depths for s in seeds]
    panels, table = {}, {}
    for residual in (False, True):
        kind = "residual" if residual else "plain"
        model = XorNet(max(depths), residual=residual, seeds=[s for _, s in trials],
                       depths=[d for d, _ in trials])
        trace = train_xor(model, epochs=b.xor_epochs, betas=RESIDUAL_BETAS if residual else PLAIN_BETAS,
                          desc=f"xor {kind}", progress=ctx.progress)
        lines = {}
        for d in depths:
            idx = [k for k, (dd, _) in enumerate(trials) if dd == d]
            conv = [trace.converged_epoch[i] for i in idx]
            ok = [c for c in conv if c is not None]
            row = {"depth": d, "kind": kind, "seeds": seeds, "converged_epoch": conv,
                   "success_rate": len(ok) / len(idx),
                   "final_loss": [trace.final_loss[i] for i in idx],
                   "outputs": [trace.outputs[i] for i in idx],
                   "epochs_to_loss_0.1": [_first_below(trace, i, 0.1) for i in idx],
                   "first_flag_step": [trace.first_flag_step[i] for i in idx],
                   "flagged_checks": [trace.flagged_checks[i] for i in idx],
                   "verdict": _verdict(trace, idx)}
            table[f"{kind} {d}"] = row
            lines[f"depth {d}"] = (trace.curve_epochs,
                                   [sum(c[i] for i in idx) / len(idx) for c in trace.curves])
            label = "healthy" if residual or d <= 2 else ("pathological" if d >= 5 else None)
            for i, s in zip(idx, seeds):
                if label is not None:
                    res.runs.append(LabelledRun(f"xor {kind} depth {d} seed {s}", label,
                                                trace.flagged_checks[i] > 0,
                                                f"first flag at step {trace.first_flag_step[i]}"))
        panels[f"{kind} (Adam β={RESIDUAL_BETAS if residual else PLAIN_BETAS})"] = lines
        res.data[f"{kind}_curves"] = {"epochs": trace.curve_epochs, "trials": trials,
                                      "summed_loss": trace.curves}
        res.data[f"{kind}_epochs_run"] = trace.epochs_run
        res.data[f"{kind}_checks"] = trace.checks
    res.data["table"] = table
    res.data["max_epochs"] = b.xor_epochs
    res.figures.append(plot_curves({}, ctx.figure("xor_loss.png"), xlabel="epoch",
                                   ylabel="summed epoch loss (mean over seeds)", logy=True,
                                   title="XOR: loss per epoch, plain vs residual", panels=panels))
    _claims(res, table, depths, b.xor_epochs)
    res.notes.append(f"{len(seeds)} seeds per depth, at most {b.xor_epochs} epochs (the source: "
                     "100,000); converged = summed epoch loss ≤ 1e-7. All depths and seeds of a "
                     "kind train in one batched model with one Adam (elementwise, so each trial "
                     "is independent). gradwatch verdict: `layer_verdicts` with default "
                     "thresholds on each trial's per-layer gradient norms at log-spaced steps. "
                     "'loss < 0.1' (first logged epoch below it) is our own marker of leaving the "
                     "0.5 plateau, shown beside the documented 1e-7 criterion, not instead of it.")
    return res


def _claims(res: ExperimentResult, table: dict, depths: list[int], epochs: int) -> None:
    deep = max(depths)
    plain, resid = table[f"plain {deep}"], table[f"residual {deep}"]
    outs = [o for run in plain["outputs"] for o in run]
    stuck = plain["success_rate"] == 0 and all(abs(v - 0.5) < 0.05 for v in plain["final_loss"])
    res.claims.append(Claim(
        claim=f"{deep} plain sigmoid layers: the loss stays ≈0.5, every output 0.5000",
        source="loss ≈ 0.5, outputs 0.5000 (one run, 100,000 epochs)",
        measured=f"loss {fmt(plain['final_loss'], '.4f')} after {epochs} epochs; outputs "
                 f"{min(outs):.4f}..{max(outs):.4f}; converged {plain['success_rate']:.0%}",
        reproduced=stuck, verdict=plain["verdict"]))
    ok = [c for c in resid["converged_epoch"] if c is not None]
    res.claims.append(Claim(
        claim=f"{deep} residual layers converge",
        source="converges, ≈13,000 epochs (one run)",
        measured=f"converged {resid['success_rate']:.0%} of seeds"
                 + (f", epochs {fmt(ok, '.0f')}" if ok else f" within {epochs} epochs"),
        reproduced=resid["success_rate"] >= 0.5 if ok or epochs >= 13_000 else None,
        verdict=resid["verdict"]))
    shallow = [c for d in depths if d < 5 for c in table[f"plain {d}"]["converged_epoch"]]
    base_rate = sum(c is not None for c in shallow) / max(1, len(shallow))
    esc_all = [e for d in depths if d < 5 for e in table[f"plain {d}"]["epochs_to_loss_0.1"]]
    shallow_esc = f"{sum(e is not None for e in esc_all)}/{len(esc_all)} seeds"
    base_eps = sorted(c for c in shallow if c is not None)
    median = base_eps[len(base_eps) // 2] if base_eps else None
    parts, verdicts, slow = [], [], True
    for d in (d for d in depths if d >= 5):
        row = table[f"plain {d}"]
        eps = [c for c in row["converged_epoch"] if c is not None]
        esc = [e for e in row["epochs_to_loss_0.1"] if e is not None]
        parts.append(f"depth {d}: {row['success_rate']:.0%}" + (f", {fmt(eps, '.0f')} ep" if eps else "")
                     + f" (loss < 0.1: {len(esc)}/{len(row['epochs_to_loss_0.1'])} seeds"
                     + (f", ~{fmt(esc, '.0f')} ep)" if esc else ")"))
        verdicts.append(f"depth {d}: {row['verdict']}")
        faster = eps and median is not None and sorted(eps)[len(eps) // 2] < 2 * median
        slow = slow and not (row["success_rate"] >= base_rate and faster)
    baseline = (f"depth<5: {base_rate:.0%} converged, loss < 0.1 in {shallow_esc}"
                + (f", median {median} ep" if median else "") if shallow
                else "no depth below 5 in this sweep (nothing to compare with)")
    res.claims.append(Claim(
        claim="5 or more plain layers fail or converge much more slowly than shallow ones",
        source="fail or converge much more slowly",
        measured=baseline + "; " + "; ".join(parts),
        reproduced=slow if base_eps else None, verdict="; ".join(verdicts)))
