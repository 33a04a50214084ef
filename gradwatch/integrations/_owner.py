"""What the trainer callbacks share: their GradWatch options, the running watch, its history."""

from __future__ import annotations

from typing import Any, Sequence

from ..loggers import Logger
from ..monitor import GradWatch
from ..records import StepRecord
from ..thresholds import Thresholds

__all__ = ["WatchOwner"]


class WatchOwner:
    """Holds the options a callback builds its `GradWatch` from, and the watch while it runs."""

    def __init__(self, framework: str, *, thresholds: Thresholds | None, clip: Any,
                 activations: bool, every: int, on_nonfinite: str,
                 loggers: Sequence[Logger]) -> None:
        if on_nonfinite == "skip":
            raise ValueError(f"on_nonfinite='skip' is not supported with {framework} (it owns "
                             f"optimizer.step()); use 'warn', 'raise' or 'zero'.")
        self.options = dict(thresholds=thresholds, clip=clip, activations=activations,
                            every=every, on_nonfinite=on_nonfinite, loggers=tuple(loggers))
        self.watch: GradWatch | None = None
        self.history: tuple[StepRecord, ...] = ()

    def _close(self) -> None:
        """Closes the running watch (idempotent), keeping its history."""
        if self.watch is not None:
            self.history = self.watch.history
            self.watch.close()
            self.watch = None

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(clip={self.options['clip']!r}, "
                f"every={self.options['every']})")
