"""Clipping policies against torch.nn.utils and hand-written references of the papers."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from gradwatch.clip import AGC, AutoClip, GlobalNorm, Value, ZClip, clip_with_norm_, make_policy
from gradwatch.norms import per_tensor_norms


def _grads(seed: int = 0, scale: float = 1.0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) * scale for shape in [(8, 4), (8,), (3, 8), (3,)]]


def _params_with(grads):
    params = [nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    return params


def _total(grads) -> float:
    """The global norm as gradwatch logs it on a healthy step (fp32, as clip_grad_norm_)."""
    return torch.linalg.vector_norm(per_tensor_norms(grads)).item()


@pytest.mark.parametrize("scale", [0.01, 1.0, 50.0])
def test_global_norm_equals_clip_grad_norm(scale):
    grads = _grads(scale=scale)
    ref = _params_with(grads)
    ref_total = torch.nn.utils.clip_grad_norm_(ref, 1.0)
    ours = [g.clone() for g in grads]
    total = _total(ours)
    coef = GlobalNorm(1.0).clip_(ours, total, params=ours, is_output=[False] * 4)
    assert total == pytest.approx(ref_total.item(), rel=1e-6)
    for a, p in zip(ours, ref):
        torch.testing.assert_close(a, p.grad, rtol=0, atol=0)
    assert coef == pytest.approx(min(1.0, 1.0 / (ref_total.item() + 1e-6)), rel=1e-6)


def test_global_norm_with_device_tensor_total_matches_too():
    grads = _grads(scale=10.0)
    ref = _params_with(grads)
    torch.nn.utils.clip_grad_norm_(ref, 0.5)
    ours = [g.clone() for g in grads]
    total = torch.linalg.vector_norm(per_tensor_norms(ours).double())
    coef = clip_with_norm_(ours, 0.5, total)
    assert isinstance(coef, torch.Tensor)
    for a, p in zip(ours, ref):
        torch.testing.assert_close(a, p.grad)


def test_documented_clip_gradient_norm_reference_agrees():
    """The reference `clip_gradient_norm(grads, max_norm=0.25)` of the experiments' source."""
    grads = _grads(scale=3.0)
    norm = math.sqrt(sum(float((g ** 2).sum()) for g in grads))
    factor = 0.25 / (norm + 1e-6)
    expected = [g * factor for g in grads] if factor < 1 else grads
    ours = [g.clone() for g in grads]
    GlobalNorm(0.25).clip_(ours, _total(ours), params=ours, is_output=[False] * 4)
    for a, e in zip(ours, expected):
        torch.testing.assert_close(a, e)


def test_value_equals_clip_grad_value():
    grads = _grads(scale=2.0)
    ref = _params_with(grads)
    torch.nn.utils.clip_grad_value_(ref, 0.7)
    ours = [g.clone() for g in grads]
    assert Value(0.7).clip_(ours, 0.0, params=ours, is_output=[False] * 4) is None
    for a, p in zip(ours, ref):
        assert torch.equal(a, p.grad)


def test_agc_matches_unitwise_formula_and_skips_output_layer():
    torch.manual_seed(1)
    weights = [torch.randn(6, 5), torch.randn(6), torch.randn(2, 6)]
    grads = [torch.randn(6, 5) * 0.5, torch.randn(6) * 0.001, torch.randn(2, 6) * 9]
    expected = []
    for w, g, out in zip(weights, grads, [False, False, True]):
        e = g.clone()
        if not out:
            rows = [(w, g)] if w.ndim == 1 else list(zip(w, g))
            for i, (wi, gi) in enumerate(rows):
                max_norm = 0.01 * max(wi.norm().item(), 1e-3)
                if gi.norm().item() > max_norm:
                    scaled = gi * (max_norm / gi.norm().item())
                    if w.ndim == 1:
                        e = scaled
                    else:
                        e[i] = scaled
        expected.append(e)
    ours = [g.clone() for g in grads]
    AGC(0.01).clip_(ours, 0.0, params=weights, is_output=[False, False, True])
    for a, e in zip(ours, expected):
        torch.testing.assert_close(a, e)
    assert torch.equal(ours[2], grads[2])  # the output layer is left alone
    both = [g.clone() for g in grads]
    AGC(0.01, skip_output=False).clip_(both, 0.0, params=weights, is_output=[False, False, True])
    assert not torch.equal(both[2], grads[2])


def test_autoclip_clips_at_numpy_percentile_of_history():
    policy = AutoClip(percentile=10)
    history = []
    for step, scale in enumerate([1.0, 2.0, 0.5, 4.0, 1.5, 100.0]):
        grads = _grads(seed=step, scale=scale)
        ref = _params_with(grads)
        total = _total(grads)
        history.append(total)
        threshold = float(np.percentile(history, 10))
        torch.nn.utils.clip_grad_norm_(ref, threshold)
        policy.clip_(grads, total, params=grads, is_output=[False] * 4)
        for a, p in zip(grads, ref):
            torch.testing.assert_close(a, p.grad)
    policy.clip_(_grads(), math.nan, params=[], is_output=[])
    assert len(policy.norms) == len(history)  # non-finite norms stay out of the history
    clone = AutoClip(percentile=10)
    clone.load_state_dict(copy.deepcopy(policy.state_dict()))
    assert list(clone.norms) == list(policy.norms)


def _zclip_reference(norms, alpha=0.97, z_thr=2.5, warmup=25):
    """Plain re-statement of ZClip: returns the norm each step was clipped to."""
    out, mean, var, warm = [], None, 0.0, []
    for g in norms:
        if mean is None:
            warm.append(g)
            if len(warm) == warmup:
                mean, var = float(np.mean(warm)), float(np.var(warm))
            out.append(g)
            continue
        std = math.sqrt(var)
        z = (g - mean) / (std + 1e-6)
        kept = mean + (z_thr ** 2 / z) * std if z > z_thr else g
        out.append(kept)
        new_mean = alpha * mean + (1 - alpha) * kept
        var = alpha * var + (1 - alpha) * (kept - mean) ** 2
        mean = new_mean
    return out


def test_zclip_follows_the_paper_and_clips_spikes():
    rng = np.random.default_rng(0)
    scales = list(1.0 + 0.05 * rng.standard_normal(40))
    scales[30] = 20.0  # a spike after warm-up
    policy = ZClip()
    kept_norms, totals = [], []
    for step, s in enumerate(scales):
        grads = _grads(seed=step, scale=float(s))
        total = _total(grads)
        totals.append(total)
        policy.clip_(grads, total, params=grads, is_output=[False] * 4)
        kept_norms.append(_total(grads))
    expected = _zclip_reference(totals)
    np.testing.assert_allclose(kept_norms, expected, rtol=1e-5)
    assert kept_norms[30] < totals[30] / 5  # the spike was clipped hard
    restored = ZClip()
    restored.load_state_dict(policy.state_dict())
    assert (restored.mean, restored.var) == (policy.mean, policy.var)


def test_make_policy_and_errors():
    assert make_policy(None) is None
    assert isinstance(make_policy(1.0), GlobalNorm)
    assert isinstance(make_policy("auto"), ZClip)
    with pytest.raises(ValueError, match="auto"):
        make_policy("global")
    with pytest.raises(TypeError, match="clip"):
        make_policy([1.0])
    for bad in (0, -1.0, math.inf):
        with pytest.raises(ValueError, match="max_norm"):
            GlobalNorm(bad)
    with pytest.raises(ValueError, match="limit"):
        Value(-1)
    with pytest.raises(ValueError, match="percentile"):
        AutoClip(percentile=0)
    with pytest.raises(ValueError, match="alpha"):
        ZClip(alpha=1.5)
    with pytest.raises(ValueError, match="clipping"):
        AGC(clipping=-0.1)
