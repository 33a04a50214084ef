"""Float64 norms whose own squares over- or underflow (entries past ~1e154 or below ~1e-154),
against Python's scaled ``math.hypot``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gradwatch.measure.norms import (SAFE64, exact_norm, exact_norms, per_tensor_norms,
                                     repair_norms, scaled_norm64, tensor_norm)
from gradwatch.measure.split import split_norms


def _hypot(t: torch.Tensor) -> float:
    """The reference: Python's ``math.hypot`` scales internally (no square over- or underflows)."""
    values = (t.to_dense() if t.is_sparse else t).detach()
    if values.is_complex():
        values = values.abs()
    return math.hypot(*values.flatten().tolist())


def _randn64(scale: float, shape=(7, 5), seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float64) * scale


@pytest.mark.parametrize("scale", [1e200, 1e300, 1e-200, 1e-300, 1e-310])
def test_float64_norms_are_right_where_float64_squares_overflow_or_underflow(scale):
    """Issues r_f64_overflow / r_f64_underflow: the float64 norm was inf or 0 for finite,
    nonzero entries; repair_norms now rescales it (relative error ≤ 1e-12)."""
    grads = [_randn64(scale), torch.full((10,), scale, dtype=torch.float64)]
    raw = per_tensor_norms(grads).tolist()
    assert all(v == math.inf or v < SAFE64 for v in raw)  # what needed the rescue
    expected = [_hypot(g) for g in grads]
    assert 0 < min(expected) and max(expected) < math.inf
    for got in (repair_norms(raw, grads), exact_norms(grads), [exact_norm(g) for g in grads],
                [tensor_norm(g) for g in grads], [scaled_norm64(g) for g in grads]):
        assert got == pytest.approx(expected, rel=1e-12, abs=0)


def test_float64_rescue_keeps_nan_inf_zero_and_empty():
    """A genuine NaN entry still gives NaN, an inf entry inf, all zeros 0 (nothing to scale)."""
    nan = torch.tensor([1e200, math.nan, 1.0], dtype=torch.float64)
    inf = torch.tensor([1e200, -math.inf, 1e-200], dtype=torch.float64)
    both = torch.tensor([math.inf, math.nan], dtype=torch.float64)
    zero, empty = torch.zeros(4, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
    grads = [nan, inf, both, zero, empty]
    fixed = repair_norms(per_tensor_norms(grads).tolist(), grads)
    assert math.isnan(fixed[0]) and fixed[1] == math.inf and math.isnan(fixed[2])
    assert fixed[3:] == [0.0, 0.0]
    assert math.isnan(scaled_norm64(nan)) and scaled_norm64(inf) == math.inf
    assert scaled_norm64(zero) == 0.0 and scaled_norm64(empty) == 0.0
    assert tensor_norm(inf) == math.inf and math.isnan(tensor_norm(nan))


def test_float64_rescue_in_a_mixed_batch_touches_only_the_suspect_float64_tensors():
    """fp32 and healthy float64 norms keep the values they had; only float64 tensors outside
    [SAFE64, inf) are rescaled."""
    grads = [torch.full((6,), 1e30), _randn64(1e250, seed=1), _randn64(3.0, seed=2),
             _randn64(1e-250, (40,), seed=3), _randn64(1e-20, seed=4)]
    raw = per_tensor_norms(grads).tolist()
    fixed = repair_norms(raw, grads)
    assert fixed == pytest.approx([_hypot(g) for g in grads], rel=1e-12, abs=0)
    assert fixed[2] == raw[2]  # healthy: untouched
    plain64 = torch.linalg.vector_norm(grads[4]).item()  # below TINY, not below SAFE64
    assert fixed[4] == plain64 and exact_norms(grads[4:])[0] == plain64


def test_split_norms_rescue_float64_tensors_marked_exact():
    """The tensors `split_norms` reduces in float64 at once (tiny at the last step) are
    rescued too."""
    grads = [_randn64(1e-200), _randn64(2.0, seed=1), _randn64(1e200, seed=2)]
    exact = np.array([True, False, True])
    got = split_norms(grads, exact).tolist()
    assert got == pytest.approx([_hypot(g) for g in grads], rel=1e-12, abs=0)


def test_complex128_and_sparse_float64_gradients_are_rescued():
    z = torch.complex(_randn64(1e200), _randn64(1e200, seed=1))
    i = torch.tensor([[0, 0, 2], [1, 1, 0]])  # (0, 1) twice: coalescing sums them
    sparse = torch.sparse_coo_tensor(i, torch.tensor([3e200, 1e200, 3e200],
                                                     dtype=torch.float64), (3, 3))
    grads = [z, sparse]
    expected = [_hypot(z), math.hypot(4e200, 3e200)]
    assert exact_norms(grads) == pytest.approx(expected, rel=1e-12, abs=0)
    assert repair_norms([math.inf, math.inf], grads) == pytest.approx(expected, rel=1e-12)


def test_device_norms64_rescue_without_reading_the_host():
    """The sync-free variant (for `device_total`) gives `exact_norms`' values, NaN/inf/zero
    kept, with no ``.item()`` (checked under CUDA's sync debug mode where a GPU is present)."""
    from gradwatch.measure.norms import device_norms64

    grads = [_randn64(1e200), torch.full((6,), 1e30), _randn64(1e-200, seed=1),
             _randn64(2.0, seed=2), torch.tensor([1e200, math.nan], dtype=torch.float64),
             torch.tensor([1e200, math.inf], dtype=torch.float64),
             torch.zeros(3, dtype=torch.float64)]
    if torch.cuda.is_available():
        grads = [g.cuda() for g in grads]
        torch.cuda.set_sync_debug_mode("error")
    try:
        norms = device_norms64(grads)
    finally:
        if torch.cuda.is_available():
            torch.cuda.set_sync_debug_mode("default")
    got = norms.tolist()
    assert got[:4] == pytest.approx([_hypot(g) for g in grads[:4]], rel=1e-12, abs=0)
    assert math.isnan(got[4]) and got[5] == math.inf and got[6] == 0.0
    assert got[3] == torch.linalg.vector_norm(grads[3]).item()  # healthy: the plain norm
    assert device_norms64(grads[:1] + [torch.zeros(0)]).tolist()[1] == 0.0
