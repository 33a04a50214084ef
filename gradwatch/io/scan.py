"""Scanning a JSON-lines log line by line: runs, resumed runs, and the lines that were skipped."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence

from ..record.records import LayerStat, StepRecord
from .columns import RecordStore
from .layerparse import JsonLayers, stat_columns
from .logrecords import LogRecords
from .logschema import HEADER_KEY, check_header, check_layers, check_record_head

__all__ = ['Run', 'LineProblem', 'LogScan', 'scan_lines', 'LogFormatError']


_MAX_WARNINGS = 10


class LogFormatError(ValueError):
    """The file as a whole is not a gradwatch log (not UTF-8 text, or no line of it is)."""


@dataclass(frozen=True)
class Run:
    """One run of a log: its header (``None`` for logs written without one) and its records.

    Attributes:
        index: Position in the file's runs (0 first), in the order the runs started.
        header: The ``start_run`` header as written (keys kept as they are), or ``None``.
        records: The run's records in step order; for a resumed run, the records re-done after
            the resume replace the ones from before it. A sequence read from columns
            (`LogRecords`): each `StepRecord` is built when read.
        resumes: Headers of the resumes of this run, in file order.
        superseded: Records from before a resume that a resume replaced (steps >= its
            ``resume_step``): training state was rolled back to the checkpoint past them.
        line: The line number (1-based) where the run starts.
    """

    index: int
    header: Mapping[str, Any] | None
    records: Sequence[StepRecord]
    resumes: tuple[Mapping[str, Any], ...] = ()
    superseded: Sequence[StepRecord] = ()
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
        steps = f", steps {_step(self.records, 0)}..{_step(self.records, -1)}" if n else ""
        parts.append(f"{n} record{'s' * (n != 1)}{steps}")
        if self.resumes:
            at = ", ".join(str(r.get("resume_step")) for r in self.resumes)
            k = len(self.superseded)
            parts.append(f"resumed {len(self.resumes)}x (at step {at}; "
                         f"{k} record{'s' * (k != 1)} replaced)")
        return " · ".join(parts)

    def __repr__(self) -> str:
        return f"Run({self.describe()})"


def _step(records: Sequence[StepRecord], k: int) -> int:
    """The step of ``records[k]``, read from the columns when they are (no record built)."""
    if isinstance(records, LogRecords):
        return int(records.store.step[records.index[k]])
    return records[k].step


@dataclass(frozen=True)
class LineProblem:
    """A line that was skipped: ``kind`` is "unreadable" (not JSON: cut by a kill) or "schema"."""

    line: int
    kind: Literal["unreadable", "schema"]
    message: str


@dataclass
class LogScan:
    """Everything read from a log: the runs, the skipped lines, and notes on how runs were split."""

    path: Path
    runs: list[Run]
    problems: list[LineProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    lines: int = 0


class _Builder:
    """A run being assembled while the file is read: its records by index in the store."""

    def __init__(self, header: Mapping[str, Any] | None, line: int, store: RecordStore) -> None:
        self.header, self.line, self.store = header, line, store
        self.records: list[int] = []
        self.resumes: list[Mapping[str, Any]] = []
        self.superseded: list[int] = []
        self.last_step: int | None = None  # of the current segment (since the last header)
        self.pending_cut = False  # the first record after a resume also cuts at its own step

    def cut(self, step: int) -> None:
        """Drops the records at ``step`` and after (a resume re-does them)."""
        steps = self.store.step
        self.superseded += [i for i in self.records if steps[i] >= step]
        self.records = [i for i in self.records if steps[i] < step]

    def build(self, index: int) -> Run:
        store = self.store
        return Run(index, self.header, LogRecords(store, self.records), tuple(self.resumes),
                   LogRecords(store, self.superseded), self.line)


def _read_record(obj: dict[str, Any], store: RecordStore, layers: JsonLayers
                 ) -> tuple[int | None, str | None]:
    """Appends a record line to the store: (its index, None), or (None, why it is not one).

    The layers are checked in bulk (`JsonLayers`); only a line that fails that is checked layer
    by layer, to name the problem, or read by `LayerStat.from_dict` when there is none."""
    why = check_record_head(obj)
    if why:
        return None, why
    found = layers.columns(obj.get("layers", {}))
    if found is None:
        why = check_layers(obj.get("layers", {}))
        if why:
            return None, why
    try:
        head = StepRecord.from_dict({k: v for k, v in obj.items() if k != "layers"})
        if found is None:
            found = stat_columns(store, {str(k): LayerStat.from_dict(v)
                                         for k, v in obj.get("layers", {}).items()})
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        return None, f"StepRecord.from_dict rejected it ({err})"
    return store.append(head, *found), None


_CSV_START = b"step,layer,"
"""How the header of a file written by `CsvLogger` starts."""


def _looks_csv(path: Path, first: bytes) -> bool:
    return path.suffix.lower() == ".csv" or first.startswith(_CSV_START)


def _not_a_log(scan: LogScan, first: bytes) -> str:
    """Why a file none of whose lines is a record or run header is not a log."""
    path = scan.path
    if _looks_csv(path, first):
        return (f"{path}: not a gradwatch log: it looks like the CSV written by CsvLogger, "
                f"which is for spreadsheets (and pandas.read_csv); read_runs, read_jsonl and "
                f"`gradwatch report` read the JSON-lines file written by JsonlLogger.")
    p = scan.problems[0]
    return (f"{path}: not a gradwatch log (none of its {scan.lines} lines is a gradwatch record "
            f"or run header; line {p.line}: {p.message}); pass the JSON-lines file written by "
            f"JsonlLogger.")


def scan_lines(lines: Iterable[tuple[int, bytes]], path: Path, *, layers: bool = True
               ) -> LogScan:
    """Assembles runs from numbered lines; the core of `scan_log` (see `read_runs`).

    With ``layers=False`` the layers are checked but not kept: the runs can be listed
    (`Run.describe`), and reading a record's layers raises."""
    scan = LogScan(path, [])
    store = RecordStore(layers)
    parser = JsonLayers(store)
    builders: list[_Builder] = []
    by_id: dict[str, _Builder] = {}  # run id -> the run its header started
    route: dict[str, _Builder] = {}  # run id -> the run its records join now
    current: _Builder | None = None  # the run records without a run id join (the last header's)
    decode_errors = 0
    alien = False  # a complete JSON line with no record key: another tool's file
    first = b""
    for i, raw in lines:
        scan.lines = i
        first = first or raw
        try:
            # utf-8-sig: the byte-order mark an editor may save first is not a cut line
            obj = json.loads(raw.decode("utf-8-sig"))
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
                current.pending_cut = True
            else:
                current = _Builder(header, i, store)
                builders.append(current)
                if isinstance(rid, str) and rid:
                    by_id[rid] = current
            if isinstance(rid, str) and rid:
                route[rid] = current
            current.last_step = None
            continue
        index, why = _read_record(obj, store, parser)
        if why:
            scan.problems.append(LineProblem(i, "schema", why))
            alien = alien or not (isinstance(obj, dict) and ("step" in obj or "total_norm" in obj))
            continue
        step = int(store.step[index])
        # a record with a run id (JsonlLogger after start_run) joins that run's records even
        # when another run's lines come between (two watches writing one file at once)
        rid = obj.get("run_id")
        target = route.get(rid) if isinstance(rid, str) else current
        if target is None or (target.last_step is not None and step <= target.last_step):
            if target is not None:
                trid = (target.header or {}).get("run_id")
                where = (f"in the run of line {target.line} (id {str(trid)[:8]})"
                         if target.header is not None else "")
                scan.notes.append(f"{path}:{i}: step {step} follows step {target.last_step} "
                                  f"{where + ' ' if where else ''}without a run header; "
                                  f"the records from here are read as a separate run without "
                                  f"header (a log appended to by a second run, or a run that "
                                  f"restarted its step count?)")
            target = _Builder(None, i, store)
            builders.append(target)
            if isinstance(rid, str):
                route[rid] = target
            else:
                current = target
        if target.pending_cut:
            target.cut(step)
            target.pending_cut = False
        target.records.append(index)
        target.last_step = step
    if decode_errors and not builders:
        raise LogFormatError(f"{path}: not a UTF-8 text file ({decode_errors} undecodable "
                             f"line(s)); expected a JSON-lines log written by JsonlLogger.")
    if not builders and scan.problems and (scan.lines > 1 or alien or _looks_csv(path, first)):
        # one error, not a warning per line (one cut line alone is a run killed mid-write;
        # one complete JSON line of another shape is another tool's file)
        raise LogFormatError(_not_a_log(scan, first))
    store.freeze()
    scan.runs = [b.build(k) for k, b in enumerate(builders)]
    return scan
