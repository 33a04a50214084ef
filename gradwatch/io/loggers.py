"""Loggers: callables that receive every `StepRecord` (JSON lines and CSV); readers in `runlog`."""

from __future__ import annotations

import csv
import io
import json
import os
import warnings
from dataclasses import fields
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Mapping

from ..measure.statistics import BUILTIN
from ..record.records import StepRecord
from .logpaths import check_kind, check_log_path
from .runlog import HEADER_KEY, Run, read_jsonl, read_runs

__all__ = ["Logger", "JsonlLogger", "CsvLogger", "Run", "read_jsonl", "read_runs"]

Logger = Callable[[StepRecord], None]
"""Anything that takes a `StepRecord`. Optional: ``close()``, called by `GradWatch.close`, and
``start_run(header)``, called with the run header before the first record of a run and again
after `GradWatch.load_state_dict` (a resumed run)."""

_LAYER_FLAGS = ("status", "spike", "reason")
_STEP_KEYS = tuple(f.name for f in fields(StepRecord) if f.name not in ("step", "layers"))
"""Every step-level key a `StepRecord.to_dict()` can have (``findings`` only on some steps)."""
_HOOK_STATISTICS = tuple(s.name for s in BUILTIN if s.reads not in ("grad", "param"))
"""The per-layer statistics gradwatch's hooks measure (``act_norm``, ``update_ratio``, ...):
present on the steps and layers where they were measured."""


def _jsonable(obj: Any) -> Any:
    """Fallback for ``json.dumps``: numpy/torch scalars become numbers, anything else a string."""
    item = getattr(obj, "item", None)
    if callable(item):
        try:
            return item()
        except (TypeError, ValueError, RuntimeError):
            pass
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=str)
    return os.fspath(obj) if isinstance(obj, os.PathLike) else str(obj)


def _check_header(header: Any) -> dict[str, Any]:
    if not isinstance(header, Mapping):
        raise TypeError(f"Expected `header` to be a dict (the run header), but got "
                        f"{type(header).__name__}.")
    return dict(header)


class _FileLogger:
    """Opens lazily in append mode, flushes after every record, closes idempotently.

    On opening, a file whose last line was cut (a killed run) gets its line ended first, so the
    next record starts on a fresh line instead of being glued to the partial one.

    The constructor refuses (``ValueError``, naming the path and the fix) a path that can never
    be written (empty, a directory, under a file, in a folder that cannot be created; the
    missing folders are created now) and an existing file of the other kind (a CSV log given to
    `JsonlLogger`, a JSON-lines log to `CsvLogger`). Appending to a log of its own kind is fine.
    """

    _terminator = "\n"
    _example = "run.jsonl"
    _kind = "jsonl"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"Expected `path` to be a file path (str or os.PathLike), but got "
                            f"{type(path).__name__}; pass e.g. "
                            f"{type(self).__name__}({self._example!r}).")
        self.path = Path(path)
        self._file: IO[str] | None = None
        check_log_path(path, type(self).__name__, self._example)
        self._check_kind()

    def _check_kind(self) -> None:
        """Refuses an existing file of the other kind (again at the first write: another logger
        may have created the file since)."""
        check_kind(self.path, self._kind, type(self).__name__)

    def _open(self) -> IO[str]:
        if self._file is None:
            self._check_kind()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            last = b"\n"
            if self.path.is_file() and self.path.stat().st_size:
                with open(self.path, "rb") as f:
                    f.seek(-1, os.SEEK_END)
                    last = f.read(1)
            self._file = open(self.path, "a", encoding="utf-8", newline="")
            if last != b"\n":
                self._file.write("\n" if last == b"\r" else self._terminator)
        return self._file

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"


class JsonlLogger(_FileLogger):
    """Appends one JSON object per record to ``path`` and flushes it at once.

    ``start_run(header)`` (called by `GradWatch`) writes a line ``{"gradwatch_run": header}``
    that starts a run, and every record after it carries the header's ``run_id``, so several
    runs appended to one file stay apart (`read_runs`), also when they write at the same time
    (two watches logging to one file). A crash or a kill loses at most the line being written;
    the reader skips it, and the next open starts a fresh line. Non-finite numbers are written
    as ``NaN``/``Infinity`` (Python's json). Called without ``start_run`` (records logged
    directly), it writes records only, without a run id.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path)
        self._run_id: str | None = None

    def start_run(self, header: Mapping[str, Any]) -> None:
        """Writes the run header line (every key as given); the records after it carry its
        ``run_id``."""
        header = _check_header(header)
        rid = header.get("run_id")
        self._write({HEADER_KEY: header})
        self._run_id = rid if isinstance(rid, str) and rid else None

    def __call__(self, record: StepRecord) -> None:
        data = _record_dict(record)
        if self._run_id is not None:
            data["run_id"] = self._run_id
        self._write(data)

    def _write(self, obj: Mapping[str, Any]) -> None:
        line = json.dumps(obj, separators=(",", ":"), default=_jsonable) + "\n"
        f = self._open()
        f.write(line)
        f.flush()


def _record_dict(record: Any) -> dict[str, Any]:
    """``record.to_dict()``, or a clear error naming ``record`` when it is not a StepRecord (a
    plain dict would fail with "'dict' object has no attribute 'to_dict'")."""
    if not callable(getattr(record, "to_dict", None)):
        raise TypeError(f"Expected `record` to be a gradwatch StepRecord (what GradWatch passes "
                        f"its loggers), but got {type(record).__name__}"
                        + ("; rebuild it with StepRecord.from_dict(d)"
                           if isinstance(record, Mapping) else "") + ".")
    return record.to_dict()


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, default=_jsonable)
    return v


def _layer_keys(data: Mapping[str, Any], statistics: list[str]) -> list[str]:
    """The per-layer columns: norm, act_norm, every statistic a layer can have (the hooks', the
    run's declared ``statistics`` and any other key of ``data``'s layers), then the flags."""
    layers: Mapping[str, Mapping[str, Any]] = data.get("layers") or {}
    keys = dict.fromkeys(["norm", *_HOOK_STATISTICS, *statistics,
                          *(k for s in layers.values() for k in s)])
    return [k for k in keys if k not in _LAYER_FLAGS] + list(_LAYER_FLAGS)


def _rows(data: Mapping[str, Any], run_id: str | None, layer_keys: list[str]
          ) -> Iterator[dict[str, Any]]:
    """Long-format rows of one ``StepRecord.to_dict()``: one per layer, every key written (a
    step-level key that is also a layer key, ``spike``, gets a ``step_`` prefix)."""
    layers: Mapping[str, Mapping[str, Any]] = data.get("layers") or {}
    keys = list(dict.fromkeys([*layer_keys, *(k for s in layers.values() for k in s)]))
    taken = {"step", "layer", *keys}
    step_level = {(f"step_{k}" if k in taken else k): _cell(v)
                  for k, v in data.items() if k not in ("step", "layers")}
    if run_id is not None:
        step_level["run_id"] = run_id
    for name, stat in (layers.items() if layers else [("", {})]):
        row: dict[str, Any] = {"step": data.get("step"), "layer": name}
        row.update((k, _cell(stat.get(k))) for k in keys)
        row.update(step_level)
        yield row


def _new_columns(data: Mapping[str, Any], run_id: str | None, layer_keys: list[str]
                 ) -> list[str]:
    """The header of a new file: the columns of ``data``'s rows and of every step-level key a
    record can have (``findings``, ``loss``, ...), in the record's order, run_id last."""
    full = {**data, **{k: None for k in _STEP_KEYS if k not in data}}
    return list(next(_rows(full, run_id, layer_keys)))


def _statistic_names(header: Mapping[str, Any]) -> list[str]:
    """The names in a run header's ``statistics`` (``[{"name": ..., "label": ...}, ...]``)."""
    stats = header.get("statistics")
    if not isinstance(stats, (list, tuple)):
        return []
    return [s["name"] for s in stats if isinstance(s, Mapping) and isinstance(s.get("name"), str)]


class CsvLogger(_FileLogger):
    """Appends one row per (step, layer) to ``path`` in long format and flushes per record.

    A record's rows go to the file in one write (a 400-layer step is ~60 KB: written row by
    row, the file buffer let it out in 8 KB pieces, and a kill between two of them left a step
    with only some of its layers, every row complete, nothing to tell it was cut). A crash or a
    kill loses at most the step being written.

    A new file's header has every column a record of the run can have: step, layer, the layer's
    statistics (norm, act_norm, the ones gradwatch's hooks measure such as update_ratio and
    dead_frac, the run's own statistics from ``start_run``), status, spike, reason, then the
    step-level values (total_norm, clip_coef, first_nonfinite, nonfinite_origin, step_spike,
    skipped, amp_overflow, loss, findings and held as JSON) and, after ``start_run``, run_id.
    Booleans are written 0/1, missing values (a statistic not measured at a step) empty.
    Appending to an existing file keeps that file's columns; keys it has no column for (a file
    written by an older gradwatch or another run) are dropped with a warning.
    """

    _terminator = "\r\n"  # csv's own line ending
    _example = "run.csv"
    _kind = "csv"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path)
        self._columns: list[str] | None = None
        self._layer_keys: list[str] = []
        self._statistics: list[str] = []
        self._appending = False
        self._run_id: str | None = None
        self._dropped: set[str] = set()

    def start_run(self, header: Mapping[str, Any]) -> None:
        """Remembers the run id (rows then carry a ``run_id`` column, when the file has one) and
        the run's statistics (a new file gets a column for each)."""
        header = _check_header(header)
        rid = header.get("run_id")
        self._run_id = None if rid is None else str(rid)
        self._statistics = _statistic_names(header)

    def _existing_columns(self) -> list[str] | None:
        self._check_kind()
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return None
        with open(self.path, encoding="utf-8", newline="") as f:
            return next(csv.reader(f), None) or None

    def __call__(self, record: StepRecord) -> None:
        data = _record_dict(record)
        new_file = False
        if self._columns is None:
            self._layer_keys = _layer_keys(data, self._statistics)
            self._columns = self._existing_columns()
            self._appending = self._columns is not None
            if self._columns is None:
                self._columns, new_file = _new_columns(data, self._run_id, self._layer_keys), True
        rows = list(_rows(data, self._run_id, self._layer_keys))
        missing = set(rows[0]) - set(self._columns) - self._dropped
        extra = {k for k in missing if any(row[k] != "" for row in rows)}  # a value is lost
        if extra:
            self._dropped |= extra
            self._warn_dropped(sorted(extra))
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, self._columns, restval="", extrasaction="ignore")
        if new_file:
            writer.writeheader()
        writer.writerows(rows)
        f = self._open()
        f.write(text.getvalue())  # one write: whole steps reach the file, or none of a step
        f.flush()

    def _warn_dropped(self, keys: list[str]) -> None:
        if self._appending:
            why = ("in the header of the file it appends to (written by an earlier run or an "
                   "older gradwatch)")
            fix = "Log to a new file to keep them."
        else:
            why = ("in the header it wrote from the first record (the run header did not "
                   "declare them)")
            fix = ("Call start_run(header) with the run's \"statistics\" before the first record "
                   "to keep them.")
        warnings.warn(f"{self!r}: no column for {keys} {why}; those values are not written. "
                      f"{fix}", stacklevel=3)
