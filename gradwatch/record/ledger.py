"""The ledger of a run: its id and header, the records kept, the run counters, the loggers."""

from __future__ import annotations

import datetime
import os
import uuid
import warnings
import weakref
from collections import Counter
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..capture.hooks import user_stacklevel
from .history import History, RecordRow
from .records import STATUS_CODES, StepRecord

__all__ = ["Ledger", "COUNTERS", "check_loggers", "run_header"]

COUNTERS = ("recorded", "clipped", "nonfinite", "skipped", "spikes", "amp_overflow")
"""The run-wide counters the ledger keeps (over every recorded step, not only those kept)."""


class Ledger:
    """Keeps the last ``history`` records (as columns), counts over the whole run and fans
    records out.

    Args:
        loggers: Callables receiving every `StepRecord`. One with a ``start_run(header)``
            method gets the run header before the run's first record and after a resume.
        history: How many records stay in memory.
        header: The run header without its run id and times (thresholds, layers, options).

    Raises:
        ValueError: A logger listed twice, or two loggers writing one file (a logger with a
            ``path``, as `JsonlLogger` and `CsvLogger` have): every record would be written
            twice. Sharing a file (or a logger with ``start_run``) with another open watch is
            warned about instead (see `check_loggers`).
    """

    def __init__(self, loggers: Sequence[Callable[[StepRecord], None]], history: int,
                 header: Mapping[str, Any]) -> None:
        self.loggers = tuple(loggers)
        check_loggers(self.loggers, [lg.loggers for lg in _OPEN])
        _OPEN.add(self)
        self._dropped: set[int] = set()  # loggers that raised: called no more (see `_call`)
        self.records = History(history)
        self.run: Counter[str] = Counter()
        self.run_id = uuid.uuid4().hex
        self._header = dict(header)
        self._started = False
        self._resume_step: int | None = None
        self._names: list[str] = []  # the history's layer columns, by name
        self._counts = np.zeros((0, len(STATUS_CODES) + 1), dtype=np.int64)  # + spikes
        self._restored: Counter[tuple[str, str]] = Counter()  # counts of a loaded state

    def header(self) -> dict[str, Any]:
        """The run header a logger receives (see `gradwatch.io.loggers`)."""
        return {"run_id": self.run_id,
                "started": datetime.datetime.now(datetime.timezone.utc).isoformat(
                    timespec="seconds"),
                **self._header, "resumed": self._resume_step is not None,
                "resume_step": self._resume_step}

    def name_columns(self, names: Sequence[str]) -> None:
        """Tells the ledger the name of each history column (the judge's table of names)."""
        self._names = list(names)

    @property
    def flags(self) -> Counter[tuple[str, str]]:
        """Recorded steps each (layer, status value or "spike") was flagged over the run."""
        out = Counter(self._restored)
        spike = len(STATUS_CODES)
        for col, code in zip(*np.nonzero(self._counts)):
            what = "spike" if code == spike else STATUS_CODES[code].value
            out[(self._names[col], what)] += int(self._counts[col, code])
        return out

    def publish(self, row: RecordRow) -> StepRecord:
        """Counts ``row``, keeps it and hands its record to every logger; returns the record."""
        if not self._started:
            self._started = True
            header = self.header()
            for logger in self.loggers:
                start = getattr(logger, "start_run", None)
                if callable(start):
                    self._call(logger, start, header)
        self.records.append(row)
        record = self.records.row_record(row)
        run = self.run
        run["recorded"] += 1
        run["clipped"] += record.clipped
        run["skipped"] += record.skipped
        run["spikes"] += record.spike
        run["amp_overflow"] += record.amp_overflow
        run["nonfinite"] += record.nonfinite
        cols, c = row.layout.columns, row.layers
        if row.layout.width > len(self._counts):
            more = row.layout.width - len(self._counts)
            self._counts = np.vstack([self._counts, np.zeros((more, self._counts.shape[1]),
                                                             dtype=np.int64)])
        if c.status.any():
            flagged = c.status != 0
            self._counts[cols[flagged], c.status[flagged]] += 1
        if c.spike.any():
            self._counts[cols[c.spike > 0], len(STATUS_CODES)] += 1
        for logger in self.loggers:
            self._call(logger, logger, record)
        return record

    def _call(self, logger: Any, fn: Callable[..., Any], *args: Any, closing: bool = False
              ) -> None:
        """``fn(*args)`` of ``logger``; if it raises, the run goes on without that logger (the
        optimizer step is done, the record is in the history) and a warning says so. A logger
        dropped so is still closed (``closing``)."""
        if id(logger) in self._dropped and not closing:
            return
        try:
            fn(*args)
        except Exception as e:  # a disk full or a logging service down must not stop training
            self._dropped.add(id(logger))
            name = getattr(logger, "__name__", type(logger).__name__)
            warnings.warn(f"gradwatch logger {name} raised {type(e).__name__}: {e}; it gets no "
                          f"further records in this run (they stay in watch.history; fix it and "
                          f"pass it to a new GradWatch).",
                          RuntimeWarning, stacklevel=user_stacklevel())

    closed = False  # (set by `close`: a watch closed on purpose, not garbage-collected)

    def close(self) -> None:
        _OPEN.discard(self)
        self.closed = True
        for logger in self.loggers:
            close = getattr(logger, "close", None)
            if callable(close):
                self._call(logger, close, closing=True)

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id,
                "counts": [[layer, what, n] for (layer, what), n in self.flags.items()],
                "run": dict(self.run)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores the counters and the run id (`mark_resumed` then tells the loggers)."""
        self._restored = Counter({(layer, what): int(n) for layer, what, n in state["counts"]})
        self._counts[:] = 0
        self.run = Counter({k: int(v) for k, v in state["run"].items()})
        self.run_id = str(state.get("run_id", self.run_id))

    def mark_resumed(self, step: int) -> None:
        """Loggers get a header saying the run resumed at ``step`` before the next record."""
        self._resume_step, self._started = step, False


_OPEN: weakref.WeakSet[Ledger] = weakref.WeakSet()
"""The ledgers of the watches not closed yet (a watch garbage-collected leaves it too)."""


def _file(logger: Any) -> str | None:
    """The file a logger writes (its ``path``, resolved), or None."""
    path = getattr(logger, "path", None)
    return os.path.realpath(os.fspath(path)) if isinstance(path, (str, os.PathLike)) else None


def check_loggers(loggers: Sequence[Any], others: Sequence[Sequence[Any]]) -> None:
    """Refuses a logger listed twice or two loggers on one file in ``loggers``; warns when a
    file, or a run-aware logger object, is also used by another open watch (``others``)."""
    files: dict[str, int] = {}
    for k, logger in enumerate(loggers):
        first = next(j for j, x in enumerate(loggers) if x is logger)
        if first != k:
            raise ValueError(f"Expected `loggers` to hold each logger once, but loggers[{first}] "
                             f"and loggers[{k}] are the same {logger!r}: it would get every "
                             f"record twice; list it once.")
        path = _file(logger)
        if path is not None and files.setdefault(path, k) != k:
            j = files[path]
            raise ValueError(f"Expected `loggers` to write each file once, but loggers[{j}] "
                             f"{loggers[j]!r} and loggers[{k}] {logger!r} both write "
                             f"{path!r}: every record would be written twice, mixed; keep one, "
                             f"or give the other another path.")
    shared = {_file(x): x for other in others for x in other if _file(x) is not None}
    mine = [x for other in others for x in other if callable(getattr(x, "start_run", None))]
    for k, logger in enumerate(loggers):
        path = _file(logger)
        if any(x is logger for x in mine):
            warnings.warn(f"loggers[{k}] {logger!r} is also a logger of another open "
                          f"GradWatch: one logger object writes one run at a time, so the "
                          f"records of both watches would be filed under the run that started "
                          f"last. Give each watch its own logger (e.g. JsonlLogger('run_g.jsonl')"
                          f" and JsonlLogger('run_d.jsonl')), or close() the other watch first.",
                          stacklevel=user_stacklevel())
        elif path is not None and path in shared:
            warnings.warn(f"loggers[{k}] {logger!r} writes {path!r}, which an open "
                          f"GradWatch also writes with {shared[path]!r}: the two runs' lines "
                          f"interleave in one file. Each record carries its run id, so read_runs "
                          f"and `gradwatch report` keep the runs apart (--list shows them); for a "
                          f"file per watch, give each its own path, or close() the other watch "
                          f"first.", stacklevel=user_stacklevel())


def run_header(thresholds: Any, layers: Sequence[Any], statistics: Sequence[Any],
               **options: Any) -> dict[str, Any]:
    """The run header without id and time: version, thresholds, layers and roles, options."""
    from .. import __version__

    return {"gradwatch": __version__, "thresholds": thresholds.to_dict(),
            "layers": [layer.name for layer in layers],
            "roles": {layer.name: layer.role for layer in layers}, "options": options,
            "statistics": [{"name": s.name, "label": s.label} for s in statistics]}
