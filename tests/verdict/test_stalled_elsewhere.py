"""`stalled` says no gradient enters the model. An auxiliary head that runs last and whose loss
is weighted 0 gets none, while the main head does: gradient enters, so no stall (the head that
the forward order names is not the only way in)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from gradwatch import GradWatch


class _TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU())
        self.cls = nn.Linear(32, 4)
        self.aux = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, x):
        h = self.trunk(x)
        return self.cls(h), self.aux(h)


@pytest.mark.parametrize("w_aux", [0.0, 1.0])
def test_an_auxiliary_head_weighted_0_is_no_stall(w_aux):
    torch.manual_seed(0)
    model = _TwoHeads()
    opt = torch.optim.Adam(model.parameters(), 5e-3)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(16, 4, generator=g)
    losses, head_in = [], []
    model.cls.register_forward_hook(
        lambda m, i, o: [o.register_hook(lambda gr: head_in.append(gr.norm().item()))] and None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with GradWatch(model, optimizer=opt) as watch:
            for _ in range(100):
                x = torch.randn(32, 16, generator=g)
                y = (x @ w).argmax(1)
                logits, aux = model(x)
                loss = F.cross_entropy(logits, y) + w_aux * F.binary_cross_entropy_with_logits(
                    aux.squeeze(1), (y % 2).float())
                opt.zero_grad()
                loss.backward()
                watch.note_loss(loss)
                opt.step()
                losses.append(loss.item())
    assert watch.head == "aux.2"  # the last weight layer to run
    assert min(head_in) > 1e-3  # plain torch: gradient enters through the main head
    assert sum(losses[-5:]) < 0.6 * sum(losses[:5])
    kinds = [f.kind for f in watch.diagnose()]
    assert "stalled" not in kinds
