"""Reading JSON-lines logs back: runs (header + records), resumed runs, and bad lines skipped."""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Mapping, Sequence

from .logschema import HEADER_KEY, check_header, check_record_dict
from ..record.records import StepRecord

__all__ = ["HEADER_KEY", "LineProblem", "LogFormatError", "LogScan", "Run", "check_record_dict",
           "describe_problem", "read_jsonl", "read_runs", "scan_lines", "scan_log", "select_run"]

_MAX_WARNINGS = 10


class LogFormatError(ValueError):
    """The file as a whole is not a gradwatch log (e.g. not UTF-8 text)."""


@dataclass(frozen=True)
class LineProblem:
    """A line that was skipped: ``kind`` is "unreadable" (not JSON: cut by a kill) or "schema"."""

    line: int
    kind: Literal["unreadable", "schema"]
    message: str


@dataclass(frozen=True)
class Run:
    """One run of a log: its header (``None`` for logs written without one) and its records.

    Attributes:
        index: Position in the file's runs (0 first), in the order the runs started.
        header: The ``start_run`` header as written (keys kept as they are), or ``None``.
        records: The run's records in step order; for a resumed run, the records re-done after
            the resume replace the ones from before it.
        resumes: Headers of the resumes of this run, in file order.
        superseded: Records from before a resume that a resume replaced (steps >= its
            ``resume_step``): training state was rolled back to the checkpoint past them.
        line: The line number (1-based) where the run starts.
    """

    index: int
    header: Mapping[str, Any] | None
    records: tuple[StepRecord, ...]
    resumes: tuple[Mapping[str, Any], ...] = ()
    superseded: tuple[StepRecord, ...] = ()
    line: int = 1

    @property
    def run_id(self) -> str | None:
        rid = (self.header or {}).get("run_id")
        return rid if isinstance(rid, str) else None

    @property
    def thresholds(self) -> Mapping[str, Any]:
        """The thresholds of the latest header of the run (``{}`` when none were logged)."""
        for h in (*reversed(self.resumes), self.header or {}):
            if isinstance(h.get("thresholds"), Mapping):
                return h["thresholds"]
        return {}

    def describe(self) -> str:
        """One line: index, id, start time, records and steps, resumes."""
        h = self.header or {}
        parts = [f"run {self.index}",
                 f"id {self.run_id[:8]}" if self.run_id else "no header (older gradwatch or "
                                                            "a logger called directly)"]
        if isinstance(h.get("started"), str):
            parts.append(f"started {h['started']}")
        n = len(self.records)
        steps = f", steps {self.records[0].step}..{self.records[-1].step}" if n else ""
        parts.append(f"{n} record{'s' * (n != 1)}{steps}")
        if self.resumes:
            at = ", ".join(str(r.get("resume_step")) for r in self.resumes)
            k = len(self.superseded)
            parts.append(f"resumed {len(self.resumes)}x (at step {at}; "
                         f"{k} record{'s' * (k != 1)} replaced)")
        return " · ".join(parts)

    def __repr__(self) -> str:
        return f"Run({self.describe()})"


@dataclass
class LogScan:
    """Everything read from a log: the runs, the skipped lines, and notes on how runs were split."""

    path: Path
    runs: list[Run]
    problems: list[LineProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    lines: int = 0


class _Builder:
    """A run being assembled while the file is read."""

    def __init__(self, header: Mapping[str, Any] | None, line: int) -> None:
        self.header, self.line = header, line
        self.records: list[StepRecord] = []
        self.resumes: list[Mapping[str, Any]] = []
        self.superseded: list[StepRecord] = []

    def cut(self, step: int) -> None:
        """Drops the records at ``step`` and after (a resume re-does them)."""
        keep = [r for r in self.records if r.step < step]
        self.superseded += [r for r in self.records if r.step >= step]
        self.records = keep

    def build(self, index: int) -> Run:
        return Run(index, self.header, tuple(self.records), tuple(self.resumes),
                   tuple(self.superseded), self.line)


def _lines(raw: bytes) -> Iterator[tuple[int, bytes]]:
    for i, line in enumerate(raw.split(b"\n"), start=1):
        if line.strip():
            yield i, line


def scan_lines(lines: Iterable[tuple[int, bytes]], path: Path) -> LogScan:
    """Assembles runs from numbered lines; the core of `scan_log` (see `read_runs`)."""
    scan = LogScan(path, [])
    builders: list[_Builder] = []
    by_id: dict[str, _Builder] = {}
    current: _Builder | None = None
    last_step: int | None = None  # of the current segment (since the last header)
    pending_cut = False  # the first record after a resume also cuts at its own step
    decode_errors = 0
    for i, raw in lines:
        scan.lines = i
        try:
            obj = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            decode_errors += 1
            scan.problems.append(LineProblem(i, "unreadable", "not UTF-8 text"))
            continue
        except ValueError as err:
            scan.problems.append(LineProblem(i, "unreadable", f"not valid JSON: {err}"))
            continue
        if isinstance(obj, dict) and HEADER_KEY in obj:
            header = obj[HEADER_KEY]
            why = check_header(header)
            if why:
                scan.problems.append(LineProblem(i, "schema", why))
                header = header if isinstance(header, dict) else {}
            rid = header.get("run_id")
            if isinstance(rid, str) and rid in by_id:
                current = by_id[rid]
                current.resumes.append(header)
                k = header.get("resume_step")
                if isinstance(k, int) and not isinstance(k, bool):
                    current.cut(k)
                pending_cut = True
            else:
                current = _Builder(header, i)
                builders.append(current)
                if isinstance(rid, str) and rid:
                    by_id[rid] = current
                pending_cut = False
            last_step = None
            continue
        why = check_record_dict(obj)
        if why is None:
            try:
                record = StepRecord.from_dict(obj)
            except (ValueError, TypeError, KeyError, AttributeError) as err:
                why = f"StepRecord.from_dict rejected it ({err})"
        if why:
            scan.problems.append(LineProblem(i, "schema", why))
            continue
        if current is None or (last_step is not None and record.step <= last_step):
            if current is not None:
                scan.notes.append(f"{path}:{i}: step {record.step} follows step {last_step} "
                                  f"without a run header; read as the start of a new run "
                                  f"(a log appended to by a second run?)")
            current = _Builder(None, i)
            builders.append(current)
            pending_cut = False
        if pending_cut:
            current.cut(record.step)
            pending_cut = False
        current.records.append(record)
        last_step = record.step
    if decode_errors and not builders:
        raise LogFormatError(f"{path}: not a UTF-8 text file ({decode_errors} undecodable "
                             f"line(s)); expected a JSON-lines log written by JsonlLogger.")
    scan.runs = [b.build(k) for k, b in enumerate(builders)]
    return scan


def scan_log(path: str | os.PathLike[str], *, progress: bool = False) -> LogScan:
    """Reads a log without warning: runs, skipped lines and notes, for callers that report them.

    Args:
        path: A log written by `JsonlLogger`.
        progress: Show a tqdm bar over the lines (on stderr).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        IsADirectoryError: ``path`` is a directory.
        LogFormatError: The file is not UTF-8 text.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"Expected `path` to be a JSON-lines log, but {str(path)!r} is "
                                f"a directory; pass the .jsonl file inside it.")
    if not path.is_file():
        raise FileNotFoundError(f"Expected `path` to be a JSON-lines log written by gradwatch, "
                                f"but {str(path)!r} does not exist.")
    raw = path.read_bytes()
    lines: Iterable[tuple[int, bytes]] = _lines(raw)
    if progress:
        from tqdm import tqdm

        lines = tqdm(lines, total=raw.count(b"\n") + 1, desc="reading", unit=" lines",
                     leave=False, mininterval=0.5)
    return scan_lines(lines, path)


def describe_problem(p: LineProblem) -> str:
    """"skipped a truncated or unreadable line (...)" or "... not a gradwatch record: ..."."""
    if p.kind == "unreadable":
        return f"skipped a truncated or unreadable line ({p.message}; a run killed mid-write?)"
    return f"skipped a line that is not a gradwatch record: {p.message}"


def _warn(scan: LogScan, stacklevel: int) -> None:
    for p in scan.problems[:_MAX_WARNINGS]:
        warnings.warn(f"{scan.path}:{p.line}: {describe_problem(p)}.", stacklevel=stacklevel + 1)
    if len(scan.problems) > _MAX_WARNINGS:
        warnings.warn(f"{scan.path}: skipped {len(scan.problems) - _MAX_WARNINGS} more bad "
                      f"line(s).", stacklevel=stacklevel + 1)
    for note in scan.notes:
        warnings.warn(note, stacklevel=stacklevel + 1)


def read_runs(path: str | os.PathLike[str]) -> list[Run]:
    """The runs of a JSON-lines log, in the order they started.

    Each ``start_run`` header starts a run; records before any header (logs of older versions, or
    a logger called directly) form header-less runs, split where the step goes back. A header
    with the ``run_id`` of an earlier run continues it: that run's records with step >= the
    header's ``resume_step`` (or >= the first new record's step) are replaced by the new ones.
    A line that cannot be read (a kill cuts the line being written) or is not a gradwatch record
    is skipped with a warning naming the line; everything else is kept.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        IsADirectoryError: ``path`` is a directory.
        LogFormatError: The file is not UTF-8 text.
    """
    scan = scan_log(path)
    _warn(scan, stacklevel=2)
    return scan.runs


def select_run(runs: Sequence[Run], run: int | str) -> Run:
    """The run at index ``run`` (negative counts from the end) or with that id (or id prefix).

    Raises:
        ValueError: No such run, or an id prefix that matches several runs.
    """
    if not runs:
        raise ValueError("Expected a log with at least one run, but it has none.")
    listing = "; ".join(r.describe() for r in runs[-5:])
    if isinstance(run, int) and not isinstance(run, bool):
        if -len(runs) <= run < len(runs):
            return runs[run]
        raise ValueError(f"Expected `run` between {-len(runs)} and {len(runs) - 1}, but got "
                         f"{run}; the log has {len(runs)} run(s): {listing}.")
    if not isinstance(run, str):
        raise TypeError(f"Expected `run` to be an index (int) or a run id (str), but got "
                        f"{type(run).__name__}.")
    hits = [r for r in runs if r.run_id and r.run_id.startswith(run)] if run else []
    exact = [r for r in hits if r.run_id == run]
    if len(exact) == 1 or len(hits) == 1:
        return (exact or hits)[0]
    why = "matches several runs" if hits else "matches no run id"
    raise ValueError(f"Expected `run` to be a run id (or a unique prefix), but {run!r} {why}; "
                     f"the log has {len(runs)} run(s): {listing}.")


def read_jsonl(path: str | os.PathLike[str], run: int | str | None = None
               ) -> Iterator[StepRecord]:
    """The records of one run of a JSON-lines log (the last one by default).

    Args:
        path: A log written by `JsonlLogger`.
        run: ``None`` (default): the last run, with a warning when the file holds several; an
            index (0 first, -1 last); a run id or unique id prefix; ``"all"``: the records of
            every run, run after run (they are then mixed on purpose).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        IsADirectoryError: ``path`` is a directory.
        LogFormatError: The file is not UTF-8 text.
        ValueError: No such run.
    """
    scan = scan_log(path)
    _warn(scan, stacklevel=2)
    runs = scan.runs
    if run == "all":
        return iter([r for one in runs for r in one.records])
    if not runs:
        return iter(())
    if run is None:
        if len(runs) > 1:
            warnings.warn(f"{scan.path} holds {len(runs)} runs; read the last "
                          f"({runs[-1].describe()}). Pass run= (an index, a run id or 'all') to "
                          f"choose; read_runs(path) lists them.", stacklevel=2)
        return iter(runs[-1].records)
    return iter(select_run(runs, run).records)
