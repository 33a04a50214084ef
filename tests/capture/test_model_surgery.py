"""A module or parameter assigned in the model after the watch was created is watched from the
next measured step: the records hold the new layer's gradient, not the replaced one's."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradwatch import GradWatch


def _norm(module: nn.Module) -> float:
    return torch.linalg.vector_norm(torch.cat(
        [p.grad.reshape(-1) for p in module.parameters()])).item()


@pytest.mark.parametrize("clear", [True, False])
def test_a_replaced_head_is_watched_without_an_optimizer(clear):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    watch = GradWatch(model)
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    model(x).square().mean().backward()
    watch.step()
    old = model[2]
    model[2] = nn.Linear(8, 2)  # the old head keeps its gradient unless cleared
    for _ in range(3):
        if clear:
            model.zero_grad()
        else:
            model[0].zero_grad()
            model[2].zero_grad()
        model(x).square().mean().backward()
        record = watch.step()
        assert record.layers["2"].norm == pytest.approx(_norm(model[2]), rel=1e-6)
        assert record.total_norm == pytest.approx(
            torch.linalg.vector_norm(torch.tensor([_norm(model[0]), _norm(model[2])])).item(),
            rel=1e-6)
    assert record.layers["2"].norm != pytest.approx(_norm(old), rel=1e-3)  # not the old one
    watch.close()


def test_a_replaced_parameter_and_a_module_outside_the_model_are_handled():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    watch = GradWatch(model)
    other = nn.Sequential(nn.Linear(3, 3))  # built elsewhere: the watch is not rebuilt
    other[0] = nn.Linear(3, 3)
    assert not watch._watched.dirty
    model[0].weight = nn.Parameter(torch.zeros(8, 4))
    assert watch._watched.dirty
    x = torch.randn(6, 4)
    model(x).square().mean().backward()
    record = watch.step()
    assert record.layers["0"].norm == pytest.approx(_norm(model[0]), rel=1e-6)
    watch.close()
    model[2] = nn.Linear(8, 2)  # after close(): the hooks are gone
    assert not watch._watched.dirty
