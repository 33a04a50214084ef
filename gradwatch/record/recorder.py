"""The recorder: holds a measured step until its record can be formed (after the optimizer
step for update ratios, or a step later when the copy is in flight), then judges, records and
publishes it."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from .assemble import Pending, assemble, pending_step
from .ledger import Ledger
from ..measure.host import HostBatch
from .records import StepRecord
from ..verdict.judge import Judge
from ..io.runsummary import RunSummary, summarize
from ..verdict.spikes import SpikeTracker
from ..verdict.thresholds import Thresholds

__all__ = ["Recorder"]


class Recorder:
    """Turns measured steps into published records, in order, one at a time.

    Args:
        watched: The `gradwatch.capture.watched.WatchedSet`.
        ledger: Where records go (history, counters, loggers).
        thresholds: The watch's thresholds (for the rules' `Judge` and the `SpikeTracker`).
        statistics: The user's statistics.
    """

    def __init__(self, watched: Any, ledger: Ledger, thresholds: Thresholds,
                 statistics: Sequence[Any]) -> None:
        self.watched, self.ledger = watched, ledger
        self.judge, self.spikes = Judge(thresholds), SpikeTracker(watched.names)
        self.thresholds, self.statistics = thresholds, statistics
        self._held: Pending | tuple[Any, ...] | None = None
        self._layouts: dict[Any, Any] = {}

    @property
    def holding(self) -> bool:
        return self._held is not None

    def watched_changed(self) -> None:
        """The watched set was rebuilt: new layers get a spike history, layouts are redone."""
        self.spikes.add(self.watched.names)
        self._layouts.clear()

    def hold(self, step: int, out: Any) -> bool:
        """Keeps a measured step; True when its record must be formed at once (non-finite)."""
        if out.inflight is not None:  # the copy is in flight: the record forms at the next step
            self._held = (step, out)
            return False
        self._held = pending_step(step, self.watched, out.data, out.got, out.present,
                                  self.statistics, out.coef, out.skipped, out.overflow)
        return not math.isfinite(out.got.total)

    def hold_overflow(self, step: int) -> None:
        """An iteration GradScaler skipped on overflow: a record with no layers."""
        self._held = Pending(step, [], [], {}, {}, math.inf, 1.0, False, True)

    def after_optimizer_step(self) -> bool:
        """Measures the update/weight ratios of the held step (without waiting if deferred);
        True when its record can be formed now."""
        updates = self.watched.updates
        if updates is None or self._held is None:
            return self._held is not None and not isinstance(self._held, tuple)
        if isinstance(self._held, tuple):
            sums = updates.after_device()
            if sums is not None:
                batch = HostBatch(sums.device)
                batch.add("sums", sums)
                self._held = (*self._held, batch.start())
            return False
        self._add_updates(self._held, updates.after())
        return True

    def flush(self) -> StepRecord | None:
        """Forms, judges and publishes the held step's record (None when nothing is held)."""
        p, self._held = self._held, None
        if p is None:
            return None
        if isinstance(p, tuple):  # deferred: (step, Outcome) and maybe the update sums' copy
            step, out, *later = p
            got = out.finish()
            p = pending_step(step, self.watched, out.data, got, out.present, self.statistics,
                             out.coef, out.skipped, out.overflow)
            if later:
                flat = later[0].result()["sums"]
                self._add_updates(p, self.watched.updates.ratios(
                    (flat[:len(flat) // 2], flat[len(flat) // 2:])))
        w = self.watched
        record = assemble(p, w.layers, w.forward.head, self.judge, self.spikes,
                          self.thresholds, w.saturating, self._layouts, w.forward.repeated)
        self.ledger.publish(record)
        return record

    def before_optimizer_step(self, measure_updates: bool = True) -> None:
        """Snapshots the sampled weights when a step is held (for its update ratios)."""
        if self._held is not None and self.watched.updates is not None and measure_updates:
            self.watched.updates.before()

    def summarize(self, steps: int) -> RunSummary:
        """The run so far: kept records, run-wide counters and the diagnosis."""
        lg = self.ledger
        return summarize(lg.records, steps=steps, run=lg.run, flags=lg.flags,
                         findings=self.judge.diagnose())

    def state_dict(self) -> dict[str, Any]:
        return {**self.spikes.state_dict(), **self.ledger.state_dict(),
                "judge": self.judge.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any], step: int) -> None:
        self.spikes.load_state_dict(state)
        self.ledger.load_state_dict(state, step)
        self.judge.load_state_dict(state.get("judge", {}))

    @staticmethod
    def _add_updates(p: Pending, ratios: dict[int, float | None] | None) -> None:
        for i, ratio in (ratios or {}).items():
            if i in p.order:
                p.values.setdefault(i, {})["update_ratio"] = ratio
