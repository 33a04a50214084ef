"""Fixed-threshold policies: global norm, value, and per-tensor norm (Keras ``clipnorm``)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ._base import ClipPolicy, by_device_and_dtype, check_positive, clip_with_norm_

__all__ = ["GlobalNorm", "Value", "PerTensorNorm"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


class GlobalNorm(ClipPolicy):
    """Global-norm clipping (Pascanu, Mikolov & Bengio, "On the difficulty of training recurrent
    neural networks", ICML 2013), as ``torch.nn.utils.clip_grad_norm_``:
    every gradient g ← g·min(1, max_norm / (‖g‖ + 1e-6)), with ‖g‖ the global L2 norm.

    Bit-identical to ``clip_grad_norm_(params, max_norm)`` given the same total norm: the factor
    is formed in the gradients' dtype (see `clip_with_norm_`). gradwatch's total is torch's for
    float32, float64 and complex gradients and any mix of them; for float16/bfloat16 ones it is
    the more accurate float32 total (torch rounds the norms to that dtype), so the factor can
    differ there. ``clip=1.0`` is ``GlobalNorm(1.0)``.
    """

    def __init__(self, max_norm: float) -> None:
        self.max_norm = check_positive("max_norm", max_norm)

    def clip_(self, grads, total_norm, *, params, is_output):
        return clip_with_norm_(grads, self.max_norm, total_norm)

    def __repr__(self) -> str:
        return f"GlobalNorm(max_norm={self.max_norm:g})"


class Value(ClipPolicy):
    """Clamps every gradient entry to [-limit, limit], as ``torch.nn.utils.clip_grad_value_``."""

    def __init__(self, limit: float) -> None:
        self.limit = check_positive("limit", limit)

    @torch.no_grad()
    def clip_(self, grads, total_norm, *, params, is_output):
        for group in by_device_and_dtype(grads).values():
            torch._foreach_clamp_min_(group, -self.limit)
            torch._foreach_clamp_max_(group, self.limit)
        return None

    def __repr__(self) -> str:
        return f"Value(limit={self.limit:g})"


def _exact_norms(group: Sequence[Tensor]) -> Tensor:
    """L2 norm of each tensor, accumulated in float64: exact for entries from 1e-35 to 1e35 in
    any floating dtype (fp32 squares of such entries under- or overflow). A complex tensor's is
    that of |g| (the real tensor with its norm: a float64 reduction needs a real input)."""
    dense = [g.coalesce()._values() if g.is_sparse else g for g in group]
    dense = [d.abs() if d.is_complex() else d for d in dense]
    if all(d.numel() for d in dense) and not any(g.is_sparse for g in group):
        return torch.stack(torch._foreach_norm(dense, 2, dtype=torch.float64))
    return torch.stack([torch.linalg.vector_norm(d, dtype=torch.float64) for d in dense])


def _factor_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a per-tensor factor is rounded to: float64 for float64 and complex128
    gradients (real dtype float64, a factor as exact as their entries), else float32 (a real
    factor for complex64: it scales the real and imaginary parts alike)."""
    return torch.float64 if dtype.to_real() == torch.float64 else torch.float32


class PerTensorNorm(ClipPolicy):
    """Per-tensor norm clipping, as Keras' ``clipnorm`` (``keras.ops.clip_by_norm`` on each
    variable): every gradient tensor g ← g·c / max(‖g‖, c), with ‖g‖ that tensor's own L2 norm
    and no epsilon.

    The factor c / max(‖g‖, c) is formed in float64 from the float64-accumulated norm, rounded
    to float32 (float64 for float64 and complex128 gradients) and multiplied in, the product
    rounded once to the gradient's dtype; a complex tensor's norm is that of |g|, and its real
    factor scales the real and imaginary parts alike. A tensor with ‖g‖ ≤ c is left bit-for-bit
    unchanged (factor exactly 1); an all-zero tensor too. A tensor with an inf entry gets factor
    0 (its finite entries become 0, the inf ones NaN) and one with a NaN entry becomes all NaN,
    as in Keras. Never reads anything on the host (no sync). The Keras MNIST tutorial's
    ``clipnorm=1.0`` is ``PerTensorNorm(1.0)``.
    """

    def __init__(self, max_norm: float) -> None:
        self.max_norm = check_positive("max_norm", max_norm)

    @torch.no_grad()
    def clip_(self, grads, total_norm, *, params, is_output):
        for (_, dtype), group in by_device_and_dtype(grads).items():
            norms = _exact_norms(group)
            limit = torch.full_like(norms, self.max_norm)
            factors = (limit / torch.maximum(norms, limit)).to(  # true division: c / c == 1
                _factor_dtype(dtype))
            for g, factor in zip(group, factors.unbind()):
                if dtype in _LOW_PRECISION:  # product in float32, rounded once, on any device
                    g.copy_(g.float().mul_(factor))
                else:
                    g.mul_(factor)
        return None

    def __repr__(self) -> str:
        return f"PerTensorNorm(max_norm={self.max_norm:g})"
