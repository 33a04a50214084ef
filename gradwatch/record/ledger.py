"""The ledger of a run: its id and header, the records kept, the run counters, the loggers."""

from __future__ import annotations

import datetime
import uuid
from collections import Counter, deque
from typing import Any, Callable, Mapping, Sequence

from .records import Status, StepRecord

__all__ = ["Ledger", "COUNTERS", "run_header"]

COUNTERS = ("recorded", "clipped", "nonfinite", "skipped", "spikes", "amp_overflow")
"""The run-wide counters the ledger keeps (over every recorded step, not only those kept)."""


class Ledger:
    """Keeps the last ``history`` records, counts over the whole run and fans records out.

    Args:
        loggers: Callables receiving every `StepRecord`. One with a ``start_run(header)``
            method gets the run header before the run's first record and after a resume.
        history: How many records stay in memory.
        header: The run header without its run id and times (thresholds, layers, options).
    """

    def __init__(self, loggers: Sequence[Callable[[StepRecord], None]], history: int,
                 header: Mapping[str, Any]) -> None:
        self.loggers = tuple(loggers)
        self.records: deque[StepRecord] = deque(maxlen=history)
        self.run: Counter[str] = Counter()
        self.flags: Counter[tuple[str, str]] = Counter()  # (layer, status or "spike") -> steps
        self.run_id = uuid.uuid4().hex
        self._header = dict(header)
        self._started = False
        self._resume_step: int | None = None

    def header(self) -> dict[str, Any]:
        """The run header a logger receives (see `gradwatch.io.loggers`)."""
        return {"run_id": self.run_id,
                "started": datetime.datetime.now(datetime.timezone.utc).isoformat(
                    timespec="seconds"),
                **self._header, "resumed": self._resume_step is not None,
                "resume_step": self._resume_step}

    def publish(self, record: StepRecord) -> None:
        """Counts ``record``, keeps it and hands it to every logger."""
        if not self._started:
            self._started = True
            header = self.header()
            for logger in self.loggers:
                start = getattr(logger, "start_run", None)
                if callable(start):
                    start(header)
        self.records.append(record)
        run = self.run
        run["recorded"] += 1
        run["clipped"] += record.clipped
        run["skipped"] += record.skipped
        run["spikes"] += record.spike
        run["amp_overflow"] += record.amp_overflow
        run["nonfinite"] += record.nonfinite
        for name, status, spiked in record.marks():
            if status is not Status.OK:
                self.flags[(name, status.value)] += 1
            if spiked:
                self.flags[(name, "spike")] += 1
        for logger in self.loggers:
            logger(record)

    def close(self) -> None:
        for logger in self.loggers:
            close = getattr(logger, "close", None)
            if callable(close):
                close()

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id,
                "counts": [[layer, what, n] for (layer, what), n in self.flags.items()],
                "run": dict(self.run)}

    def load_state_dict(self, state: Mapping[str, Any], step: int) -> None:
        """Restores the counters and the run id; loggers get a resumed header next."""
        self.flags = Counter({(layer, what): int(n) for layer, what, n in state["counts"]})
        self.run = Counter({k: int(v) for k, v in state["run"].items()})
        self.run_id = str(state.get("run_id", self.run_id))
        self._resume_step, self._started = step, False


def run_header(thresholds: Any, layers: Sequence[Any], statistics: Sequence[Any],
               **options: Any) -> dict[str, Any]:
    """The run header without id and time: version, thresholds, layers and roles, options."""
    from .. import __version__

    return {"gradwatch": __version__, "thresholds": thresholds.to_dict(),
            "layers": [layer.name for layer in layers],
            "roles": {layer.name: layer.role for layer in layers}, "options": options,
            "statistics": [{"name": s.name, "label": s.label} for s in statistics]}
