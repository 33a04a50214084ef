"""Reading JSON-lines logs back: runs (header + records), resumed runs, and bad lines skipped."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import BinaryIO, Iterator, Sequence

from .scan import _MAX_WARNINGS, LineProblem, LogFormatError, LogScan, Run, scan_lines
from .logschema import HEADER_KEY, check_record_dict
from ..record.records import StepRecord

__all__ = ["HEADER_KEY", "LineProblem", "LogFormatError", "LogScan", "Run", "check_record_dict",
           "describe_problem", "pick_run", "read_jsonl", "read_runs", "scan_lines", "scan_log",
           "select_run"]


def _lines(f: BinaryIO, bar: object | None = None) -> Iterator[tuple[int, bytes]]:
    """The numbered non-blank lines of a file, without their ``\n``, read one at a time (the
    log of a long run can be larger than the memory: never the whole file at once)."""
    for i, line in enumerate(f, start=1):
        if bar is not None:
            bar.update(len(line))  # type: ignore[attr-defined]
        if line.endswith(b"\n"):
            line = line[:-1]
        if line.strip():
            yield i, line


def scan_log(path: str | os.PathLike[str], *, progress: bool = False, layers: bool = True
             ) -> LogScan:
    """Reads a log without warning: runs, skipped lines and notes, for callers that report them.

    Args:
        path: A log written by `JsonlLogger`.
        progress: Show a tqdm bar over the bytes read (on stderr).
        layers: Keep the records' layers (False: check them only, to list the runs).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        IsADirectoryError: ``path`` is a directory.
        LogFormatError: The file is not UTF-8 text, or none of its lines is a gradwatch
            record or run header (e.g. the CSV written by `CsvLogger`).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"Expected `path` to be a file path (str or os.PathLike) of a JSON-lines "
                        f"log, but got {type(path).__name__}; pass e.g. 'run.jsonl'.")
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"Expected `path` to be a JSON-lines log, but {str(path)!r} is "
                                f"a directory; pass the .jsonl file inside it.")
    if not path.is_file():
        raise FileNotFoundError(f"Expected `path` to be a JSON-lines log written by gradwatch, "
                                f"but {str(path)!r} does not exist.")
    with open(path, "rb") as f:
        if not progress:
            return scan_lines(_lines(f), path, layers=layers)
        from tqdm import tqdm

        with tqdm(total=path.stat().st_size, desc="reading", unit="B", unit_scale=True,
                  leave=False, mininterval=0.5) as bar:
            return scan_lines(_lines(f, bar), path, layers=layers)


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
    is skipped with a warning naming the line; everything else is kept. A file with no record
    or header at all (a CSV log, another tool's file) raises instead.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        IsADirectoryError: ``path`` is a directory.
        LogFormatError: The file is not UTF-8 text, or none of its lines is a gradwatch
            record or run header (e.g. the CSV written by `CsvLogger`).
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


def pick_run(runs: Sequence[Run], text: str) -> Run:
    """The run ``text`` names, as typed on a command line: an index or a run id (prefix);
    ValueError when it is both, or names none."""
    try:
        index: int | None = int(text)
    except ValueError:
        index = None
    by_id = [r for r in runs if r.run_id and r.run_id.startswith(text)]
    if index is not None and -len(runs) <= index < len(runs):
        if by_id:
            raise ValueError(f"{text!r} is both a run index and the start of a run id; pass "
                             f"more characters of the id")
        return runs[index]
    return select_run(runs, text if by_id or index is None else index)


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
        LogFormatError: The file is not UTF-8 text, or none of its lines is a gradwatch
            record or run header (e.g. the CSV written by `CsvLogger`).
        ValueError: No such run.
    """
    scan = scan_log(path)
    _warn(scan, stacklevel=2)
    runs = scan.runs
    if run == "all":
        return (r for one in runs for r in one.records)
    if not runs:
        return iter(())
    if run is None:
        if len(runs) > 1:
            warnings.warn(f"{scan.path} holds {len(runs)} runs; read the last "
                          f"({runs[-1].describe()}). Pass run= (an index, a run id or 'all') to "
                          f"choose; read_runs(path) lists them.", stacklevel=2)
        return iter(runs[-1].records)
    return iter(select_run(runs, run).records)
