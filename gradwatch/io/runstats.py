"""Per-layer reductions over a run's columns (`LogRecords`), for the summary and the report.

A statistic is gathered for a block of layers at a time into a (records x layers) array, so
the memory a reduction takes is bounded by the block, not by the run; every reduction gives
what the loops over `StepRecord`s it replaces gave (medians as `statistics.median` computes
them, layers in the order those loops first met them).
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np

from .logrecords import LogRecords

__all__ = ["BLOCK", "blocks", "gather", "finite_medians", "latest", "layer_names",
           "statistic_names", "status_hits"]

BLOCK = 32
"""Layers gathered at once: a block of a 100,000-record run takes ~26 MB per statistic."""


def layer_names(view: LogRecords) -> list[str]:
    """Layers in forward order as the last record has them, then any others, first seen first."""
    if not len(view):
        return []
    store = view.store
    names = list(store.layouts[int(store.layout[view.index[-1]])].names)
    seen = set(names)
    for lid, _rows in view.groups():
        for n in store.layouts[lid].names:
            if n not in seen:
                seen.add(n)
                names.append(n)
    return names


def statistic_names(view: LogRecords, names: Sequence[str]) -> list[str]:
    """Every statistic of any layer: ``norm``, ``act_norm``, then the others as each layer's
    newest records order them (so a statistic measured on some steps or layers only still gets
    its column), as reading each layer's records newest first did."""
    store = view.store
    newest_first = sorted(view.groups(), key=lambda g: -int(g[1][-1]))
    layouts = [store.layouts[lid] for lid, _rows in newest_first]
    found: dict[str, None] = {}
    for n in names:
        for layout in layouts:
            p = layout.index.get(n)
            if p is not None:
                found.update(dict.fromkeys(("norm", "act_norm", *layout.extras[p])))
    return list(found)


def blocks(names: Sequence[str]) -> Iterator[Sequence[str]]:
    for k in range(0, len(names), BLOCK):
        yield names[k:k + BLOCK]


def gather(view: LogRecords, names: Sequence[str], what: str, key: str | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """(values, present): column ``what`` of the store (``"norm"``, ``"act"``, ``"status"``,
    ``"spike"``; ``"extra"`` with the statistic ``key``) for these layers, one row per record.
    ``present`` is False where a record has no such layer (or, for a statistic, the layer did
    not write it or wrote null); the value there is NaN, or -1 for the integer columns."""
    store = view.store
    src = store.extra[key] if what == "extra" else getattr(store, what)
    fill = np.nan if src.dtype.kind == "f" else -1
    out = np.full((len(view), len(names)), fill, dtype=src.dtype if fill == -1 else np.float64)
    present = np.zeros(out.shape, dtype=bool)
    nulls = store.nulls.get(key, ()) if what == "extra" else ()
    for lid, rows in view.groups():
        layout = store.layouts[lid]
        pairs = [(j, layout.index[n]) for j, n in enumerate(names) if n in layout.index]
        if what == "extra":
            pairs = [(j, layout.rank[p][key]) for j, p in pairs if key in layout.rank[p]]
            base = store.start[key][view.index[rows]] if pairs else None
        else:
            base = store.offset[view.index[rows]]
        if not pairs:
            continue
        cols, pos = (np.array(x, dtype=np.int64) for x in zip(*pairs))
        flat = base[:, None] + pos[None, :]
        out[rows[:, None], cols[None, :]] = src[flat]
        present[rows[:, None], cols[None, :]] = ~np.isin(flat, list(nulls)) if nulls else True
    return out, present


def finite_medians(values: np.ndarray, present: np.ndarray
                   ) -> tuple[list[float | None], list[float | None], list[int]]:
    """Per column: the median and the max of the finite present values (None without one),
    and how many there were; the median as `statistics.median` gives it (the mean of the two
    middle values for an even count)."""
    finite = present & np.isfinite(values)
    ordered = np.sort(np.where(finite, values, np.nan), axis=0, kind="stable")  # NaN last
    counts = finite.sum(axis=0).tolist()
    medians: list[float | None] = []
    maxima: list[float | None] = []
    for j, k in enumerate(counts):
        if not k:
            medians.append(None)
            maxima.append(None)
            continue
        mid = float(ordered[k // 2, j])
        medians.append(mid if k % 2 else (float(ordered[k // 2 - 1, j]) + mid) / 2)
        maxima.append(float(ordered[k - 1, j]))
    return medians, maxima, counts


def latest(values: np.ndarray, present: np.ndarray) -> list[float | None]:
    """Per column: the value of the last present row (NaN included), or None."""
    if not len(values):
        return [None] * values.shape[1]
    last = len(values) - 1 - np.argmax(present[::-1], axis=0)
    return [float(values[r, j]) if present[r, j] else None for j, r in enumerate(last.tolist())]


def status_hits(view: LogRecords, status: Any, rows: np.ndarray | None = None,
                names: Sequence[str] | None = None) -> tuple[list[tuple[str, int]], int]:
    """The layers in ``status`` on some record (of ``rows``, a mask; default all): (name,
    records) in the order they were first in it (record by record, in forward order), and on
    how many records any layer was."""
    store = view.store
    code = next((c for c, s in enumerate(store.statuses) if s is status), None)
    if code is None or not len(view):
        return [], 0
    names = layer_names(view) if names is None else names
    any_row = np.zeros(len(view), dtype=bool)
    found = []
    for block in blocks(names):
        hit = gather(view, block, "status")[0] == code
        if rows is not None:
            hit &= rows[:, None]
        any_row |= hit.any(axis=1)
        first, counts = np.argmax(hit, axis=0).tolist(), hit.sum(axis=0).tolist()
        for j in np.flatnonzero(counts).tolist():
            row = first[j]
            layout = store.layouts[int(store.layout[view.index[row]])]
            found.append((row, layout.index[block[j]], block[j], counts[j]))
    found.sort(key=lambda f: (f[0], f[1]))
    return [(name, k) for _r, _p, name, k in found], int(any_row.sum())
