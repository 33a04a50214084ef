"""Unit statistics of an activation module called several times in one forward (a cell shared
across time or depth): counted over all its calls, as plain torch counts them."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from gradwatch import GradWatch
from gradwatch.capture import collector
from gradwatch.capture.units import UNIT_EVERY, UNIT_WINDOW


class _Unrolled(nn.Module):
    """One Linear + ReLU and one Linear + Tanh, each applied to ``T`` inputs per forward."""

    T = 3

    def __init__(self) -> None:
        super().__init__()
        self.cell, self.relu = nn.Linear(6, 12), nn.ReLU()
        self.gate, self.tanh = nn.Linear(6, 8), nn.Tanh()
        self.head = nn.Linear(20, 1)
        with torch.no_grad():
            self.cell.bias[:5].fill_(-1.5)  # units that fire on few inputs: a real window
            self.gate.weight.mul_(6.0)  # outputs near ±1 on some inputs only

    def forward(self, xs):
        h = sum(self.relu(self.cell(x)) for x in xs)
        g = sum(self.tanh(self.gate(x)) for x in xs)
        return self.head(torch.cat([h, g], 1))


def _reference(model, measured):
    """Plain torch over the measured steps' batches: the share of the ReLU's units that fired
    on no input of any call within the last `UNIT_WINDOW` of them, and the share of the Tanh's
    outputs of the last step within 1% of ±1, over all its calls."""
    with torch.no_grad():
        fired = [torch.stack([(model.relu(model.cell(x)) > 0).any(0) for x in xs]).any(0)
                 for xs in measured[-UNIT_WINDOW:]]
        dead = 1 - torch.stack(fired).any(0).double().mean().item()
        outs = torch.cat([model.tanh(model.gate(x)).reshape(-1) for x in measured[-1]])
        sat = (outs.abs() >= 0.98).double().mean().item()
    return dead, sat


@pytest.mark.parametrize("held", [None, 2])
def test_a_site_called_several_times_counts_every_call(monkeypatch, held):
    """``held=2``: the units' batch is counted every 2 calls (`BATCH_TENSORS`), so one site's
    calls fall into several batches."""
    if held is not None:
        monkeypatch.setattr(collector, "BATCH_TENSORS", held)
    torch.manual_seed(0)
    model = _Unrolled()
    ref = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    steps = UNIT_EVERY * (UNIT_WINDOW + 1) + 1
    batches = [[torch.randn(1, 6, generator=g) for _ in range(_Unrolled.T)]
               for _ in range(steps)]
    got, want, per_call = [], [], []
    with GradWatch(model) as watch:  # (no optimizer: the weights stay those of ``ref``)
        for step, xs in enumerate(batches):
            model.zero_grad()
            model(xs).pow(2).sum().backward()
            rec = watch.step()
            if step % UNIT_EVERY:
                continue
            measured = batches[:step + 1:UNIT_EVERY]
            got.append((rec.layers["cell"].values["dead_frac"],
                        rec.layers["gate"].values["sat_frac"]))
            want.append(_reference(ref, measured))
            with torch.no_grad():  # what the first call alone says (the old, wrong reading)
                first = [(ref.relu(ref.cell(m[0])) > 0).any(0) for m in measured[-UNIT_WINDOW:]]
                per_call.append(1 - torch.stack(first).any(0).double().mean().item())
    assert got == [pytest.approx(w, rel=1e-7) for w in want]
    assert any(0 < d < 1 for d, _ in want) and all(0 < s < 1 for _, s in want)
    assert any(abs(p - d) > 0.05 for p, (d, _) in zip(per_call, want))  # the cases differ
