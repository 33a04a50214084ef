"""The history of a run as columns: a ring buffer of numbers, with records built when read.

Each recorded step is one row of a few preallocated arrays: per-record scalars, and per-layer
columns with one column per layer name ever recorded (the judge's table of names). A
`StepRecord` read from the history is a view made then (`LayerTable` over the row), so a run
keeps no per-layer Python objects, and the memory stops growing once the ring is full.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Sequence, overload

import numpy as np

from .records import Finding, StepRecord
from .table import LayerColumns, LayerTable

__all__ = ["Layout", "RecordRow", "History"]

_START = 64  # rows allocated at first; doubled as records come, up to the capacity


@dataclass(frozen=True)
class Layout:
    """The layers of a record in forward order: names and their columns in the history."""

    names: tuple[str, ...]
    columns: np.ndarray  # int64 column of each layer (the judge's row of that name)

    @property
    def in_order(self) -> bool:
        """Whether the layers sit in columns 0, 1, 2, ... (then a row is written whole)."""
        found = self.__dict__.get("_in_order")
        if found is None:
            found = bool(np.array_equal(self.columns, np.arange(len(self.columns))))
            object.__setattr__(self, "_in_order", found)
        return found

    @property
    def width(self) -> int:
        """The number of columns a row needs to hold these layers (the largest column + 1)."""
        found = self.__dict__.get("_width")
        if found is None:
            found = int(self.columns.max()) + 1 if len(self.columns) else 0
            object.__setattr__(self, "_width", found)
        return found


@dataclass(frozen=True)
class RecordRow:
    """One recorded step, as the history stores it (per-layer arrays in `layout` order)."""

    step: int
    total_norm: float
    clip_coef: float
    loss: float | None
    spike: bool
    skipped: bool
    amp_overflow: bool
    first_nonfinite: str | None
    nonfinite_origin: str | None
    findings: tuple[Finding, ...]
    held: tuple[str, ...]
    layout: Layout
    layers: LayerColumns


_LAYER_COLUMNS = {"norm": np.float64, "act": np.float64, "act_on": np.bool_,
                  "status": np.int8, "template": np.int8, "value": np.float64}
"""Per-layer columns and their types; each statistic measured adds a float32 column (the
statistics are float32 from the start: `gradwatch.record.assemble`). Spikes are rare and
kept per record, as the positions that spiked with their ratios and z-scores."""

_SCALARS = {"step": np.int64, "total_norm": np.float64, "clip_coef": np.float64,
            "loss": np.float64, "has_loss": np.bool_, "spike": np.bool_, "skipped": np.bool_,
            "amp_overflow": np.bool_}
_OBJECTS = ("first_nonfinite", "nonfinite_origin", "findings", "held", "layout", "templates",
            "spikes")


class History(Sequence[StepRecord]):
    """The last ``capacity`` records, oldest first, as columns (see the module docstring).

    Reading an entry builds its `StepRecord`; ``len``, indexing, slicing and iteration work as
    on a tuple. Norms are float64, other statistics float32 (as every record carries them).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._rows = 0  # allocated rows
        self._width = 0  # allocated layer columns
        self._next = 0  # total records appended
        self._scalars: dict[str, np.ndarray] = {}
        self._objects: dict[str, np.ndarray] = {}
        self._layer: dict[str, np.ndarray] = {}
        self._stats: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ storage

    def _grow(self, rows: int, width: int) -> None:
        def resize(a: np.ndarray | None, dtype: Any, two_d: bool, fill: Any) -> np.ndarray:
            shape = (rows, width) if two_d else (rows,)
            out = np.full(shape, fill, dtype=dtype)
            if a is not None:
                if two_d:
                    out[:a.shape[0], :a.shape[1]] = a
                else:
                    out[:a.shape[0]] = a
            return out

        for name, dtype in _SCALARS.items():
            self._scalars[name] = resize(self._scalars.get(name), dtype, False, 0)
        for name in _OBJECTS:
            self._objects[name] = resize(self._objects.get(name), object, False, None)
        for name, dtype in _LAYER_COLUMNS.items():
            fill = math.nan if dtype in (np.float64, np.float32) else 0
            self._layer[name] = resize(self._layer.get(name), dtype, True, fill)
        for name, col in self._stats.items():
            self._stats[name] = resize(col, np.float32, True, math.nan)
        self._rows, self._width = rows, width

    def _slot(self, width: int) -> int:
        """The row the next record goes to, after making room for it."""
        filled = min(self._next, self.capacity)
        rows, grow = self._rows, False
        if filled == rows and rows < self.capacity:  # not yet a ring: grow the arrays
            rows, grow = min(self.capacity, max(_START, 2 * rows)), True
        if width > self._width:
            grow = True
        if grow:
            self._grow(rows, max(width, self._width))
        return self._next % self.capacity

    def append(self, row: RecordRow) -> None:
        """Stores ``row`` (the oldest record leaves once ``capacity`` are kept)."""
        cols = row.layout.columns
        slot = self._slot(row.layout.width)
        s, o = self._scalars, self._objects
        s["step"][slot] = row.step
        s["total_norm"][slot] = row.total_norm
        s["clip_coef"][slot] = row.clip_coef
        s["has_loss"][slot] = row.loss is not None
        s["loss"][slot] = math.nan if row.loss is None else row.loss
        s["spike"][slot], s["skipped"][slot] = row.spike, row.skipped
        s["amp_overflow"][slot] = row.amp_overflow
        o["first_nonfinite"][slot] = row.first_nonfinite
        o["nonfinite_origin"][slot] = row.nonfinite_origin
        o["findings"][slot] = row.findings or None
        o["held"][slot] = row.held or None
        o["layout"][slot] = row.layout
        o["templates"][slot] = row.layers.templates
        lay, c = self._layer, row.layers
        spiked = np.flatnonzero(c.spike > 0)
        o["spikes"][slot] = (spiked, c.spike[spiked], c.spike_z[spiked]) if len(spiked) \
            else None
        whole = len(cols) == self._width and row.layout.in_order  # every column, in order
        for name in _LAYER_COLUMNS:
            if whole:
                lay[name][slot] = getattr(c, name)
                continue
            lay[name][slot].fill(0 if name not in ("norm", "act", "value") else math.nan)
            lay[name][slot, cols] = getattr(c, name)
        for name, col in self._stats.items():
            if name not in c.values:
                col[slot].fill(math.nan)
        for name, values in c.values.items():
            col = self._stats.get(name)
            if col is None:
                col = self._stats[name] = np.full((self._rows, self._width), math.nan,
                                                  dtype=np.float32)
            if whole:
                col[slot] = values
            else:
                col[slot].fill(math.nan)
                col[slot, cols] = values
        self._next += 1

    # ------------------------------------------------------------------ reading

    def __len__(self) -> int:
        return min(self._next, self.capacity)

    @overload
    def __getitem__(self, i: int) -> StepRecord: ...

    @overload
    def __getitem__(self, i: slice) -> list[StepRecord]: ...

    def __getitem__(self, i: int | slice) -> StepRecord | list[StepRecord]:
        n = len(self)
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(n))]
        if not -n <= i < n:
            raise IndexError(f"history index {i} out of range (it holds {n} records)")
        return self._record((self._next - n + (i % n)) % self.capacity)

    def __iter__(self) -> Iterator[StepRecord]:
        """The records held when iteration starts (records added meanwhile are not visited);
        RuntimeError if one is dropped by the ring before it is reached."""
        end = self._next
        for j in range(end - len(self), end):
            if j < self._next - self.capacity:
                raise RuntimeError(f"the history dropped record {j} of the run while it was "
                                   f"being iterated ({self._next - end} records were added); "
                                   f"iterate over a snapshot: list(watch.history)")
            yield self._record(j % self.capacity)

    def row_record(self, row: RecordRow) -> StepRecord:
        """The record of ``row`` at full precision (what the step returns, loggers see)."""
        return _make(row.step, row.total_norm, row.clip_coef, row.layers, row.first_nonfinite,
                     row.spike, row.skipped, row.amp_overflow, row.nonfinite_origin,
                     row.findings, row.held, row.loss)

    def _record(self, slot: int) -> StepRecord:
        s, o, lay = self._scalars, self._objects, self._layer
        layout: Layout = o["layout"][slot]
        cols = layout.columns
        stats = {name: col[slot, cols] for name, col in self._stats.items()}
        stats = {k: v for k, v in stats.items() if not np.isnan(v).all()}
        ratio, z = np.zeros(len(cols)), np.zeros(len(cols))
        spikes = o["spikes"][slot]
        if spikes is not None:
            where, ratio_of, z_of = spikes
            ratio[where], z[where] = ratio_of, z_of
        table = LayerColumns(layout.names, *(lay[name][slot, cols] for name in
                                             ("norm", "act", "act_on", "status", "template",
                                              "value")),
                             o["templates"][slot], ratio, z, stats)
        return _make(int(s["step"][slot]), float(s["total_norm"][slot]),
                     float(s["clip_coef"][slot]), table, o["first_nonfinite"][slot],
                     bool(s["spike"][slot]), bool(s["skipped"][slot]),
                     bool(s["amp_overflow"][slot]), o["nonfinite_origin"][slot],
                     o["findings"][slot] or (), o["held"][slot] or (),
                     float(s["loss"][slot]) if s["has_loss"][slot] else None)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (History, list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    @property
    def nbytes(self) -> int:
        """Bytes held by the columns (object columns count their references)."""
        return sum(a.nbytes for group in (self._scalars, self._objects, self._layer,
                                          self._stats) for a in group.values())

    def bytes_per_layer_record(self) -> float:
        """Bytes the per-layer columns take per layer per record."""
        return float(sum(a.itemsize for a in self._layer.values())
                     + sum(a.itemsize for a in self._stats.values()))

    def __repr__(self) -> str:
        return f"History(records={len(self)}, capacity={self.capacity}, layers={self._width})"


def _make(step: int, total: float, coef: float, layers: LayerColumns, first: str | None,
          spike: bool, skipped: bool, overflow: bool, origin: str | None,
          findings: tuple[Finding, ...], held: tuple[str, ...], loss: float | None
          ) -> StepRecord:
    return StepRecord(step=step, total_norm=total, clip_coef=coef, layers=LayerTable(layers),
                      first_nonfinite=first, spike=spike, skipped=skipped, amp_overflow=overflow,
                      nonfinite_origin=origin, findings=findings, held=held,
                      loss=loss)
