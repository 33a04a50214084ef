"""``activations=False``: no forward hooks, no output-gradient norms, and measuring and clipping
on every step, called by hand or from the optimizer's hooks.

Regression: dropping the forward hooks after the first record used to remove the optimizer hooks
too (both lived in one list), so monitoring and clipping silently stopped after step 0.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from gradwatch import GradWatch
from reference import train_step


@pytest.mark.parametrize("path", ["manual", "optimizer"])
def test_activations_off_records_and_clips_every_step_like_clip_grad_norm(path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    twin = copy.deepcopy(model)
    opt, opt_twin = (torch.optim.SGD(m.parameters(), lr=0.1) for m in (model, twin))
    watch = GradWatch(model, activations=False, clip=0.5,
                      **({"optimizer": opt} if path == "optimizer" else {}))
    x, y = torch.randn(16, 4), torch.randn(16, 2)

    def loss(m: nn.Module) -> torch.Tensor:
        return 100 * nn.functional.mse_loss(m(x), y)  # scaled to need clipping

    for step in range(4):
        opt.zero_grad()
        loss(model).backward()
        if path == "manual":
            watch.step()
        opt.step()
        total = train_step(twin, opt_twin, loss, max_norm=0.5)
        rec = watch.history[-1]
        assert rec.step == step and rec.total_norm == pytest.approx(total.item(), rel=1e-6)
        assert rec.total_norm > 0.5 and rec.clip_coef < 1
        assert all(s.act_norm is None for s in rec.layers.values())
        post_clip = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item()
        assert post_clip <= 0.5 + 1e-5
        assert post_clip == pytest.approx(0.5, rel=1e-5)
        assert list(rec.layers) == ["0", "2"]
        for p, q in zip(model.parameters(), twin.parameters()):
            assert torch.equal(p.grad, q.grad) and torch.equal(p, q)
    assert watch.step_count == 4
    assert [r.step for r in watch.history] == [0, 1, 2, 3]
    assert not any(m._forward_hooks for m in model.modules())  # those are still dropped
    watch.close()
