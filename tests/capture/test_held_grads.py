"""Activation gradients are reduced in batches during the backward pass
(`gradwatch.capture.collected.BATCH_TENSORS`, made small here): the numbers must not depend on
where the batches end, a NaN born in any batch must still be located, and no more gradients
than a batch are held at once."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from gradwatch import GradWatch
from gradwatch.bench.nets import IdentityChain


def _act_norms(held: int, monkeypatch, steps: int = 3) -> list[dict[str, float]]:
    monkeypatch.setattr("gradwatch.capture.gradhooks.BATCH_TENSORS", held)
    torch.manual_seed(0)
    model = IdentityChain(100, width=3, c=0.5)  # output gradients 0.5^(99-k) sqrt(3)
    watch = GradWatch(model)
    x = torch.ones(1, 3)
    out = []
    for step in range(steps):
        model.zero_grad()
        (model(x * (1 + step)).sum() * (1 + step)).backward()
        rec = watch.step()
        out.append({name: stat.act_norm for name, stat in rec.layers.items()})
    watch.close()
    return out


def test_activation_norms_are_the_same_bits_whatever_the_batch_size(monkeypatch):
    """A vanishing chain: layers deep in the backward have norms whose float32 squares
    underflow, so the float64 path runs from the second step on; which path a step takes is
    decided per step, not per batch, so batches of 5 give the bits of one batch of 100, and
    both match float64 torch."""
    small = _act_norms(5, monkeypatch)
    whole = _act_norms(1024, monkeypatch)
    assert small == whole
    reference = IdentityChain(100, width=3, c=0.5).double()
    for step, norms in enumerate(small):
        reference.zero_grad()
        x = torch.ones(1, 3, dtype=torch.float64, requires_grad=True)
        grads = {}
        hooks = [layer.register_full_backward_hook(
            lambda m, gi, go, k=k: grads.__setitem__(k, go[0].norm().item()))
            for k, layer in enumerate(reference.layers)]
        (reference(x * (1 + step)).sum() * (1 + step)).backward()
        for h in hooks:
            h.remove()
        for k in range(100):
            assert norms[f"layers.{k}"] == pytest.approx(grads[k], rel=1e-6)
    assert min(small[-1].values()) < 1e-25  # the float64 path was needed


class _NanInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bad):
        ctx.bad = bad
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * math.nan if ctx.bad else g, None


class _Birth(nn.Linear):
    bad = False

    def forward(self, x):
        return super().forward(_NanInBackward.apply(x, self.bad))


@pytest.mark.parametrize("at", [2, 30, 47])
def test_nan_born_in_backward_is_located_in_any_batch(at, monkeypatch):
    """With batches of 8 gradients, a NaN born in the backward pass of layer ``at`` (in the
    first, a middle or the last batch reduced) is located at that layer."""
    monkeypatch.setattr("gradwatch.capture.gradhooks.BATCH_TENSORS", 8)
    torch.manual_seed(0)
    layers = [nn.Linear(4, 4) for _ in range(50)]
    layers[at] = _Birth(4, 4)
    model = nn.Sequential(*(nn.Sequential(layer, nn.Tanh()) for layer in layers))
    with GradWatch(model) as watch:
        model(torch.randn(3, 4)).sum().backward()
        healthy = watch.step()
        model.zero_grad()
        layers[at].bad = True
        with pytest.warns(RuntimeWarning):
            model(torch.randn(3, 4)).sum().backward()
            rec = watch.step()
    assert healthy.first_nonfinite is None
    assert rec.nonfinite_origin == "backward" and rec.first_nonfinite == f"{at}.0"


def test_no_more_gradients_are_held_than_a_batch(monkeypatch):
    """During the backward pass of a 60-layer chain, at most `BATCH_TENSORS` (10 here) gradients of
    each direction wait for their norm; the records' norms are torch's."""
    monkeypatch.setattr("gradwatch.capture.gradhooks.BATCH_TENSORS", 10)
    torch.manual_seed(0)
    model = nn.Sequential(*(nn.Sequential(nn.Linear(4, 4), nn.Tanh()) for _ in range(60)))
    reference = copy.deepcopy(model)
    watch = GradWatch(model)
    collector = watch._watched.collector
    seen = []

    def spy(module, grad_input, grad_output):
        seen.append((len(collector._grads_out), len(collector._grads_in)))

    spies = [block[1].register_full_backward_hook(spy) for block in model]
    x = torch.randn(3, 4)
    model(x).sum().backward()
    rec = watch.step()
    for h in spies:
        h.remove()
    watch.close()
    assert len(seen) == 60 and max(max(s) for s in seen) <= 10
    assert max(s[0] for s in seen) == 10 - 1  # (a full batch is reduced at once)
    grads = {}
    hooks = [block[0].register_full_backward_hook(
        lambda m, gi, go, k=k: grads.__setitem__(k, go[0].norm().item()))
        for k, block in enumerate(reference)]
    reference(x.requires_grad_()).sum().backward()
    for h in hooks:
        h.remove()
    for k in range(60):
        assert rec.layers[f"{k}.0"].act_norm == pytest.approx(grads[k], rel=1e-6)
