"""With two optimizers on one model (a GAN's, or a separate head's), the watched optimizer's
update ratios are torch's, and a layer only the other optimizer steps is "not measured"
(it moves at another time), not 0."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gradwatch import GradWatch


@pytest.mark.parametrize("sync", [True, False])
def test_a_layer_another_optimizer_steps_has_no_update_ratio(sync):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    body = torch.optim.SGD(model[0].parameters(), lr=0.1)
    head = torch.optim.SGD(model[2].parameters(), lr=0.1)
    x, y = torch.randn(16, 4), torch.randn(16, 2)
    expected = []
    with GradWatch(model, optimizer=body, sync_records=sync) as watch:
        for _ in range(9):
            body.zero_grad(), head.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            before = [p.detach().clone() for p in model[0].parameters()]
            body.step()
            after = [p.detach() for p in model[0].parameters()]
            expected.append(math.sqrt(sum(float((a - b).pow(2).sum()) for a, b in zip(after, before)))
                            / math.sqrt(sum(float(b.pow(2).sum()) for b in before)))
            head.step()  # moves layer 2, outside the watched optimizer's step
    ratios = {r.step: r.layers["0"].values.get("update_ratio") for r in watch.history}
    measured = [s for s, v in ratios.items() if v is not None]
    assert measured == [0, 1, 2, 3, 4, 8]  # (the first 4 recorded steps, then every 4th)
    assert [ratios[s] for s in measured] == pytest.approx([expected[s] for s in measured],
                                                          rel=1e-5)
    assert [r.layers["2"].values.get("update_ratio") for r in watch.history] == [None] * 9
    assert "–" in next(line for line in watch.summary().splitlines() if line.startswith("2 "))
