"""The bench's earlier XOR trainer (``torch.optim.Adam`` on a batched `XorNet`), kept for tests.

The bench itself trains XOR with the source's own Adam in `xor_core` / `xor_train`; this
module only keeps `train_xor` and `slice_layer_norms` importable for ``tests/test_models.py``
(which checks `XorNet`'s batching with them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..record.records import Status
from ..verdict.thresholds import Thresholds, layer_verdicts
from .models import XorNet

__all__ = ["XOR_INPUTS", "XOR_TARGETS", "XorTrace", "slice_layer_norms", "train_xor"]

XOR_INPUTS = ((0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0))
XOR_TARGETS = (0.0, 1.0, 1.0, 0.0)
PLAIN_BETAS = (0.9, 0.999)


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
    check_at = {0} | {int(round(math.exp(k * math.log(epochs) / checks))) - 1
                      for k in range(checks + 1)}
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
