"""The recorder: holds a measured step until its record can be formed (after the optimizer
step for update ratios, or a step later when the copy is in flight), then judges, records and
publishes it."""

from __future__ import annotations

import atexit
import math
import os
import weakref
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from .assemble import StepColumns, assemble, pending_step
from .ledger import Ledger
from ..measure.host import HostBatch, InFlight
from .records import StepRecord
from ..verdict.judge import Judge
from ..verdict.spikes import SpikeTracker
from ..verdict.thresholds import Thresholds

__all__ = ["Recorder", "Deferred"]


@dataclass
class Deferred:
    """A measured step whose host copy is still in flight (its record forms a step later)."""

    step: int
    outcome: Any  # the `gradwatch.measure.step.Outcome`
    updates: InFlight | None = None  # the copy of its update/weight sums, once started


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
        self.judge, self.spikes = Judge(thresholds), SpikeTracker()
        self.judge.uids(watched.names)  # the history's layer columns: the watched layers first
        self.thresholds, self.statistics = thresholds, statistics
        self._held: StepColumns | Deferred | None = None
        self._pid = os.getpid()  # (a forked child never writes its parent's held record)
        self._layouts: dict[Any, Any] = {}
        self.already: str | None = None  # where the last record's NaN/Inf already was

    @property
    def holding(self) -> bool:
        return self._held is not None

    def watched_changed(self) -> None:
        """The watched set was rebuilt: new layers get columns, layouts are redone."""
        self.judge.uids(self.watched.names)
        self._layouts.clear()

    def hold(self, step: int, out: Any) -> bool:
        """Keeps a measured step; True when its record must be formed at once (non-finite)."""
        if out.gradless:  # no gradient at all: a record that says so, formed at once
            self._held = StepColumns.gradless(step, self.watched, out.data, out.loss)
            return True
        if out.inflight is not None:  # the copy is in flight: the record forms at the next step
            self._held = Deferred(step, out)
            self._pid = os.getpid()
            _DEFERRED.add(self)  # written at a normal exit if the watch is left open
            return False
        self._held = pending_step(step, self.watched, out.data, out.got, out.present,
                                  self.statistics, out.coef, out.skipped, out.overflow)
        return not math.isfinite(out.got.total)

    def hold_overflow(self, step: int, loss: Any = None) -> None:
        """An iteration GradScaler skipped on overflow: a record with no layers (and the loss
        noted for it, a float or a 0-d tensor, or None)."""
        self._held = StepColumns.overflowed(step, len(self.watched.layers),
                                            None if loss is None else float(loss))

    def after_optimizer_step(self) -> bool:
        """Measures the update/weight ratios of the held step (without waiting if deferred);
        True when its record can be formed now."""
        updates, held = self.watched.updates, self._held
        if updates is None or held is None:
            return held is not None and not isinstance(held, Deferred)
        if isinstance(held, Deferred):
            sums = updates.after_device()
            if sums is not None:
                batch = HostBatch(sums.device)
                batch.add("sums", sums)
                held.updates = batch.start()
            return False
        _add_updates(held, updates.after(), self.watched.stepped)
        return True

    def flush(self) -> StepRecord | None:
        """Forms, judges and publishes the held step's record (None when nothing is held)."""
        p, self._held = self._held, None
        _DEFERRED.discard(self)
        if p is None:
            return None
        if isinstance(p, Deferred):
            out = p.outcome
            got = out.finish()
            cols = pending_step(p.step, self.watched, out.data, got, out.present,
                                self.statistics, out.coef, out.skipped, out.overflow)
            if p.updates is not None:
                flat = p.updates.result()["sums"]
                _add_updates(cols, self.watched.updates.ratios(
                    (flat[:len(flat) // 2], flat[len(flat) // 2:])), self.watched.stepped)
            p = cols
        self.already = p.already  # (the warning of a non-finite step reads it)
        row = assemble(p, self.watched, self.judge, self.spikes, self.thresholds,
                       self._layouts)
        self.ledger.name_columns(self.judge.names)
        return self.ledger.publish(row)

    def before_optimizer_step(self, measure_updates: bool = True) -> None:
        """Snapshots the sampled weights when a step is held (for its update ratios)."""
        if self._held is not None and self.watched.updates is not None and measure_updates:
            self.watched.updates.before()

    def state_dict(self) -> dict[str, Any]:
        return {**self.spikes.state_dict(list(self.judge.names)), **self.ledger.state_dict(),
                "judge": self.judge.state_dict(),
                "float64_next": self.watched.collector.reduce_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.judge.load_state_dict(state.get("judge", {}))
        self.judge.uids(self.watched.names)
        self.judge.uids(list(state["stats"]))
        self.spikes.load_state_dict(state, self.judge.names, self.watched.names)
        self.ledger.name_columns(self.judge.names)
        self.ledger.load_state_dict(state)
        self.watched.collector.load_reduce_state(state.get("float64_next", [False, False]))


_DEFERRED: weakref.WeakSet[Recorder] = weakref.WeakSet()
"""Recorders holding a deferred record (its copy in flight, written at the next step)."""


def _flush_at_exit() -> None:
    """Writes the deferred records of watches still open at a normal interpreter exit (a
    script that never closed its watch): else the last recorded step is lost. Runs on
    ``sys.exit``, the end of the script and an uncaught exception; not on SIGTERM with Python's
    default handler, SIGKILL or ``os._exit`` (no Python code runs then)."""
    for recorder in list(_DEFERRED):
        if recorder._pid == os.getpid():
            try:
                recorder.flush()
            except Exception:  # the interpreter is exiting: no traceback over the user's
                pass


atexit.register(_flush_at_exit)


def _add_updates(cols: StepColumns, ratios: np.ndarray | None, stepped: np.ndarray) -> None:
    """Puts the update/weight ratios (over the watched layers) beside the step's statistics:
    not measured (NaN) where a layer had no gradient or the optimizer does not step it
    (another optimizer may, at another time)."""
    if ratios is not None:
        cols.values["update_ratio"] = np.where(cols.has_grad & stepped, ratios, np.nan)
