"""Clipping at the edges of the factor dtype's range (a float32 total past 3.4e38) and with
complex gradients, against clip_grad_norm_ and float64 references."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gradwatch import GradWatch
from gradwatch.clip import AGC, AutoClip, GlobalNorm, ZClip, clip_with_norm_, factor_dtype
from reference import agc_, norm

NO = [False] * 4


def _huge(dtype=torch.float32) -> list[torch.Tensor]:
    """Finite gradients whose exact global norm (about 6.5e38) is past float32's max."""
    return [torch.full((64, 64), 1e37, dtype=dtype), torch.full((3,), -3e38, dtype=dtype),
            torch.linspace(-1e30, 1e30, 7, dtype=dtype)]


def _params_with(grads):
    params = [nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    return params


def _bits_equal(ours, ref) -> None:
    for a, p in zip(ours, ref):
        assert a.dtype == p.grad.dtype and torch.equal(a, p.grad)


# ----------------------------------------------------------------------------- past float32's max


@pytest.mark.parametrize("as_tensor", [False, True])
def test_fp32_total_past_float32_max_scales_to_max_norm_instead_of_zeroing(as_tensor):
    """Issue r_clip_fp32_bignorm: the factor 0.5 / 6.5e38 is a float32 subnormal, formed in
    float64 and rounded; the clipped global norm is max_norm, every entry stays nonzero."""
    grads = _huge()
    exact = norm(grads)
    assert math.isfinite(exact) and exact > torch.finfo(torch.float32).max
    ours = [g.clone() for g in grads]
    total = torch.tensor(exact, dtype=torch.float64) if as_tensor else exact
    coef = clip_with_norm_(ours, 0.5, total)
    expected = torch.tensor(0.5 / (exact + 1e-6), dtype=torch.float64).float()
    if as_tensor:
        assert coef.dtype == torch.float32 and torch.equal(coef, expected)
    else:
        assert coef == expected.item() and 0 < coef < 1e-38
    for a, g in zip(ours, grads):
        assert torch.equal(a, g * expected)
        assert torch.equal(a != 0, g != 0)
    assert norm(ours) == pytest.approx(0.5, rel=1e-5)


@pytest.mark.parametrize("as_tensor", [False, True])
def test_torchs_own_inf_total_still_zeroes_as_clip_grad_norm(as_tensor):
    """Given torch's inf fp32 total the result stays bit-identical to clip_grad_norm_."""
    grads = _huge()
    ref = _params_with(grads)
    torch_total = torch.nn.utils.clip_grad_norm_(ref, 0.5)
    assert torch_total.item() == math.inf
    ours = [g.clone() for g in grads]
    clip_with_norm_(ours, 0.5, torch_total if as_tensor else torch_total.item())
    _bits_equal(ours, ref)


@pytest.mark.parametrize("as_tensor", [False, True])
def test_fp16_total_past_float16_max_is_scaled_too(as_tensor):
    grads = [torch.full((32, 32), 3000.0, dtype=torch.float16)]  # exact norm 96000 > 65504
    exact = norm(grads)
    ours = [g.clone() for g in grads]
    clip_with_norm_(ours, 1.0, torch.tensor(exact, dtype=torch.float64) if as_tensor else exact)
    assert norm(ours) == pytest.approx(1.0, rel=1e-2)  # a float16 subnormal factor


@pytest.mark.parametrize("make", [lambda: GlobalNorm(0.5),
                                  lambda: ZClip(warmup=5, max_grad_norm=0.5),
                                  lambda: AutoClip(percentile=10)],
                         ids=["global", "zclip-warmup-cap", "autoclip"])
def test_every_norm_policy_scales_a_total_past_float32_max(make):
    policy = make()
    small = [torch.full((64, 64), 0.01), torch.full((3,), 0.5), torch.zeros(7)]
    if isinstance(policy, AutoClip):  # history [small, exact]: its 10th percentile is clipped to
        policy.clip_([g.clone() for g in small], norm(small), params=small, is_output=NO)
    grads = [g.clone() for g in _huge()]
    exact = norm(grads)
    coef = policy.clip_(grads, exact, params=grads, is_output=NO)
    target = 0.5 if not isinstance(policy, AutoClip) else norm(small) + 0.1 * (exact - norm(small))
    assert 0 < coef < 1 and norm(grads) == pytest.approx(target, rel=1e-5)
    assert all(bool((g != 0).any()) for g in grads)


def test_watch_clips_an_fp32_norm_past_float32_max_to_max_norm():
    """The tester's repro, smaller: 1e37 entries over 64×64 weights, clip=1.0."""
    model = nn.Linear(64, 64, bias=False)
    with GradWatch(model, clip=1.0, activations=False) as watch:
        model.weight.grad = torch.full_like(model.weight, 1e37)
        watch.step()
        rec = watch.history[-1]
    assert rec.total_norm == pytest.approx(6.4e38, rel=1e-6)
    assert rec.clip_coef == pytest.approx(1 / 6.4e38, rel=1e-5)
    assert norm([model.weight.grad]) == pytest.approx(1.0, rel=1e-5)
    assert bool((model.weight.grad != 0).all())


def test_agc_clips_units_whose_fp32_norm_overflows_instead_of_zeroing_them():
    """A unit of 1e30 entries (fp32 squares overflow) is clipped to λ·‖W_i‖, not zeroed; the
    other units are Brock et al.'s formula in float64 as before."""
    torch.manual_seed(0)
    weights = [torch.randn(4, 8), torch.randn(8)]
    grads = [torch.randn(4, 8) * 0.001, torch.full((8,), 1e25)]
    grads[0][1] = 1e30
    ours = [g.clone() for g in grads]
    AGC(0.01).clip_(ours, 0.0, params=weights, is_output=[False, False])
    for a, g, w in zip(ours, grads, weights):
        torch.testing.assert_close(a.double(), agc_(g, w, 0.01), rtol=1e-6, atol=0)
    assert norm([ours[0][1]]) == pytest.approx(0.01 * weights[0][1].norm().item(), rel=1e-5)
    assert norm([ours[1]]) == pytest.approx(0.01 * weights[1].norm().item(), rel=1e-5)


def test_agc_clips_complex_gradients():
    torch.manual_seed(0)
    w = torch.randn(3, 5, dtype=torch.complex64)
    g = torch.randn(3, 5, dtype=torch.complex64) * 10
    ours = [g.clone()]
    AGC(0.01).clip_(ours, 0.0, params=[w], is_output=[False])
    for i in range(3):
        assert ours[0][i].abs().norm().item() == pytest.approx(
            0.01 * w[i].abs().norm().item(), rel=1e-5)


# ----------------------------------------------------------------------------- complex gradients


def _complex_grads(dtypes, scale=3.0):
    gen = torch.Generator().manual_seed(0)
    shapes = [(8, 4), (8,), (3, 8), (3,)]
    return [(torch.randn(s, generator=gen, dtype=torch.complex128) * scale).to(d)
            if d.is_complex else (torch.randn(s, generator=gen, dtype=torch.float64)
                                  * scale).to(d) for s, d in zip(shapes, dtypes)]


_COMPLEX_MIXES = {
    "complex64": [torch.complex64] * 4,
    "complex128": [torch.complex128] * 4,
    "float32+complex64": [torch.float32, torch.complex64, torch.complex64, torch.float32],
    "float64+complex64": [torch.complex64, torch.float64, torch.complex64, torch.float32],
    "float32+complex128": [torch.float32, torch.complex128, torch.float32, torch.complex128],
}


@pytest.mark.parametrize("as_tensor", [False, True])
@pytest.mark.parametrize("dtypes", list(_COMPLEX_MIXES.values()), ids=list(_COMPLEX_MIXES))
def test_complex_gradients_are_clip_grad_norm_bit_for_bit(dtypes, as_tensor):
    """Issue r_complex_clip: the factor is real (torch's norms are), in the promoted real
    dtype of the gradients; real and complex gradients mixed too."""
    grads = _complex_grads(dtypes)
    ref = _params_with(grads)
    torch_total = torch.nn.utils.get_total_norm(grads)
    torch.nn.utils.clip_grad_norm_(ref, 0.5)
    ours = [g.clone() for g in grads]
    coef = GlobalNorm(0.5).clip_(ours, torch_total if as_tensor else torch_total.item(),
                                 params=ours, is_output=NO)
    _bits_equal(ours, ref)
    assert factor_dtype(grads) == torch_total.dtype and not torch_total.dtype.is_complex
    assert float(coef) == torch.clamp(0.5 / (torch_total + 1e-6), max=1.0).item() < 1


class _ComplexNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, dtype=torch.cfloat))

    def forward(self, x):
        return (self.w * x).abs().sum()


def test_watch_clips_complex_parameters_as_clip_grad_norm():
    """The tester's repro: a complex parameter with clip= raised NotImplementedError (clamp)."""
    torch.manual_seed(0)
    model, ref = _ComplexNet(), _ComplexNet()
    ref.load_state_dict(model.state_dict())
    x = torch.randn(3) * 10
    with GradWatch(model, clip=0.5) as watch:
        model(x).backward()
        watch.step()
        rec = watch.history[-1]
    ref(x).backward()
    torch_total = torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
    assert rec.total_norm == torch_total.item() and rec.clip_coef < 1
    assert torch.equal(model.w.grad, ref.w.grad)
