"""Where NaN/Inf is born, the on_nonfinite policies, and the 1e±30 regimes."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from torch import nn

from gradwatch import GradWatch, NonFiniteGradientError, Status
from gradwatch.bench.nets import IdentityChain


class _SqrtNet(nn.Module):
    """While `broken`, b's output goes through sqrt(h - h.detach()): 0 forward, inf backward,
    so the NaN/Inf is born at `b`'s output gradient and flows into `a`; `c` stays finite."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 1)
        self.broken = True

    def forward(self, x):
        h = self.b(self.a(x))
        if self.broken:
            h = torch.sqrt(h - h.detach()) + 1.0
        return self.c(h)


def _nan_step(model, watch=None, opt=None):
    if opt is not None:
        opt.zero_grad()
    model(torch.randn(3, 4)).sum().backward()
    if watch is not None and opt is None:
        return watch.step()
    if opt is not None:
        opt.step()
    return None


def test_first_nonfinite_names_the_layer_where_nan_was_born():
    model = _SqrtNet()
    with GradWatch(model, on_nonfinite="warn") as watch:
        with pytest.warns(RuntimeWarning, match="backward pass at 'b'") as caught:
            rec = _nan_step(model, watch)
    assert caught[0].filename == __file__  # the warning points at the user's line
    assert rec.first_nonfinite == "b"
    assert rec.layers["c"].status is Status.OK
    assert rec.layers["b"].status is Status.NONFINITE and rec.layers["a"].status is Status.NONFINITE
    assert math.isnan(rec.total_norm)


def test_first_nonfinite_without_activation_hooks_uses_parameter_gradients():
    model = _SqrtNet()
    with GradWatch(model, activations=False, on_nonfinite="zero") as watch:
        rec = _nan_step(model, watch)
    # b's own weight gradient is NaN (its output gradient is), c's is finite
    assert rec.first_nonfinite == "b"


def test_raise_logs_the_record_first():
    model = _SqrtNet()
    seen = []
    with GradWatch(model, on_nonfinite="raise", loggers=[seen.append]) as watch:
        with pytest.raises(NonFiniteGradientError, match="'b'"):
            _nan_step(model, watch)
    assert len(seen) == 1 and seen[0].first_nonfinite == "b" and len(watch.history) == 1


def test_zero_replaces_nonfinite_entries_and_keeps_finite_ones():
    model = _SqrtNet()
    model_ref = copy.deepcopy(model)
    x = torch.randn(3, 4)
    model_ref(x).sum().backward()
    with GradWatch(model, on_nonfinite="zero", clip=1e6) as watch:
        model(x).sum().backward()
        rec = watch.step()
    for p, ref in zip(model.parameters(), model_ref.parameters()):
        expected = torch.nan_to_num(ref.grad, nan=0.0, posinf=0.0, neginf=0.0)
        assert torch.equal(p.grad, expected)
    assert rec.first_nonfinite == "b" and rec.clip_coef == 1.0


@pytest.mark.parametrize("c", [2.0, 0.5])
def test_norms_stay_right_where_fp32_squares_overflow_or_underflow(c):
    model = IdentityChain(100, width=3, c=c)  # output c^100 x; output gradient grows by c/layer
    reference = copy.deepcopy(model).double()
    x = torch.ones(1, 3)
    reference(x.double()).sum().backward()
    watch = GradWatch(model)
    model(x).sum().backward()
    rec = watch.step()
    for k, layer in enumerate(reference.layers):
        expected = layer.weight.grad.norm().item()
        stat = rec.layers[f"layers.{k}"]
        assert 0 < stat.norm < math.inf and stat.status is not Status.NONFINITE
        assert stat.norm == pytest.approx(expected, rel=1e-6)
        # dL/d out_k = c^(100-1-k) on each of the 3 units
        assert stat.act_norm == pytest.approx(c ** (99 - k) * math.sqrt(3), rel=1e-6)
    assert rec.first_nonfinite is None and math.isfinite(rec.total_norm)
    ratios = [rec.layers[f"layers.{k}"].act_norm / rec.layers[f"layers.{k + 1}"].act_norm
              for k in range(99)]
    assert all(r == pytest.approx(c, rel=1e-5) for r in ratios)
    assert rec.flagged == ()  # one step is no verdict: depth verdicts must persist
    for _ in range(watch.thresholds.persistence - 1):  # the same gradients, step after step
        model.zero_grad()
        model(x).sum().backward()
        rec = watch.step()
    kind, status = ("exploding", Status.EXPLODING) if c > 1 else ("vanishing", Status.VANISHING)
    assert rec.layers["layers.0"].status is status  # input side: c^99 times the head's
    # the head is the depth trend's reference, but its own norm (2^99 or 0.5^99 times the
    # input's) is past the absolute bound, so it carries the finding's status too
    head = rec.layers["layers.99"]
    assert (head.norm > watch.thresholds.exploding if c > 1
            else head.norm < watch.thresholds.vanishing)
    assert head.status is status
    assert watch.head == "layers.99"
    assert [f.kind for f in watch.diagnose()] == [kind]
    watch.close()


class _Normalize(nn.Module):
    """``x / (‖x‖ + eps)``: finite forward on a zero row, NaN backward (sqrt's slope at 0)."""

    def forward(self, x):
        return x / (x.pow(2).sum(-1, keepdim=True).sqrt() + 1e-6)


def test_nan_born_in_the_backward_of_a_parameter_free_module_names_that_module():
    """The gradient reaching `norm`'s output is finite; the one leaving it (into `2`'s output)
    is NaN. Plain torch confirms it; gradwatch names the module, not the Linear before it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), _Normalize(),
                          nn.Linear(4, 2))
    with torch.no_grad():
        model[2].weight.zero_()
        model[2].bias.zero_()  # `2` outputs zero rows
    x = torch.randn(3, 4)
    h = model[:3](x).detach().requires_grad_()
    out = model[3](h)
    out.retain_grad()
    model[4](out).sum().backward()
    assert torch.isfinite(out.grad).all() and not torch.isfinite(h.grad).all()
    model.zero_grad()
    with GradWatch(model) as watch:
        with pytest.warns(RuntimeWarning, match="backward pass at '3'"):
            model(x).sum().backward()
            rec = watch.step()
    assert rec.nonfinite_origin == "backward" and rec.first_nonfinite == "3"
    assert [f.kind for f in watch.diagnose()] == ["nonfinite_backward"]
    assert watch.diagnose()[0].layers == ("3",)


@pytest.mark.parametrize("mode", ["warn", "raise", "skip", "zero"])
@pytest.mark.parametrize("value", [1e200, 1e-200])
def test_float64_gradients_whose_squares_over_or_underflow_are_finite_steps(mode, value):
    """Issues r_f64_overflow / r_f64_underflow: finite float64 entries of 1e200 (squares
    overflow) or 1e-200 (squares underflow) get their true norm, and no on_nonfinite action."""
    torch.manual_seed(0)
    model = nn.Linear(4, 2).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1 / value)  # an update of 0.1
    before = model.weight.detach().clone()
    with GradWatch(model, optimizer=opt, on_nonfinite=mode, activations=False) as watch:
        for p in model.parameters():
            p.grad = torch.full_like(p, value)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "non-finite gradient" warning
            opt.step()
        rec = watch.history[-1]
    assert rec.total_norm == pytest.approx(math.hypot(*[value] * 10), rel=1e-12, abs=0)
    assert not rec.nonfinite and rec.first_nonfinite is None
    assert rec.layers["(root)"].norm == pytest.approx(rec.total_norm, rel=1e-12, abs=0)
    assert not torch.equal(before, model.weight)  # the step was taken, gradients kept


@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_float64_gradients_with_a_real_inf_or_nan_entry_are_still_non_finite(bad):
    model = nn.Linear(4, 2).double()
    with GradWatch(model, on_nonfinite="raise", activations=False) as watch:
        for p in model.parameters():
            p.grad = torch.full_like(p, 1e200)
        model.weight.grad[0, 0] = bad
        with pytest.raises(NonFiniteGradientError):
            watch.step()
        rec = watch.history[-1]
    assert rec.nonfinite and not math.isfinite(rec.total_norm)
    assert math.isnan(rec.total_norm) == math.isnan(bad)
