"""Loggers: callables that receive every `StepRecord` (JSON lines and CSV), and a JSONL reader."""

from __future__ import annotations

import csv
import json
import os
import warnings
from pathlib import Path
from typing import IO, Callable, Iterator

from .records import StepRecord

__all__ = ["Logger", "JsonlLogger", "CsvLogger", "read_jsonl"]

Logger = Callable[[StepRecord], None]
"""Anything that takes a `StepRecord`; an optional ``close()`` is called by `GradWatch.close`."""


class _FileLogger:
    """Opens lazily in append mode, flushes after every record, closes idempotently."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._file: IO[str] | None = None

    def _open(self) -> IO[str]:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8", newline="")
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

    A crash or a kill loses at most the record being written; `read_jsonl` skips such a
    truncated last line. Non-finite numbers are written as ``NaN``/``Infinity`` (Python's json).
    """

    def __call__(self, record: StepRecord) -> None:
        f = self._open()
        f.write(json.dumps(record.to_dict(), separators=(",", ":")) + "\n")
        f.flush()


class CsvLogger(_FileLogger):
    """Appends one row per (step, layer) to ``path`` in long format and flushes per record.

    Columns: step, layer, norm, act_norm, status, spike, total_norm, clip_coef, first_nonfinite.
    """

    columns = ("step", "layer", "norm", "act_norm", "status", "spike",
               "total_norm", "clip_coef", "first_nonfinite")

    def __call__(self, record: StepRecord) -> None:
        new = not self.path.exists() or self.path.stat().st_size == 0
        f = self._open()
        writer = csv.writer(f)
        if new:
            writer.writerow(self.columns)
        for name, s in record.layers.items():
            writer.writerow([record.step, name, s.norm, "" if s.act_norm is None else s.act_norm,
                             s.status.value, int(s.spike), record.total_norm, record.clip_coef,
                             record.first_nonfinite or ""])
        f.flush()


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[StepRecord]:
    """Yields the records of a JSON-lines log written by `JsonlLogger`.

    A malformed *last* line (a run killed mid-write) is skipped with a warning; a malformed line
    anywhere else raises ``ValueError`` naming the line, since the log is then not ours or corrupt.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Expected `path` to be a JSON-lines log written by gradwatch, "
                                f"but {str(path)!r} does not exist.")
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield StepRecord.from_dict(json.loads(line))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            if i == len(lines):
                warnings.warn(f"{path}:{i}: skipped a truncated or malformed last line ({err}).",
                              stacklevel=2)
                return
            raise ValueError(f"{path}:{i}: not a gradwatch record ({err}); "
                             f"expected one JSON object per line as written by JsonlLogger.") from err


