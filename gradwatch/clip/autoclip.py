"""AutoClip (Seetharaman, Wichern, Pardo & Le Roux, "AutoClip: Adaptive Gradient Clipping for
Source Separation Networks", MLSP 2020)."""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np

from ..verdict.scalars import as_int, as_real
from ._base import ClipPolicy, check_norms, clip_with_norm_

__all__ = ["AutoClip"]


class AutoClip(ClipPolicy):
    """Clips at the p-th percentile of the history of global norms, the current one included
    (numpy's linear interpolation), as the paper's code does; p=10 is its recommendation.
    Non-finite norms never enter the history, which keeps the last ``history`` norms; a
    gradient with a non-finite norm is scaled as ``clip_grad_norm_`` would (finite entries to 0
    for inf, NaN everywhere for NaN)."""

    needs_host_norm = True

    def __init__(self, percentile: float = 10.0, *, history: int = 10_000) -> None:
        self.percentile = as_real("percentile", percentile, "in (0, 100]",
                                  lambda v: 0 < v <= 100)
        history = as_int("history", history)
        self.norms: deque[float] = deque(maxlen=history)

    def clip_(self, grads, total_norm, *, params, is_output):
        total = float(total_norm)
        if not math.isfinite(total):
            return clip_with_norm_(grads, 1.0, total)  # as torch does with a non-finite norm
        self.norms.append(total)
        max_norm = float(np.percentile(np.fromiter(self.norms, float), self.percentile))
        if max_norm <= 0:
            return 1.0
        return clip_with_norm_(grads, max_norm, total)

    def state_dict(self) -> dict[str, Any]:
        return {"norms": list(self.norms)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        norms = check_norms("AutoClip state['norms']", state["norms"], "AutoClip")
        self.norms.clear()
        self.norms.extend(norms)

    def __repr__(self) -> str:
        return f"AutoClip(percentile={self.percentile:g}, seen={len(self.norms)})"
