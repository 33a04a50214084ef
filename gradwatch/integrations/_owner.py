"""What the trainer callbacks share: their GradWatch options, the running watch, its history."""

from __future__ import annotations

from typing import Any, Sequence

import warnings

from ..verdict.diagnosis import format_findings
from ..io.loggers import Logger
from ..monitor import GradWatch
from ..options import check_options
from ..record.records import Finding, StepRecord
from ..verdict.thresholds import Thresholds

__all__ = ["WatchOwner"]


class WatchOwner:
    """Holds the options a callback builds its `GradWatch` from, and the watch while it runs.
    The options are checked here, at construction, as `GradWatch` checks them (the same errors
    and messages), not when the fit starts."""

    def __init__(self, framework: str, *, thresholds: Thresholds | None, clip: Any,
                 activations: bool, every: int, on_nonfinite: str,
                 loggers: Sequence[Logger]) -> None:
        if on_nonfinite == "skip":
            raise ValueError(f"on_nonfinite='skip' is not supported with {framework} (it owns "
                             f"optimizer.step()); use 'warn', 'raise' or 'zero'.")
        every = check_options(thresholds, activations, every, on_nonfinite, loggers=loggers,
                              clip=clip)[0]  # (GradWatch's checks and messages, before the fit)
        self.options = dict(thresholds=thresholds, clip=clip, activations=activations,
                            every=every, on_nonfinite=on_nonfinite, loggers=tuple(loggers))
        self.watch: GradWatch | None = None
        self.history: tuple[StepRecord, ...] = ()
        self.diagnosis: list[Finding] = []

    def _close(self) -> None:
        """Closes the running watch (idempotent), keeping its history and diagnosis; warns with
        the diagnosis when it found something."""
        if self.watch is not None:
            self.history = self.watch.history
            self.diagnosis = self.watch.diagnose()
            self.watch.close()
            self.watch = None
            if self.diagnosis:
                warnings.warn("gradwatch: " + format_findings(self.diagnosis), UserWarning,
                              stacklevel=3)

    @staticmethod
    def metrics(record: StepRecord, prefix: str, layers: bool) -> dict[str, float]:
        """The numbers a trainer logs for one record: step-level values and, with ``layers``,
        every declared statistic per layer as ``{prefix}/{statistic}/{layer}``."""
        out = {f"{prefix}/total_norm": record.total_norm, f"{prefix}/clip_coef": record.clip_coef,
               f"{prefix}/flagged_layers": float(len(record.flagged)),
               f"{prefix}/findings": float(sum(not f.note for f in record.findings))}
        if layers:
            for name, stat in record.layers.items():
                out.update({f"{prefix}/{key}/{name}": value
                            for key, value in stat.numbers().items() if value is not None})
        return out

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(clip={self.options['clip']!r}, "
                f"every={self.options['every']})")
