"""The update/weight ratio against plain torch measured around ``optimizer.step()``: an optimizer
whose step replaces each parameter's storage (``p.data = p.data - lr * p.grad``) was read as not
moving at all (Δθ = 0 on every measured step: a false `not_moving`, a divergence missed), and
finite float32 weights past ~1e19, whose squares overflow float32, gave a NaN ratio (with numpy's
"invalid value encountered in divide" in the user's output) or a false 0."""

from __future__ import annotations

import math
import warnings
from typing import Callable

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from gradwatch import GradWatch


class _RebindSGD(torch.optim.Optimizer):
    """Plain SGD written the tutorial way: each step binds ``p.data`` to a new tensor. With
    ``transpose`` the new storage of a matrix is column-major (its layout changes too)."""

    def __init__(self, params, lr: float, transpose: bool = False) -> None:
        super().__init__(params, dict(lr=lr))
        self.transpose = transpose

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    new = p.data - group["lr"] * p.grad
                    if self.transpose and new.dim() == 2:
                        new = new.t().contiguous().t()
                    p.data = new


class _Shrink(nn.Module):
    """Multiplies by a constant: huge weights before it, ordinary activations after it."""

    def __init__(self, by: float) -> None:
        super().__init__()
        self.by = by

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.by


def _layers(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    return {n: list(m.parameters(recurse=False)) for n, m in model.named_modules()
            if list(m.parameters(recurse=False))}


def _ratio(before: list[torch.Tensor], after: list[torch.Tensor]) -> float:
    """‖θ_after − θ_before‖/‖θ_before‖ over a layer, all in float64."""
    num = sum((a.double() - b.double()).square().sum().item() for a, b in zip(after, before))
    den = sum(b.double().square().sum().item() for b in before)
    return math.sqrt(num / den)


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, sync_records: bool | None,
           before_step: Callable[[], None] = lambda: None
           ) -> tuple[GradWatch, list[dict[str, tuple[float | None, float]]]]:
    """Trains with gradwatch watching; per measured step and layer (recorded ratio, plain-torch
    ratio across ``opt.step()``). Deferred records (``sync_records=False``) form a step late, so
    the records are matched to the references by step at the end."""
    layers = _layers(model)
    refs = {}
    with GradWatch(model, optimizer=opt, sync_records=sync_records) as watch:
        for step in range(steps):
            g = torch.Generator().manual_seed(step)
            x, y = torch.randn(32, 8, generator=g), torch.randint(0, 2, (32,), generator=g)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            before_step()
            before = {n: [p.detach().clone() for p in ps] for n, ps in layers.items()}
            opt.step()
            refs[step] = {n: _ratio(before[n], [p.detach() for p in ps])
                          for n, ps in layers.items()}
        seen = [{n: (s.values.get("update_ratio"), refs[r.step][n]) for n, s in r.layers.items()}
                for r in watch.history
                if any("update_ratio" in s.values for s in r.layers.values())]
    return watch, seen


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)  # every tensor has at most 256 entries: the ratio is exact
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                         nn.Linear(16, 2))


@pytest.mark.parametrize("sync_records", [None, False])
@pytest.mark.parametrize("transpose", [False, True])
def test_an_optimizer_rebinding_data_in_its_step_gets_the_torch_update_ratio(transpose,
                                                                             sync_records):
    """``p.data = p.data - lr * p.grad`` leaves the sampled views on the orphaned storage: the
    ratio was exactly 0 at every measured step (0.0068 at step 0 for layer 0) and the healthy
    run was called `not_moving`. Now the entries are read from the new storage, in the old
    layout when the step gave a matrix another one (column-major)."""
    model = _mlp()
    watch, seen = _train(model, _RebindSGD(model.parameters(), 0.2, transpose), 40,
                         sync_records)
    assert len(seen) == 13  # measured on the first 4 recorded steps, then every 4th
    for row in seen:
        for name in ("0", "2", "4"):
            got, ref = row[name]
            assert 0 < ref < 1 and got == pytest.approx(ref, rel=1e-6)
    assert "not_moving" not in {f.kind for f in watch.diagnose()}
    assert "not_moving" not in {f.kind for f in watch.notes()}


def test_a_rebinding_optimizer_at_a_huge_learning_rate_is_seen_moving_fast():
    """At lr 500 the weights move by many times their size at the first step (a divergence
    that the 0 ratio hid)."""
    model = _mlp()
    _, seen = _train(model, _RebindSGD(model.parameters(), 500.0), 4, None)
    got, ref = seen[0]["0"]
    assert ref > 1 and got == pytest.approx(ref, rel=1e-6)


def test_storage_swapped_before_the_step_still_gives_the_torch_update_ratio():
    """A SAM-style ``p.data = saved`` before ``optimizer.step()`` (an in-place SGD step):
    the snapshot is taken of the new storage, as before."""
    model = _mlp()
    params = list(model.parameters())

    def swap():
        for p in params:
            p.data = p.data.clone()

    _, seen = _train(model, torch.optim.SGD(params, lr=0.2), 12, None, before_step=swap)
    assert len(seen) == 6  # steps 0-4 and 8
    for row in seen:
        for got, ref in row.values():
            assert got == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize("sync_records", [None, False])
@pytest.mark.parametrize("scale, decay", [(1e21, 1.0), (1e20, 0.01)])
def test_finite_weights_whose_float32_squares_overflow_give_the_float64_ratio(
        scale, decay, sync_records):
    """Weights of ~1e20: their float32 squares are inf. With ‖Δθ‖² inf too the ratio was
    inf/inf = NaN and numpy warned "invalid value encountered in divide"; with ‖Δθ‖² finite
    it was a false 0. Now the float64 ratio (weight decay shrinks the weights by lr·decay),
    and no warning at all."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), _Shrink(1 / scale), nn.ReLU(), nn.Linear(16, 2))
    with torch.no_grad():
        for p in model[0].parameters():
            p.mul_(scale)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not torch.isfinite(model[0].weight.square().sum())  # the float32 squares overflow
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=decay)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, seen = _train(model, opt, 9, sync_records)
    assert len(seen) == 6  # steps 0-4 and 8
    for row in seen:
        got, ref = row["0"]
        assert math.isfinite(ref) and ref > 0.5 * 0.1 * decay
        assert got == pytest.approx(ref, rel=1e-6)
        got, ref = row["3"]  # ordinary weights beside them: as ever
        assert got == pytest.approx(ref, rel=1e-6)
