"""Unit statistics of one activation output: units alive anywhere in the batch (rectifiers) or
outputs at a bound (saturating activations), as one small device reduction each."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .hooks import _bounds

__all__ = ["unit_count"]


def unit_count(kind: str, y: Tensor, module: nn.Module, conv: bool
               ) -> tuple[str, Tensor, int] | None:
    """(statistic, count as a device tensor, of how many) for the output ``y`` of an
    activation module of ``kind`` ("rectifier" or "saturating"): the units that fire on some
    input of the batch (channels of a convolution when ``conv``, else the last dimension), or
    the outputs within 1% of a bound, on an evenly strided sample of at most 4096; None for an
    empty or 0-d output."""
    y = y.detach()
    if y.dim() == 0 or not y.numel():
        return None
    if kind == "rectifier":
        unit_dim = 1 if conv else y.dim() - 1
        other = tuple(d for d in range(y.dim()) if d != unit_dim)
        top = y.amax(dim=other) if other else y
        return "dead_frac", torch.count_nonzero(top > 0), top.numel()
    lo, hi = _bounds(module)
    flat = y.reshape(-1)
    flat = flat[::-(-flat.numel() // 4096)]
    if lo == -math.inf:  # softmax-like: near one-hot
        sat = flat >= 0.99
    else:
        sat = (flat - (lo + hi) / 2).abs_() >= 0.49 * (hi - lo)
    return "sat_frac", torch.count_nonzero(sat), flat.numel()
