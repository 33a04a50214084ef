"""A no_grad evaluation pass between backward() and optimizer.step() (a validation metric)
is no training pass: the step's unit statistics are the training batch's, as plain torch
counts them, and a truly dead layer keeps its finding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradwatch import GradWatch


def _dead_net() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
    with torch.no_grad():
        model[0].bias[:12] = -20.0  # 12 of 16 units never fire on the training inputs
    return model


@pytest.mark.parametrize("evaluate", ["none", "no_grad", "inference_mode"])
def test_an_evaluation_between_backward_and_step_leaves_the_unit_statistics_alone(evaluate):
    model = _dead_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(1)
    wide = 1000 * torch.randn(64, 4, generator=g)  # fires every unit
    fired = torch.zeros(16, dtype=torch.bool)
    with GradWatch(model, optimizer=opt) as watch:
        for _ in range(20):
            opt.zero_grad()
            x = torch.randn(8, 4, generator=g)
            loss = model(x).pow(2).mean()
            loss.backward()
            watch.note_loss(loss)
            fired |= (model[0](x) > 0).any(0)  # plain torch: units the training data fires
            if evaluate == "no_grad":
                with torch.no_grad():
                    model(wide)
            elif evaluate == "inference_mode":
                with torch.inference_mode():
                    model(wide)
            opt.step()
    dead = [r.layers["0"].values["dead_frac"] for r in watch.history
            if r.layers["0"].values.get("dead_frac") is not None]
    assert dead and all(d == pytest.approx(1 - float(fired.float().mean())) for d in dead)
    assert dead[-1] == 0.75
    assert "dead_units" in [f.kind for f in watch.diagnose() + watch.notes()]


def test_a_saturating_evaluation_batch_is_not_counted_as_saturation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 4), nn.Sigmoid(),
                          nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(8, 4)
    with GradWatch(model, optimizer=opt) as watch:
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        with torch.no_grad():
            model(-1000 * torch.ones(50, 4))  # saturates every sigmoid output
            h = torch.sigmoid(model[2](model[1](model[0](x))))
        opt.step()
    plain = float(((h < 0.01) | (h > 0.99)).float().mean())  # gradwatch's 1% band
    assert plain == 0.0
    assert watch.history[0].layers["2"].values["sat_frac"] == plain
