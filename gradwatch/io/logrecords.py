"""A run's records over a `RecordStore`: a sequence of `StepRecord`s built when read.

`LogRecords` is what `read_runs` gives as ``Run.records``: ``len``, indexing, slicing,
iteration and equality work as on the tuple of records it replaces, and the summary reads its
columns without building a record. A record's ``layers`` (`LogLayers`) builds a `LayerStat`
when it is read.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Iterable, Iterator, Sequence, overload

import numpy as np

from ..record.records import LayerStat, Status, StepRecord
from ..record.table import DictView
from .columns import RecordStore
from .layerparse import stat_columns

__all__ = ["LogLayers", "LogRecords", "columns_of"]


class LogLayers(DictView):
    """Record ``i``'s layers (name -> `LayerStat`, in forward order): each `LayerStat` is built
    from the columns when it is read, and not kept, so reading every layer of every record (a
    heat map) holds no run's worth of objects. Reads, equality and pickling behave as a plain
    dict's (a pickled table is a dict)."""

    __slots__ = ("_store", "_i")

    def __init__(self, store: RecordStore, i: int) -> None:
        self._store, self._i = store, i

    def _dict(self) -> dict[str, LayerStat]:
        stat, i = self._store.layer_stat, self._i
        return {name: stat(i, p) for p, name in enumerate(self._store.layout_of(i).names)}

    def marks(self) -> list[tuple[str, Status, bool]]:
        """(name, status, spiked) of every layer that is not ok or spiked (nothing built)."""
        s, names = self._store, self._store.layout_of(self._i).names
        s.layers_kept()
        o = int(s.offset[self._i])
        status, spike = s.status[o:o + len(names)], s.spike[o:o + len(names)]
        return [(names[p], s.statuses[status[p]], bool(spike[p]))
                for p in np.flatnonzero((status != 0) | (spike != 0)).tolist()]

    def __getitem__(self, name: str) -> LayerStat:
        return self._store.layer_stat(self._i, self._store.layout_of(self._i).index[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._store.layout_of(self._i).names)

    def __len__(self) -> int:
        return len(self._store.layout_of(self._i).names)

    def __contains__(self, name: object) -> bool:
        return name in self._store.layout_of(self._i).index


class LogRecords(Sequence[StepRecord]):
    """Records ``index`` of a frozen `RecordStore`, in order, as `StepRecord`s built when read
    (a slice is a `LogRecords` too). Equal to another `LogRecords` or a tuple holding equal
    records, as the tuple of records it replaces was."""

    __slots__ = ("store", "index", "_groups", "derived")

    def __init__(self, store: RecordStore, index: Iterable[int] = ()) -> None:
        self.store = store
        self.index = np.asarray(index if isinstance(index, np.ndarray) else list(index),
                                dtype=np.int64)
        self._groups: list[tuple[int, np.ndarray]] | None = None
        self.derived: dict[str, Any] = {}  # what was computed from these records (summarize)

    def __len__(self) -> int:
        return len(self.index)

    def _record(self, i: int) -> StepRecord:
        return self.store.record(i, LogLayers(self.store, i))

    @overload
    def __getitem__(self, k: int) -> StepRecord: ...

    @overload
    def __getitem__(self, k: slice) -> LogRecords: ...

    def __getitem__(self, k: int | slice) -> StepRecord | LogRecords:
        if isinstance(k, slice):
            return LogRecords(self.store, self.index[k])
        k = operator.index(k)
        if not -len(self.index) <= k < len(self.index):
            raise IndexError(f"record index {k} out of range for {len(self.index)} records")
        return self._record(int(self.index[k]))

    def __iter__(self) -> Iterator[StepRecord]:
        return map(self._record, self.index.tolist())

    def __reversed__(self) -> Iterator[StepRecord]:
        return map(self._record, self.index[::-1].tolist())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, (LogRecords, tuple)):
            return NotImplemented
        if isinstance(other, LogRecords) and other.store is self.store:
            if np.array_equal(other.index, self.index):
                return True
        return len(self) == len(other) and all(a == b for a, b in zip(self, other))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        n = len(self)
        steps = f", steps {self.store.step[self.index[0]]}..{self.store.step[self.index[-1]]}" \
            if n else ""
        return f"LogRecords({n} record{'s' * (n != 1)}{steps})"

    def groups(self) -> list[tuple[int, np.ndarray]]:
        """(layout id, positions in this sequence of the records with that layout), the
        layouts in the order of their first record."""
        if self._groups is None:
            lids = self.store.layout[self.index]
            order = np.argsort(lids, kind="stable")
            ids, first, counts = np.unique(lids[order], return_index=True, return_counts=True)
            parts = [(int(i), order[f:f + c]) for i, f, c in zip(ids, first, counts)]
            self._groups = sorted(parts, key=lambda part: int(part[1][0]))
        return self._groups


def _same(a: Any, b: Any) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a)
                      and math.isnan(b))


def _from_one_store(recs: Sequence[Any]) -> LogRecords | None:
    """The `LogRecords` the records were read from, when each is unchanged since."""
    store = getattr(getattr(recs[0], "layers", None), "_store", None) if recs else None
    if not isinstance(store, RecordStore) or not store.keeps_layers:
        return None
    index = []
    for r in recs:
        lay = getattr(r, "layers", None)
        if type(r) is not StepRecord or type(lay) is not LogLayers or lay._store is not store:
            return None
        ref = store.record(lay._i, lay)
        if not all(_same(getattr(r, f), getattr(ref, f)) for f in _HEAD):
            return None
        index.append(lay._i)
    return LogRecords(store, index)


_HEAD = ("step", "total_norm", "clip_coef", "first_nonfinite", "spike", "skipped",
         "amp_overflow", "nonfinite_origin", "findings", "loss", "held")


def columns_of(records: Iterable[StepRecord]) -> LogRecords:
    """The records as columns: themselves when read from a log (`LogRecords`, or its records
    unchanged), else a new store of them (e.g. ``watch.history``), for the summary to read."""
    if isinstance(records, LogRecords):
        records.store.layers_kept()
        return records
    recs = records if isinstance(records, Sequence) else list(records)
    found = _from_one_store(recs)
    if found is not None:
        return found
    store = RecordStore()
    for r in recs:
        store.append(r, *stat_columns(store, r.layers))
    return LogRecords(store.freeze(), range(len(store)))
