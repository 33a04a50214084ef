"""Adaptive gradient clipping, unit-wise (Brock, De, Smith & Simonyan, "High-Performance
Large-Scale Image Recognition Without Normalization", ICML 2021)."""

from __future__ import annotations

import torch
from torch import Tensor

from ._base import ClipPolicy, check_flag, check_positive

__all__ = ["AGC"]


def _unitwise_norm(x: Tensor) -> Tensor:
    """Norm of each output unit (row over its fan-in); biases and scalars as one unit.

    Accumulated in float64 (complex128 for complex ``x``): float32's squares overflow for
    entries past ~1.8e19 and its norms past 3.4e38, where a float32 norm of inf would make the
    unit's factor 0 and zero it."""
    wide = torch.complex128 if x.is_complex() else torch.float64
    if x.ndim <= 1:
        return torch.linalg.vector_norm(x, dtype=wide)
    return torch.linalg.vector_norm(x, dim=tuple(range(1, x.ndim)), keepdim=True, dtype=wide)


class AGC(ClipPolicy):
    """Adaptive gradient clipping (NFNets), unit-wise.

    For each unit i: if ‖G_i‖ / max(‖W_i‖, eps) > clipping,
    G_i ← clipping·max(‖W_i‖, eps)/‖G_i‖·G_i.
    The paper uses clipping=0.01 at batch 4096 (larger for smaller batches) and does not clip the
    final linear layer: ``skip_output=True`` leaves the output-side layer alone. The norms and
    the factor are formed in float64 and the factor rounded to the gradient's dtype.
    """

    def __init__(self, clipping: float = 0.01, eps: float = 1e-3, *,
                 skip_output: bool = True) -> None:
        self.clipping = check_positive("clipping", clipping)
        self.eps = check_positive("eps", eps)
        self.skip_output = check_flag("skip_output", skip_output)

    @torch.no_grad()
    def clip_(self, grads, total_norm, *, params, is_output):
        for g, p, out in zip(grads, params, is_output):
            if (out and self.skip_output) or g.is_sparse or g.numel() == 0:
                continue
            max_norm = _unitwise_norm(p.detach()).clamp_(min=self.eps).mul_(self.clipping)
            g_norm = _unitwise_norm(g)
            factor = (max_norm / g_norm.clamp(min=1e-6)).clamp_(max=1.0)
            g.mul_(factor.to(g.dtype))
        return None

    def __repr__(self) -> str:
        return f"AGC(clipping={self.clipping:g}, eps={self.eps:g}, skip_output={self.skip_output})"
