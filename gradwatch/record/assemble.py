"""Turning one step's host numbers into a `StepRecord`: layer order, head, verdicts, spikes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..capture.layers import Layer
from ..measure.nonfinite import locate_nonfinite
from ..measure.read import layer_values
from ..measure.norms import combine
from .records import LayerTable, Status, StepRecord
from ..verdict.judge import Judge
from ..verdict.rules import StepView
from ..verdict.spikes import SpikeTracker
from ..verdict.thresholds import Thresholds

__all__ = ["Pending", "ForwardOrder", "layer_norms", "pending_step", "assemble"]


class ForwardOrder:
    """The layers in forward order and the head, learnt from recorded forward passes.

    A layer whose module never ran (``nn.MultiheadAttention`` applies ``out_proj``'s weights
    without calling it) sits where its nearest ancestor that ran completed; the head is the
    layer whose weight matrix the last weight-applying module used (a tied output head resolves
    to the embedding it shares).
    """

    def __init__(self, layers: Sequence[Layer], module_names: Sequence[str],
                 owner_of: Sequence[int], weight_user: Sequence[int]) -> None:
        self.layers, self.module_names = layers, module_names
        self.owner_of, self.weight_user = owner_of, weight_user
        self.order = list(range(len(layers)))
        weights = [i for i, layer in enumerate(layers) if layer.role == "weight"]
        self.head: int | None = weights[-1] if weights else None
        self.known = False
        self.repeated: frozenset[int] = frozenset()
        """Layers whose module ran more than once in the forward pass (weights shared across
        depth): their gradient sums over several depths, so the depth trend leaves them out."""
        self._seq: tuple[int, ...] = ()

    def learn(self, completed: Sequence[int]) -> None:
        seq = tuple(completed)
        if not seq or seq == self._seq:
            return
        self._seq, self.known = seq, True
        first: dict[str, int] = {}
        runs: dict[str, int] = {}
        for k, mid in enumerate(seq):
            name = self.module_names[mid]
            first.setdefault(name, k)
            runs[name] = runs.get(name, 0) + 1
        pos: dict[int, float] = {}
        uncalled: dict[str, list[int]] = {}  # module -> its layers that never ran themselves
        repeated = set()
        for i, layer in enumerate(self.layers):
            if layer.name in first:
                pos[i] = first[layer.name]
                if runs[layer.name] > 1:
                    repeated.add(i)
                continue
            parts = layer.name.split(".")
            for cut in range(len(parts) - 1, -1, -1):
                parent = ".".join(parts[:cut]) or "(root)"
                if parent in first:  # applied inside the parent's forward, after it started
                    pos[i] = first[parent] + 0.5
                    uncalled.setdefault(parent, []).append(i)
                    if runs[parent] > 1 and parent != "(root)":
                        repeated.add(i)
                    break
        self.repeated = frozenset(repeated)
        self.order = sorted(range(len(self.layers)), key=lambda i: (pos.get(i, math.inf), i))
        users = []
        for mid in seq:
            if self.weight_user[mid] >= 0:
                users.append(self.weight_user[mid])
            users += [i for i in uncalled.pop(self.module_names[mid], ())
                      if self.layers[i].role == "weight"]
        if users:
            self.head = users[-1]


@dataclass
class Pending:
    """A measured step waiting for its update/weight ratios (known after optimizer.step())."""

    step: int
    order: list[int]  # layer indices with a gradient, forward order
    norms: list[float]
    act: dict[int, float]
    values: dict[int, dict[str, float | None]]
    total: float
    coef: float
    skipped: bool
    overflow: bool
    origin: str | None = None
    birth: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    loss: float | None = None


def layer_norms(order: Sequence[int], slices: Sequence[slice], norms: Sequence[float],
                present: Sequence[bool] | None) -> tuple[list[int], list[float]]:
    """Each layer's gradient norm from its parameters' norms (layers without any gradient out)."""
    if present is None:
        return list(order), [combine(norms[slices[i]]) for i in order]
    out_order, out = [], []
    it = iter(norms)
    per_param = [next(it) if p else None for p in present]
    for i in order:
        vals = [v for v in per_param[slices[i]] if v is not None]
        if vals:
            out_order.append(i)
            out.append(combine(vals))
    return out_order, out


def pending_step(step: int, watched: Any, data: Any, got: Any, present: list[bool] | None,
                 statistics: Sequence[Any], coef: float, skipped: bool, overflow: bool
                 ) -> Pending:
    """A measured step's per-layer numbers in forward order, and where a NaN was born."""
    w = watched
    order, lnorms = layer_norms(w.forward.order, w.slices, got.norms, present)
    act, values = {}, {}
    if data is not None:
        act, values, _ = layer_values(data, got.host, got.act_inv)
    for s in statistics:
        per = got.host.get(f"stat:{s.name}")
        if per is None:  # a forced record of an unrecorded non-finite step
            continue
        n = sum(present) if present is not None else len(w.params)
        k = len(per) // max(n, 1)  # columns per tensor: (n,) or (n, k) results
        at = iter(per if k == 1 else [tuple(per[j:j + k]) for j in range(0, len(per), k)])
        by_param = [next(at) if present is None or present[k] else None
                    for k in range(len(w.params))]
        for i in order:
            vals = [v for v in by_param[w.slices[i]] if v is not None]
            values.setdefault(i, {})[s.name] = s.combine(vals) if vals else None
    origin = birth = None
    if not math.isfinite(got.total) and not overflow and data is not None:
        origin, birth = locate_nonfinite(w.collector, data, got.host, w.names,
                                         dict(zip(order, lnorms)), order)
    loss = got.host.get("loss")
    return Pending(step, order, lnorms, act, values, got.total, coef, skipped, overflow,
                   origin, birth, loss=loss[0] if loss else None)


@dataclass(frozen=True)
class _Layout:
    """What stays the same from step to step while the measured layers do."""

    names: list[str]
    roles: list[str]
    recurrent: list[bool]
    head: int | None  # index of the head in the measured order
    shared: list[bool]  # ran more than once per forward (`ForwardOrder.repeated`)


def _layout(order: Sequence[int], layers: Sequence[Layer], head: int | None,
            cache: dict[Any, _Layout] | None, repeated: frozenset[int] = frozenset()
            ) -> _Layout:
    key = (tuple(order), head, repeated)
    found = cache.get(key) if cache is not None else None
    if found is None:
        found = _Layout([layers[i].name for i in order], [layers[i].role for i in order],
                        [layers[i].recurrent for i in order],
                        order.index(head) if head in order else None,
                        [i in repeated for i in order])
        if cache is not None:
            if len(cache) > 64:  # the watched set keeps changing: forget old layouts
                cache.clear()
            cache[key] = found
    return found


def assemble(p: Pending, layers: Sequence[Layer], head: int | None, judge: Judge,
             spikes: SpikeTracker, th: Thresholds, saturating: bool,
             cache: dict[Any, Any] | None = None,
             repeated: frozenset[int] = frozenset()) -> StepRecord:
    """The record of a measured step: statistics, statuses from the rules, spikes, findings.
    ``cache`` keeps the per-order layout (names, roles) between calls; ``repeated``: the
    layers whose module ran more than once per forward."""
    lay = _layout(p.order, layers, head, cache, repeated)
    names = lay.names
    get = p.values.get
    values = [get(i) or {} for i in p.order]
    act = [p.act.get(i) for i in p.order] if p.act else [None] * len(names)
    origin = p.origin
    if origin is None and p.loss is not None and not math.isfinite(p.loss) \
            and math.isfinite(p.total) and not p.overflow:
        origin = "loss"  # a NaN loss whose gradients stayed finite (a mean over no labels)
    view = StepView(step=p.step, names=names, roles=lay.roles, norms=p.norms, act=act,
                    values=values, head=lay.head, total=p.total, overflow=p.overflow,
                    origin=origin, birth=p.birth, recurrent=lay.recurrent, shared=lay.shared,
                    saturating=saturating, loss=p.loss)
    statuses, found = judge.judge(view)
    healthy = math.isfinite(p.total) and not p.overflow
    layer_spikes, total_spike = spikes.observe(names, p.norms, p.total, th) \
        if healthy else ([""] * len(names), False)
    table = LayerTable(names, p.norms, act, statuses, layer_spikes, values)
    first = p.birth if p.origin in ("forward", "backward") else None
    if first is None and p.origin is None and not p.overflow and not math.isfinite(p.total):
        first = next((n for n, (status, _) in zip(reversed(names), reversed(statuses))
                      if status is Status.NONFINITE), None)
    return StepRecord(step=p.step, total_norm=p.total, clip_coef=p.coef, layers=table,
                      first_nonfinite=first, spike=total_spike, skipped=p.skipped,
                      amp_overflow=p.overflow, nonfinite_origin=p.origin, findings=tuple(found),
                      loss=p.loss)
