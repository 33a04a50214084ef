"""Turning one step's host numbers into a record: per-layer columns in forward order, the
verdicts over them, spikes, and the row the history keeps. Every per-layer operation here is
an array operation; no step walks the layers in Python."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..measure.nonfinite import locate_nonfinite
from ..measure.norms import layer_norms
from ..measure.read import layer_values
from ..measure.statistics import layer_value, values_per_tensor
from ..verdict.judge import Judge
from ..verdict.spikes import SpikeTracker
from ..verdict.thresholds import Thresholds
from ..verdict.view import StepView
from .history import Layout, RecordRow
from .records import STATUS_CODES, Status
from .table import LayerColumns

__all__ = ["StepColumns", "pending_step", "assemble"]


@dataclass
class StepColumns:
    """A measured step's numbers over the watched layers (index = watched layer), waiting for
    its update/weight ratios (known after ``optimizer.step()``)."""

    step: int
    has_grad: np.ndarray  # bool: the layer had a gradient at this step
    norms: np.ndarray  # float64, each layer's gradient norm (NaN where it had none)
    act: np.ndarray  # float64 output-gradient norms (NaN where not measured)
    act_on: np.ndarray  # bool: the output gradient was measured
    values: dict[str, np.ndarray]  # statistic -> float64 per layer (NaN: not measured)
    total: float
    coef: float
    skipped: bool
    overflow: bool
    origin: str | None = None
    birth: str | None = None
    loss: float | None = None
    absent: list[str] | None = None  # ran, stepped, require grad, no gradient (None: unknown)
    unread: list[str] | None = None  # the same, but after gradient-receiving layers
    stale: bool | None = None  # gradients not zeroed since the last step (None: not checked)
    already: str | None = None  # the NaN/Inf was already in the "batch" or the "weights"
    idle: np.ndarray | None = None  # a .grad of 0 held but not accumulated (None: unknown)

    @classmethod
    def overflowed(cls, step: int, n_layers: int, loss: float | None = None) -> StepColumns:
        """An iteration GradScaler skipped on overflow: a record with no layers."""
        nan = np.full(n_layers, math.nan)
        return cls(step, np.zeros(n_layers, dtype=bool), nan, nan.copy(),
                   np.zeros(n_layers, dtype=bool), {}, math.inf, 1.0, False, True, loss=loss)

    @classmethod
    def gradless(cls, step: int, watched: Any, data: Any, loss: float | None) -> StepColumns:
        """A step at which no watched parameter had a gradient: a record with no layers (total
        norm 0), every layer the optimizer steps (that ran, where the hooks saw it) absent."""
        n = len(watched.layers)
        order = np.asarray(watched.forward.order, dtype=np.int64)
        named = watched.stepped[order] & (watched.forward.ran[order] if data is not None
                                          else True)
        nan = np.full(n, math.nan)
        return cls(step, np.zeros(n, dtype=bool), nan, nan.copy(), np.zeros(n, dtype=bool), {},
                   0.0, 1.0, False, False, loss=loss,
                   absent=[watched.layers[i].name for i in order[named].tolist()])


def pending_step(step: int, watched: Any, data: Any, got: Any, present: list[bool] | None,
                 statistics: Sequence[Any], coef: float, skipped: bool, overflow: bool
                 ) -> StepColumns:
    """A measured step's per-layer numbers, and where a NaN was born."""
    w = watched
    n = len(w.layers)
    if present is None:
        norms, has = layer_norms(w.param_layer, np.asarray(got.norms, dtype=np.float64), n,
                                 w.runs)
    else:
        norms, has = layer_norms(w.param_layer[np.asarray(present)],
                                 np.asarray(got.norms, dtype=np.float64), n)
    act, act_on = np.full(n, math.nan), np.zeros(n, dtype=bool)
    values: dict[str, np.ndarray] = {}
    if data is not None:
        act, act_on, values = layer_values(data, got.host, got.act_inv, n)
    for s in statistics:
        per = got.host.get(f"stat:{s.name}")
        if per is None:  # a forced record of an unrecorded non-finite step
            continue
        count = sum(present) if present is not None else len(w.params)
        k = values_per_tensor(s, len(per), count)  # columns per tensor: (n,) or (n, k) results
        at = iter(per if k == 1 else [tuple(per[j:j + k]) for j in range(0, len(per), k)])
        by_param = [next(at) if present is None or present[j] else None
                    for j in range(len(w.params))]
        col = values[s.name] = np.full(n, math.nan)
        for i in np.flatnonzero(has).tolist():
            vals = [v for v in by_param[w.slices[i]] if v is not None]
            col[i] = layer_value(s, vals) if vals else math.nan
    origin = birth = already = None
    if not math.isfinite(got.total) and not overflow and data is not None:
        order = [i for i in w.forward.order if has[i]]
        origin, birth, already = locate_nonfinite(w.collector, data, got.host, w.names,
                                         {i: float(norms[i]) for i in order}, order)
    loss = got.host.get("loss")
    stale = got.host.get("stale")
    absent = unread = idle = None
    if data is not None:  # the hooks saw what ran in this forward
        idle = data.idle if data.idle is not None and len(data.idle) == n else None
        if idle is not None:  # a .grad set by hand (not accumulated) that is not 0 is one
            idle = idle & (norms == 0)
        absent, unread = _cut_off(w, has if idle is None else has & ~idle)
    return StepColumns(step, has, norms, act, act_on, values, got.total, coef, skipped,
                       overflow, origin, birth, loss=loss[0] if loss else None, absent=absent,
                       stale=bool(stale[0]) if stale else None, already=already, idle=idle, unread=unread)


def _cut_off(w: Any, has: np.ndarray) -> tuple[list[str], list[str]]:
    """The layers no gradient reached (``has``: one did; a ``.grad`` zeroed in place that no
    backward pass added to is none) although they require grad, are stepped and their own
    module ran, and that ran before the first layer (in forward order) that got a gradient:
    the input side cut off the loss. A module whose output the loss does not read (a pooler a
    classification head skips, a branch a task leaves unused) runs after gradient-receiving
    layers: those come second (`gradwatch.verdict.silent_rules.UnusedOutput`, a note)."""
    order = np.asarray(w.forward.order, dtype=np.int64)
    got = has[order] & w.forward.ran[order]
    first = int(np.argmax(got)) if got.any() else len(order)
    lost = ~has[order] & w.forward.ran[order] & w.stepped[order]
    absent = [w.layers[i].name for i in order[:first][lost[:first]].tolist()]
    unread = [w.layers[i].name for i in order[first:][lost[first:]].tolist()]
    if unread:  # a parent's own parameters (a ViT's class token on the model) are read as
        # its forward begins: where its first watched child ran, not where it completed
        names = [w.layers[i].name for i in order.tolist()]
        for name in list(unread):
            prefix = "" if name == "(root)" else name + "."
            start = next((k for k, n in enumerate(names) if n != name and n.startswith(prefix)),
                         None)
            if start is not None and start < first:
                unread.remove(name)
                absent.append(name)
    return absent, unread


@dataclass(frozen=True)
class _Shape:
    """What stays the same from step to step while the measured layers do."""

    index: np.ndarray  # watched layer of each position, forward order
    layout: Layout
    roles: list[str]
    weight: np.ndarray
    recurrent: list[bool]
    shared: list[bool]
    head: int | None  # position of the head
    depth: np.ndarray  # `ForwardOrder.depth` of each position
    memo: dict[str, Any] = field(default_factory=dict)  # the rules' per-layout memo


def _shape(cols: StepColumns, watched: Any, judge: Judge, cache: dict[Any, _Shape]) -> _Shape:
    fwd = watched.forward
    key = (fwd.order_key, cols.has_grad.tobytes(), fwd.head, fwd.repeated)
    found = cache.get(key)
    if found is None:
        order = np.asarray(fwd.order, dtype=np.int64)
        index = order[cols.has_grad[order]]
        layers = watched.layers
        names = tuple(layers[i].name for i in index.tolist())
        roles = [layers[i].role for i in index.tolist()]
        head = np.flatnonzero(index == fwd.head) if fwd.head is not None else ()
        found = _Shape(index, Layout(names, judge.uids(names)), roles,  # the rules judge
                       np.array([r == "weight" for r in roles], dtype=bool)  # weight layers
                       & watched.stepped[index],  # the optimizer steps (`StepView.weight`)
                       [layers[i].recurrent for i in index.tolist()],
                       [i in fwd.repeated for i in index.tolist()],
                       int(head[0]) if len(head) else None, fwd.depth[index])
        if len(cache) > 64:  # the watched set keeps changing: forget old shapes
            cache.clear()
        cache[key] = found
    return found


def assemble(cols: StepColumns, watched: Any, judge: Judge, spikes: SpikeTracker,
             th: Thresholds, cache: dict[Any, Any]) -> RecordRow:
    """The record of a measured step: statistics in forward order, statuses from the rules,
    spikes, findings. ``cache`` keeps the per-order layout between calls."""
    shape = _shape(cols, watched, judge, cache)
    idx = shape.index
    norms, act, act_on = cols.norms[idx], cols.act[idx], cols.act_on[idx]
    values = {k: v[idx] for k, v in cols.values.items()}
    values = {k: v for k, v in values.items() if not np.isnan(v).all()}
    origin = cols.origin
    if origin is None and cols.loss is not None and not math.isfinite(cols.loss) \
            and math.isfinite(cols.total) and not cols.overflow:
        origin = "loss"  # a NaN loss whose gradients stayed finite (a mean over no labels)
    view = StepView(step=cols.step, names=list(shape.layout.names), roles=shape.roles,
                    norms=norms, act=act, values=values, head=shape.head, total=cols.total,
                    overflow=cols.overflow, origin=origin, birth=cols.birth,
                    recurrent=shape.recurrent, shared=shape.shared, depth=shape.depth,
                    saturating=watched.saturating, loss=cols.loss, act_on=act_on,
                    weight=shape.weight, uid=shape.layout.columns, absent=cols.absent,
                    unread=cols.unread, stale=cols.stale, memo=shape.memo, stepped=watched.stepped[idx],
                    already=cols.already, idle=cols.idle[idx] if cols.idle is not None else None)
    verdicts = judge.judge(view)
    healthy = math.isfinite(cols.total) and not cols.overflow and len(idx) > 0
    if healthy:
        ratio, z, total_spike = spikes.observe(shape.layout.columns, norms, cols.total, th,
                                               whole=shape.layout.in_order)
    else:
        ratio, z, total_spike = np.zeros(len(idx)), np.zeros(len(idx)), False
    layers = LayerColumns(shape.layout.names, norms, act, act_on, verdicts.status,
                          verdicts.template, verdicts.value, verdicts.templates, ratio, z,
                          {k: v.astype(np.float32) for k, v in values.items()})
    first = cols.birth if cols.origin in ("forward", "backward") else None
    if first is None and cols.origin is None and not cols.overflow \
            and not math.isfinite(cols.total):
        bad = np.flatnonzero(verdicts.status == STATUS_CODES.index(Status.NONFINITE))
        first = shape.layout.names[bad[-1]] if len(bad) else None
    return RecordRow(step=cols.step, total_norm=cols.total, clip_coef=cols.coef, loss=cols.loss,
                     spike=total_spike, skipped=cols.skipped, amp_overflow=cols.overflow,
                     first_nonfinite=first, nonfinite_origin=cols.origin,
                     findings=tuple(verdicts.findings), held=verdicts.held, layout=shape.layout,
                     layers=layers)

