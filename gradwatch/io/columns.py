"""A log's records as columns: one flat array per statistic over every (record, layer) read.

A 400-layer record read as objects costs ~650 bytes per layer (a frozen `LayerStat`, its dict
and its floats); as columns it costs ~30, so the log of a 400-layer model trained for 100,000
steps fits in memory. The columns hold exactly what `StepRecord.from_dict` builds: a layer's
statistics keep their order, a value written as null stays None, a key a layer did not write
stays absent (`Layout`). Records and their layers are built when read (`gradwatch.io.logrecords`).
"""

from __future__ import annotations

from array import array
from typing import Any, Mapping, Sequence

import numpy as np

from ..record.records import STATUS_CODES, LayerStat, StepRecord

__all__ = ["FIXED", "Layout", "RecordStore"]

FIXED = ("norm", "act_norm", "status", "spike", "reason")
"""A layer's keys with a field of their own in `LayerStat`; every other key is a statistic."""

_SPIKE, _SKIPPED, _AMP = 1, 2, 4  # bits of a record's flags


class Layout:
    """The layers of a record: names in forward order and each layer's other statistics, in
    the order it wrote them. Records share their layout (a log has a few)."""

    __slots__ = ("names", "extras", "index", "keys", "has", "rank")

    def __init__(self, names: tuple[str, ...], extras: tuple[tuple[str, ...], ...]) -> None:
        self.names, self.extras = names, extras
        self.index = {n: p for p, n in enumerate(names)}
        self.keys = tuple(dict.fromkeys(k for ks in extras for k in ks))
        self.has = {k: np.array([p for p, ks in enumerate(extras) if k in ks], dtype=np.int64)
                    for k in self.keys}  # positions of the layers with statistic k
        rank = [dict() for _ in names]  # layer -> statistic -> where its value sits
        for k, where in self.has.items():
            for j, p in enumerate(where.tolist()):
                rank[p][k] = j
        self.rank = rank


class RecordStore:
    """The records of one log as columns, appended while the file is read, then frozen.

    Per record: step, total_norm, clip_coef, loss, flags, layout and the offset of its layers
    in the per-layer columns; first_nonfinite, nonfinite_origin, findings and held are rare and
    kept by record. Per (record, layer): norm, act_norm, status code, spike, reason (an index into
    the distinct reasons) and each statistic's value (only for the layers that wrote it).
    """

    def __init__(self, layers: bool = True) -> None:
        self.keeps_layers = layers  # False: layers checked, not kept (listing the runs)
        self.step, self.total, self.clip = array("q"), array("d"), array("d")
        self.loss, self.has_loss, self.flags = array("d"), array("b"), array("B")
        self.layout, self.offset = array("i"), array("q")
        self.first: dict[int, str] = {}
        self.origin: dict[int, Any] = {}
        self.findings: dict[int, tuple] = {}
        self.held: dict[int, tuple[str, ...]] = {}
        self.norm, self.act, self.act_on = array("d"), array("d"), array("b")
        self.status, self.spike, self.reason = array("b"), array("b"), array("i")
        self.extra: dict[str, array] = {}  # statistic -> values, in order of appending
        self.start: dict[str, array] = {}  # statistic -> per record, where its values start
        self.nulls: dict[str, set[int]] = {}  # statistic -> positions written as null
        self.layouts: list[Layout] = []
        self._layout_ids: dict[tuple, int] = {}
        self.reasons: list[str] = [""]
        self.reason_ids: dict[str, int] = {"": 0}
        self.statuses: list[Any] = list(STATUS_CODES)
        self.status_ids: dict[Any, int] = {s: k for k, s in enumerate(STATUS_CODES)}
        self.frozen = False

    def __len__(self) -> int:
        return len(self.step)

    def layout_id(self, names: tuple[str, ...], extras: tuple[tuple[str, ...], ...]) -> int:
        key = (names, extras)
        found = self._layout_ids.get(key)
        if found is None:
            found = self._layout_ids[key] = len(self.layouts)
            self.layouts.append(Layout(names, extras))
        return found

    def reason_codes(self, reasons: Sequence[str]) -> list[int]:
        """The index of each reason among the distinct reasons (new ones added)."""
        ids = self.reason_ids
        for r in set(reasons) - ids.keys():
            ids[r] = len(self.reasons)
            self.reasons.append(r)
        return list(map(ids.__getitem__, reasons))

    def status_code(self, status: Any) -> int:
        code = self.status_ids.get(status)
        if code is None:  # a status this version does not declare: kept as it was given
            code = self.status_ids[status] = len(self.statuses)
            self.statuses.append(status)
        return code

    # ------------------------------------------------------------------------------ appending
    def append(self, head: StepRecord, lid: int, cols: Mapping[str, Any]) -> int:
        """Appends a record: its step-level fields from ``head`` (its layers are ignored) and
        its layers as columns of layout ``lid`` (`layer_columns`); returns its index."""
        if self.frozen:
            raise RuntimeError("this record store is frozen (it was read to the end)")
        i = len(self.step)
        self.step.append(head.step)
        self.total.append(head.total_norm)
        self.clip.append(head.clip_coef)
        self.loss.append(0.0 if head.loss is None else head.loss)
        self.has_loss.append(head.loss is not None)
        self.flags.append(_SPIKE * bool(head.spike) | _SKIPPED * bool(head.skipped)
                          | _AMP * bool(head.amp_overflow))
        for where, value in ((self.first, head.first_nonfinite),
                             (self.origin, head.nonfinite_origin),
                             (self.findings, head.findings or None),
                             (self.held, head.held or None)):
            if value is not None:
                where[i] = value
        self.layout.append(lid)
        self.offset.append(len(self.norm))
        if self.keeps_layers:
            self._append_layers(i, self.layouts[lid], cols)
        return i

    def _append_layers(self, i: int, layout: Layout, cols: Mapping[str, Any]) -> None:
        n = len(layout.names)
        self.norm.frombytes(cols["norm"].tobytes())
        self.act.frombytes(cols["act"].tobytes())
        self.spike.extend(cols["spike"])
        if cols["status"] is None:  # every layer is ok (the usual case)
            self.status.frombytes(bytes(n))
        else:
            self.status.extend(cols["status"])
        if cols["act_on"] is None:  # every layer has an act_norm (the usual case)
            self.act_on.frombytes(b"\1" * n)
        else:
            self.act_on.extend(cols["act_on"])
        if cols["reason"] is None:  # every layer's reason is empty (the usual case)
            self.reason.frombytes(bytes(4 * n))
        else:
            self.reason.extend(cols["reason"])
        extra = cols["extra"]
        for k in extra:
            if k not in self.extra:  # a statistic first written now
                self.extra[k], self.nulls[k] = array("d"), set()
                self.start[k] = array("q", bytes(8 * i))
        for k, starts in self.start.items():
            starts.append(len(self.extra[k]))
        for k, (values, nulls) in extra.items():
            self.nulls[k].update(len(self.extra[k]) + j for j in nulls)
            self.extra[k].frombytes(values.tobytes())

    def freeze(self) -> RecordStore:
        """Ends appending: the columns become numpy arrays (views, no copy) for the summary;
        ``raw`` keeps the arrays, whose items read as Python numbers, for building records."""
        if not self.frozen:
            self.frozen = True
            raw = self.raw = _Raw()
            for name, value in list(vars(self).items()):
                if isinstance(value, array):
                    setattr(raw, name, value)
                    setattr(self, name, _numpy(value))
            raw.extra, raw.start = dict(self.extra), dict(self.start)
            self.extra = {k: _numpy(v) for k, v in raw.extra.items()}
            self.start = {k: _numpy(v) for k, v in raw.start.items()}
        return self

    # ------------------------------------------------------------------------------- reading
    def record(self, i: int, layers: Mapping[str, LayerStat]) -> StepRecord:
        """Record ``i`` with ``layers`` (the lazy view of its layers)."""
        raw = self.raw
        flags = raw.flags[i]
        return StepRecord(step=raw.step[i], total_norm=raw.total[i], clip_coef=raw.clip[i],
                          layers=layers, first_nonfinite=self.first.get(i),
                          spike=bool(flags & _SPIKE), skipped=bool(flags & _SKIPPED),
                          amp_overflow=bool(flags & _AMP), nonfinite_origin=self.origin.get(i),
                          findings=self.findings.get(i, ()), held=self.held.get(i, ()),
                          loss=raw.loss[i] if raw.has_loss[i] else None)

    def layout_of(self, i: int) -> Layout:
        return self.layouts[self.raw.layout[i]]

    def layers_kept(self) -> None:
        """Raises when the layers were checked but not kept (`scan_log` with layers=False)."""
        if not self.keeps_layers:
            raise RuntimeError("these runs were listed without their layers; read the log "
                               "with read_runs(path) to get its records")

    def layer_stat(self, i: int, p: int) -> LayerStat:
        """The layer at position ``p`` of record ``i``, as `LayerStat.from_dict` built it."""
        self.layers_kept()
        raw = self.raw
        layout = self.layouts[raw.layout[i]]
        o = raw.offset[i] + p
        values, rank = {}, layout.rank[p]
        for k in layout.extras[p]:  # in the order the layer wrote them
            at = raw.start[k][i] + rank[k]
            values[k] = None if at in self.nulls[k] else raw.extra[k][at]
        return LayerStat(raw.norm[o], raw.act[o] if raw.act_on[o] else None,
                         self.statuses[raw.status[o]], raw.spike[o] != 0,
                         self.reasons[raw.reason[o]], values)


class _Raw:
    """The arrays of a frozen store, as appended (`RecordStore.freeze`)."""


def _numpy(values: array) -> np.ndarray:
    kind = {"d": np.float64, "q": np.int64, "i": np.int32, "b": np.int8, "B": np.uint8}
    return np.frombuffer(values, kind[values.typecode]) if len(values) else np.zeros(
        0, kind[values.typecode])
