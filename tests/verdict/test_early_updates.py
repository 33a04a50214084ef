"""Update ratios are measured at the first 4 recorded steps, then at every 4th: a learning rate
too high shows in the first steps, and a step that moves the weights by more than their size
at recorded step 1, 2 or 3 is seen (a ResNet at 10x its learning rate moved its weights by
0.9 and 1.1 of their size at steps 1 and 2, unseen, and was called dead_units)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gradwatch import GradWatch


def _train(every: int, steps: int, big_at: int | None = None):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(),
                          nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(32, 6), torch.randn(32, 2)
    plain = []
    with GradWatch(model, optimizer=opt, every=every) as watch:
        for step in range(steps):
            opt.param_groups[0]["lr"] = 1e3 if step == big_at else 1e-3
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            before = [p.detach().clone() for p in model[0].parameters()]
            opt.step()
            after = [p.detach() for p in model[0].parameters()]
            plain.append(math.sqrt(sum(float((a - b).pow(2).sum()) for a, b in zip(after, before)))
                         / math.sqrt(sum(float(b.pow(2).sum()) for b in before)))
    return watch, plain


@pytest.mark.parametrize("every, measured", [(1, [0, 1, 2, 3, 4, 8, 12, 16]),
                                             (2, [0, 2, 4, 6, 8, 16])])
def test_the_update_ratio_is_measured_at_the_first_four_recorded_steps(every, measured):
    watch, plain = _train(every, 17)
    got = {r.step: r.layers["0"].values.get("update_ratio") for r in watch.history}
    assert [s for s, v in got.items() if v is not None] == measured
    assert [got[s] for s in measured] == pytest.approx([plain[s] for s in measured], rel=1e-5)


def test_a_huge_update_at_the_third_step_is_divergence():
    watch, plain = _train(1, 12, big_at=2)
    assert plain[2] > 1.0 > max(plain[:2] + plain[3:])
    (found,) = [f for f in watch.diagnose() if f.kind == "divergence"]
    assert found.first_step == 2 and not found.note
