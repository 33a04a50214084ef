"""gradwatch on the XOR runs: sampled updates replayed through `GradWatch` on a torch copy.

The batched numpy trainer (`xor_core`) has no autograd and no modules, so gradwatch cannot hook
it. Instead the trainer keeps `Snapshot`s (weights and Adam state right before an update) and
each one is replayed here on a float64 `SourceXorNet` (plain ``nn.Linear`` and ``nn.Sigmoid``
modules) with the same weights: forward on the update's
pattern, backward, and the source's Adam step through `SourceAdam`, with a `GradWatch`
attached to the optimizer as a user would attach it. Snapshots are grouped by the run's state
at that time (its `phase`), one `GradWatch` per group, so each group gets its own verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Literal, Sequence

import numpy as np
import torch
from torch import nn

from ...monitor import GradWatch
from ...record.records import Finding, StepRecord
from ..common import RecordSummary, summarize_records
from .core import EPS, XOR_T, XOR_X, XorTrial, _layout
from .train import Snapshot, TrialResult

__all__ = ["SourceXorNet", "SourceAdam", "Phase", "phase", "Replay", "replay_trial",
           "load_snapshot", "snapshot_row"]

Phase = Literal["stalled", "converging", "other"]

STALL_EPOCHS = 1000
"""A run is stalled at epoch e when its loss is >= `PLATEAU` and stays so at least this long."""


class SourceXorNet(nn.Module):
    """The source's XOR net as a user would write it in torch: 2→4, ``depth`` × 4→4, 4→1.

    ``nn.Linear`` layers named ``input``, ``hidden.<i>``, ``output``, each followed by an
    ``nn.Sigmoid``; a residual hidden block adds its input back: ``x + sigmoid(W x + b)``.
    """

    def __init__(self, depth: int, *, residual: bool = False, width: int = 4) -> None:
        super().__init__()
        self.residual = bool(residual)
        self.input = nn.Linear(2, width)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.output = nn.Linear(width, 1)
        self.sigmoids = nn.ModuleList(nn.Sigmoid() for _ in range(depth + 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.sigmoids[0](self.input(x))
        for layer, sigmoid in zip(self.hidden, self.sigmoids[1:]):
            y = sigmoid(layer(x))
            x = x + y if self.residual else y
        return self.sigmoids[-1](self.output(x))

    def linears(self) -> list[nn.Linear]:
        return [self.input, *self.hidden, self.output]


class SourceAdam(torch.optim.Optimizer):
    """The source's Adam: ``lr_t = lr·√(1−β2^t)/(1−β1^t)``; ``θ −= lr_t·m/(√v + eps)``.

    Unlike `torch.optim.Adam`, ``eps`` is added to the square root of the raw (not the
    bias-corrected) second moment. State per parameter: ``step``, ``m``, ``v``.
    """

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = EPS) -> None:
        if not lr > 0:
            raise ValueError(f"Expected `lr` > 0, but got {lr!r}.")
        if not all(0 <= b < 1 for b in betas):
            raise ValueError(f"Expected `betas` in [0, 1), but got {betas!r}.")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # noqa: D102 (torch's signature)
        if closure is not None:
            raise ValueError("SourceAdam does not take a closure.")
        for group in self.param_groups:
            lr, (b1, b2), eps = group["lr"], group["betas"], group["eps"]
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                st = self.state[p]
                if not st:
                    st.update(step=0, m=torch.zeros_like(p), v=torch.zeros_like(p))
                st["step"] += 1
            if not params:
                continue
            steps = {self.state[p]["step"] for p in params}
            if len(steps) > 1:
                raise RuntimeError(f"Expected one step count in a parameter group, but got "
                                   f"{sorted(steps)}; load every parameter's state together.")
            t = steps.pop()
            lr_t = lr * math.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t)
            grads = [p.grad for p in params]
            # m = b1·m + (1−b1)·g;  v = b2·v + (1−b2)·g²;  θ −= lr_t·m / (√v + eps)
            m = torch._foreach_add(torch._foreach_mul([self.state[p]["m"] for p in params], b1),
                                   torch._foreach_mul(grads, 1 - b1))
            v = torch._foreach_add(torch._foreach_mul([self.state[p]["v"] for p in params], b2),
                                   torch._foreach_mul(torch._foreach_mul(grads, grads), 1 - b2))
            den = torch._foreach_add(torch._foreach_sqrt(v), eps)
            torch._foreach_sub_(params, torch._foreach_div(torch._foreach_mul(m, lr_t), den))
            for p, mi, vi in zip(params, m, v):
                self.state[p]["m"], self.state[p]["v"] = mi, vi


def phase(result: TrialResult, epoch: int) -> Phase:
    """The run's state at ``epoch``, from its loss trajectory alone (never from gradwatch).

    ``"stalled"``: the summed loss is no better than a constant output (>= `PLATEAU`) and stays
    so for at least `STALL_EPOCHS` more epochs (known for a run that never left it until
    `STALL_EPOCHS` before its end);
    ``"converging"``: after leaving that plateau, in a run that reached the stopping criterion;
    ``"other"``: anything else (leaving the plateau, or learning without converging in budget).
    """
    end = result.plateau_end
    if epoch + STALL_EPOCHS <= (result.epochs_run + 1 if end is None else end):
        return "stalled"
    if result.converged_epoch is not None and epoch >= end:
        return "converging"
    return "other"


def _blocks(trial: XorTrial, batch_depth: int) -> list[tuple[int, int, int, int]]:
    """Per layer of the trial: ``(w_lo, w_hi, b_hi, fan_out)`` of its slice of a batch row."""
    layout = _layout(batch_depth)
    out = []
    for k in list(range(trial.depth + 1)) + [batch_depth + 1]:
        off, fan_in, fan_out = layout[k]
        out.append((off, off + fan_in * fan_out, off + (fan_in + 1) * fan_out, fan_out))
    return out


def load_snapshot(model: SourceXorNet, opt: SourceAdam | None, trial: XorTrial,
                  snap: Snapshot, batch_depth: int) -> None:
    """Copies a snapshot's weights (and Adam state) into a float64 `SourceXorNet`.

    The batch keeps ``W`` as ``(in, out)`` (``x @ W + b``); ``nn.Linear`` holds its transpose.
    """
    theta, m, v = (torch.from_numpy(a) for a in (snap.theta, snap.m, snap.v))
    with torch.no_grad():
        for layer, (lo, mid, hi, fan_out) in zip(model.linears(), _blocks(trial, batch_depth)):
            for p, sl, transposed in ((layer.weight, slice(lo, mid), True),
                                      (layer.bias, slice(mid, hi), False)):
                def shaped(arr: torch.Tensor) -> torch.Tensor:
                    flat = arr[sl]
                    return flat.view(-1, fan_out).T if transposed else flat

                p.copy_(shaped(theta))
                if opt is not None:  # SourceAdam replaces m and v, never writes into them
                    opt.state[p].update(step=snap.update, m=shaped(m), v=shaped(v))


def snapshot_row(model: SourceXorNet, trial: XorTrial, batch_depth: int) -> np.ndarray:
    """The model's weights as a batch row (zeros where the trial has no layer): the inverse of
    `load_snapshot`'s weight copy."""
    blocks = _blocks(trial, batch_depth)
    row = np.zeros(_layout(batch_depth)[-1][0] + 5)
    for layer, (lo, mid, hi, _) in zip(model.linears(), blocks):
        row[lo:mid] = layer.weight.detach().T.reshape(-1).numpy()
        row[mid:hi] = layer.bias.detach().numpy()
    return row


@dataclass
class Replay:
    """gradwatch's view of one phase of one run."""

    phase: Phase
    updates: list[int]  # the replayed updates (0-based), in order
    records: list[StepRecord]
    summary: RecordSummary
    findings: list[Finding]  # `GradWatch.diagnose()` at the end of the phase

    @property
    def flagged(self) -> bool:
        return self.summary.flagged or bool(self.findings)

    def first_flag_update(self) -> int | None:
        """The source's update index of the first record with a flagged layer."""
        return next((u for u, r in zip(self.updates, self.records) if r.flagged), None)


def replay_trial(result: TrialResult, batch_depth: int,
                 snapshots: Sequence[Snapshot] | None = None) -> dict[Phase, Replay]:
    """Replays a trial's snapshots through `GradWatch`, one watch per `phase`."""
    trial = result.trial
    with torch.random.fork_rng(devices=[]):  # its random init is overwritten: leave the RNG be
        model = SourceXorNet(trial.depth, residual=trial.residual).double()
    groups: dict[Phase, list[Snapshot]] = {}
    for snap in snapshots if snapshots is not None else result.snapshots:
        groups.setdefault(phase(result, snap.epoch), []).append(snap)
    out: dict[Phase, Replay] = {}
    for name, snaps in groups.items():
        opt = SourceAdam(model.parameters(), lr=trial.lr, betas=trial.betas)
        watch = GradWatch(model, optimizer=opt)
        try:
            for snap in snaps:
                load_snapshot(model, opt, trial, snap, batch_depth)
                p = snap.update % 4
                opt.zero_grad()
                y = model(torch.from_numpy(XOR_X[p]).reshape(1, 2))
                loss = 0.5 * (y.reshape(()) - float(XOR_T[p])) ** 2
                loss.backward()
                watch.note_loss(loss)
                opt.step()
            records = list(watch.history)
            findings = list(watch.diagnose())
        finally:
            watch.close()
        out[name] = Replay(name, [s.update for s in snaps], records, summarize_records(records),
                           findings)
    return out
