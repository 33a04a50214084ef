"""Checks of a file logger's path, made when the logger is built: a path that can never be
written (empty, a directory, under a file, in a folder that cannot be created) and an existing
file of the other kind (a CSV log given to `JsonlLogger`, a JSON-lines log to `CsvLogger`) are
refused at once, instead of a run training for hours with no log, or junk appended to a log."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["check_kind", "check_log_path", "existing_kind_problem"]

_CSV_HEADER = b"step,layer"
"""How the header of a file written by `CsvLogger` starts."""
_BOM = b"\xef\xbb\xbf"


def check_log_path(given: str | os.PathLike[str], logger: str, example: str) -> None:
    """Raises ``ValueError`` naming ``path`` and the fix when a log can never be written there;
    creates the missing folders above it (the first record would, and only creating them tells
    a folder that cannot be made, as under ``/proc``, even as root)."""
    fix = f"pass a file path in a folder you can write, e.g. {logger}({example!r})"
    path = Path(given)
    if not os.fspath(given) or not path.name:  # "" (Path("") is "."), "/"
        raise ValueError(f"Expected `path` to be the file to write the log to, but got "
                         f"{os.fspath(given)!r}, which names no file; {fix}.")
    if path.is_dir():
        raise ValueError(f"Expected `path` to be the file to write the log to, but "
                         f"{str(path)!r} is a directory; pass a file inside it, e.g. "
                         f"{logger}({str(path / example)!r}).")
    above = path.parent
    while not above.exists() and above != above.parent:
        above = above.parent
    if not above.is_dir():
        raise ValueError(f"Expected `path` to be a file in a folder, but {str(path)!r} lies "
                         f"under {str(above)!r}, which is a file, not a folder; {fix}.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"Expected `path` to be a file in a folder that can be created, but "
                         f"the folder {str(path.parent)!r} of {str(path)!r} cannot be created "
                         f"({err.strerror or err}); {fix}.") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"Expected `path` to be a file that can be written, but {str(path)!r} "
                         f"is read-only; {fix}, or make it writable.")
    if not path.exists():  # a trial file tells a folder that refuses it (even to root: /sys)
        try:
            open(path, "ab").close()
        except OSError as err:
            raise ValueError(f"Expected `path` to be a file that can be created, but "
                             f"{str(path)!r} cannot be created ({err.strerror or err}); "
                             f"{fix}.") from None
        path.unlink(missing_ok=True)


def _first_line(path: Path) -> bytes | None:
    """The start of the file's first non-blank line (BOM removed); None for a missing, empty or
    blank file."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return None
    head = head[len(_BOM):] if head.startswith(_BOM) else head
    head = head.lstrip()
    return head.split(b"\n", 1)[0].rstrip(b"\r") if head else None


def _show(line: bytes) -> str:
    text = line.decode("utf-8", "replace")
    return repr(text if len(text) <= 40 else text[:37] + "...")


def existing_kind_problem(path: Path, kind: str) -> str | None:
    """Why the existing file ``path`` is no log of ``kind`` ("jsonl" or "csv") to append to, as
    "'p' holds ..."; None when it is one, empty or missing."""
    line = _first_line(path) if path.is_file() else None
    if line is None:
        return None
    looks_jsonl, looks_csv = line.startswith(b"{"), line.startswith(_CSV_HEADER)
    if kind == "jsonl" and not looks_jsonl:
        what = ("a CSV log written by CsvLogger (its first line is the header "
                f"{_show(line)}); log JSON lines to a .jsonl file, e.g. "
                f"JsonlLogger({str(path.with_suffix('.jsonl'))!r})" if looks_csv else
                f"something other than JSON lines (its first line starts {_show(line)}); "
                f"JsonlLogger appends only to a log it wrote: pass a new file")
    elif kind == "csv" and not looks_csv:
        what = ("a JSON-lines log written by JsonlLogger; log CSV rows to a .csv file, e.g. "
                f"CsvLogger({str(path.with_suffix('.csv'))!r})" if looks_jsonl else
                f"something other than a CsvLogger CSV (its first line is {_show(line)}, not "
                f"a header starting 'step,layer'); CsvLogger appends only to a CSV it wrote: "
                f"pass a new file")
    else:
        return None
    return f"{str(path)!r} holds {what}"


def check_kind(path: Path, kind: str, logger: str) -> None:
    """Raises ``ValueError`` when the existing file ``path`` is no log of ``kind`` (see
    `existing_kind_problem`)."""
    problem = existing_kind_problem(path, kind)
    if problem:
        raise ValueError(f"{logger}({str(path)!r}) would append to a file of another kind: "
                         f"{problem}.")
