"""Regression: with ``optimizer=`` and ``activations=False`` the watch keeps measuring and clipping.

Dropping the forward hooks after the first record used to remove the optimizer hooks too (both
lived in one list), so monitoring and clipping silently stopped after step 0.
"""

from __future__ import annotations

import torch
from torch import nn

from gradwatch import GradWatch


def _train(watch_kwargs: dict, steps: int = 4) -> tuple[GradWatch, nn.Module, list[float]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    watch = GradWatch(model, optimizer=opt, **watch_kwargs)
    x, y = torch.randn(16, 4), torch.randn(16, 2)
    post_clip = []
    for _ in range(steps):
        opt.zero_grad()
        (100 * nn.functional.mse_loss(model(x), y)).backward()
        opt.step()
        grads = [p.grad for p in model.parameters()]
        post_clip.append(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(g) for g in grads])).item())
    return watch, model, post_clip


def test_activations_off_with_optimizer_records_every_step():
    watch, model, _ = _train({"activations": False})
    assert watch.step_count == 4
    assert [r.step for r in watch.history] == [0, 1, 2, 3]
    assert not any(m._forward_hooks for m in model.modules())  # those are still dropped


def test_activations_off_with_optimizer_clips_every_step():
    watch, _, post_clip = _train({"activations": False, "clip": 0.5})
    assert all(r.total_norm > 0.5 for r in watch.history)  # the loss is scaled to need clipping
    assert all(n <= 0.5 + 1e-5 for n in post_clip), post_clip
