"""Unit statistics of one activation output: units that fired on some input of a window of
measured steps (rectifiers) or outputs at a bound (saturating activations), as a few small
device operations each."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .hooks import _bounds

__all__ = ["unit_count", "UnitWindow", "UNIT_EVERY", "UNIT_WINDOW"]

UNIT_EVERY = 4
"""Dead and saturated units and update/weight ratios are measured on every 4th recorded step
(step // every % 4 == 0; a few small operations per activation module, two copies of sampled
weights); the rules that read them judge over the steps they were measured on."""

UNIT_WINDOW = 4
"""A rectifier's unit is dead when it fired on none of the inputs of the last 4 measured steps
(the forwards of every 4th recorded step, `UNIT_EVERY`; of those measured so far at the start):
one small batch where a unit happens to be silent (a classifier layer at batch 8) is not a dead
unit. The dead-units rule holds on `Thresholds.persistence` (4) measured steps in a row, so its
first verdict already reads a full window."""


class UnitWindow:
    """Per activation call site (layer, activation module, output shape): the index of the
    measured step at which each unit last fired, a device tensor updated in place (no host
    synchronisation), so that a unit counts as alive when it fired on any input of the last
    ``span`` measured steps (of the steps measured so far, at the start of a run)."""

    def __init__(self, span: int = UNIT_WINDOW) -> None:
        self.span = span
        self.index = 0  # the measured step now (set before each measured forward)
        self._last: dict[tuple, Tensor] = {}

    def alive(self, site: tuple[int, int], top: Tensor) -> Tensor:
        """The count of units alive within the window (a 0-d device tensor), given ``top``, the
        per-unit largest output of this step's batch at call ``site``."""
        k, key = self.index, (*site, *top.shape)
        last = self._last.get(key)
        if last is None:  # first seen: no unit fired yet
            last = torch.full(top.shape, k - self.span, dtype=torch.int64, device=top.device)
        elif last.device != top.device:  # the model moved (or a resumed window)
            last = last.to(top.device)
        self._last[key] = last
        last.masked_fill_(top > 0, k)
        return torch.count_nonzero(last > k - self.span)

    def clear(self) -> None:
        self._last.clear()

    def state_dict(self) -> list[list]:
        """Each call site's key and its units' last firing (host copies: `GradWatch.state_dict`
        calls it between steps, never in a hot loop)."""
        return [[list(key), last.cpu().tolist()] for key, last in self._last.items()]

    def load_state_dict(self, sites: list[list]) -> None:
        self.clear()
        for key, last in sites:
            key = tuple(int(v) for v in key)
            self._last[key] = torch.tensor(last, dtype=torch.int64).reshape(key[2:])


def unit_count(kind: str, y: Tensor, module: nn.Module, conv: bool, window: UnitWindow,
               site: tuple[int, int]) -> tuple[str, Tensor, int] | None:
    """(statistic, count as a device tensor, of how many) for the output ``y`` of an
    activation module of ``kind`` ("rectifier" or "saturating"): the units that fired on some
    input of the last measured steps (`UnitWindow`; channels of a convolution when ``conv``,
    else the last dimension), or the outputs within 1% of a bound, on an evenly strided sample
    of at most 4096; None for an empty or 0-d output."""
    y = y.detach()
    if y.dim() == 0 or not y.numel():
        return None
    if kind == "rectifier":
        unit_dim = 1 if conv else y.dim() - 1
        other = tuple(d for d in range(y.dim()) if d != unit_dim)
        top = y.amax(dim=other) if other else y
        return "dead_frac", window.alive(site, top), top.numel()
    lo, hi = _bounds(module)
    flat = y.reshape(-1)
    flat = flat[::-(-flat.numel() // 4096)]
    if lo == -math.inf:  # softmax-like: near one-hot
        sat = flat >= 0.99
    else:
        sat = (flat - (lo + hi) / 2).abs_() >= 0.49 * (hi - lo)
    return "sat_frac", torch.count_nonzero(sat), flat.numel()
