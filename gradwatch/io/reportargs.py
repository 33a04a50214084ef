"""Checks of the report functions' arguments (`gradwatch.io.report`): a wrong type is named with
what was expected and how to get it, instead of failing deep inside with an AttributeError."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from ..record.records import StepRecord
from .logrecords import LogRecords

__all__ = ["check_records", "check_header", "check_images", "declared_labels"]


def check_records(records: Iterable[StepRecord]) -> list[StepRecord] | LogRecords:
    """The records as a list (the records of a log as they are, columns), or a clear error
    naming ``records`` (a path, a dict from ``json.loads`` or None would otherwise fail deep
    inside with an AttributeError)."""
    if isinstance(records, LogRecords):
        if not len(records):
            raise ValueError("Expected `records` to hold at least one StepRecord, but got "
                             "none; check that the log is not empty.")
        return records
    if records is None or isinstance(records, (str, bytes, Mapping)) or hasattr(
            records, "__fspath__"):
        raise TypeError(f"Expected `records` to be StepRecords (watch.history or "
                        f"list(gradwatch.read_jsonl(path))), but got {type(records).__name__}; "
                        f"read a log with gradwatch.read_jsonl(path) first.")
    recs = list(records)
    if not recs:
        raise ValueError("Expected `records` to hold at least one StepRecord, but got none; "
                         "record a step first or check that the log is not empty.")
    for r in recs:
        if not isinstance(r, StepRecord):
            raise TypeError(f"Expected `records` to hold StepRecord objects, but got "
                            f"{type(r).__name__}; read a log with gradwatch.read_jsonl(path) "
                            f"(or rebuild a dict with StepRecord.from_dict).")
    return recs


def check_header(header: Any) -> Mapping[str, Any] | None:
    """``header`` when it is a run header (a mapping) or None; a clear error otherwise."""
    if header is not None and not isinstance(header, Mapping):
        raise TypeError(f"Expected `header` to be a run header (a dict, e.g. "
                        f"read_runs(path)[k].header) or None, but got {type(header).__name__}.")
    return header


def check_images(images: Any, kind: type, what: str) -> Mapping[str, Any]:
    """``images`` as caption -> ``kind`` (what: how to say it), or a clear error."""
    if images is None:
        return {}
    if not isinstance(images, Mapping):
        raise TypeError(f"Expected `images` to map caption -> {what}, but got "
                        f"{type(images).__name__}.")
    for caption, value in images.items():
        if not isinstance(value, kind):
            raise TypeError(f"Expected `images` to map caption -> {what}, but "
                            f"{caption!r} maps to {type(value).__name__}"
                            + ("; read the file's bytes with Path(p).read_bytes()"
                               if kind is bytes else "") + ".")
    return images


def declared_labels(header: Mapping[str, Any] | None) -> dict[str, str]:
    """Statistic name -> label, as the run header declares them (``[{"name", "label"}]``)."""
    declared = (header or {}).get("statistics")
    if not isinstance(declared, (list, tuple)):
        return {}
    return {d["name"]: d["label"] for d in declared if isinstance(d, Mapping)
            and isinstance(d.get("name"), str) and isinstance(d.get("label"), str)}
