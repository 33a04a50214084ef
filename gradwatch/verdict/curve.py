"""`LossCurve`: the loss of the recorded steps in summary, for the rules that read its trend."""

from __future__ import annotations

import bisect
import math
from collections import deque
from typing import Any, Mapping

__all__ = ["LossCurve"]


class LossCurve:
    """The recorded steps' losses (when passed) as the rules read them: the first loss, the
    median of the first ``window`` ones (``start``), of the last ``window`` (``now``) and the
    lowest such median (``best``). Non-finite losses are left out; a loss at or below 0 (a
    log-likelihood) turns ratios off (``off``)."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.recent: deque[float] = deque(maxlen=window)
        self._sorted: list[float] = []  # ``recent`` in order, for its median without a sort
        self.first = self.start = self.now = self.best = math.nan
        self.off = False

    def add(self, loss: float | None) -> None:
        if loss is None or not math.isfinite(loss):
            return
        self.off = self.off or loss <= 0
        if math.isnan(self.first):
            self.first = loss
        if len(self.recent) == self.window:  # the oldest leaves the window
            del self._sorted[bisect.bisect_left(self._sorted, self.recent[0])]
        self.recent.append(loss)
        bisect.insort(self._sorted, loss)
        if len(self.recent) == self.window:
            self.now = _median(self._sorted)
            if math.isnan(self.start):
                self.start = self.now
            self.best = self.now if math.isnan(self.best) else min(self.best, self.now)

    @property
    def ready(self) -> bool:
        """Whether a window of positive losses was seen (the ratios mean something)."""
        return not self.off and not math.isnan(self.now)

    def fell(self, factor: float) -> bool:
        """Whether the loss now is at most ``factor`` times both its first value and its start."""
        return self.ready and self.now <= factor * min(self.first, self.start)

    def state_dict(self) -> dict[str, Any]:
        return {"recent": list(self.recent), "first": self.first, "start": self.start,
                "now": self.now, "best": self.best, "off": self.off}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.recent.clear()
        self.recent.extend(float(v) for v in state.get("recent", ()))
        self._sorted = sorted(self.recent)
        for key in ("first", "start", "now", "best"):
            setattr(self, key, float(state.get(key, math.nan)))
        self.off = bool(state.get("off", False))


def _median(ordered: list[float]) -> float:
    """`statistics.median` of an already sorted list (the same arithmetic)."""
    n = len(ordered)
    if n % 2:
        return ordered[n // 2]
    return (ordered[n // 2 - 1] + ordered[n // 2]) / 2
