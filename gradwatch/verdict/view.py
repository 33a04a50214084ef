"""What the verdict rules read and write: one step as per-layer arrays, a rule's hit and the
base rule (the depth trends are in `gradwatch.verdict.depth`). A rule is a vectorised
expression over the arrays plus its evidence text; per-layer words are a template and a
number, formatted only when someone reads them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ..record.records import Status
from .thresholds import Thresholds

__all__ = ["REMEDIES", "StepView", "Mark", "Hit", "Rule", "fmt3", "median"]

REMEDIES = ("relu", "he_init", "xavier_init", "normalization", "residual", "lower_lr", "warmup",
            "clip", "weight_decay", "loss_scaling", "fix_op", "gated_rnn", "logit_loss",
            "nonzero_init", "zero_grad", "reconnect", "check_lr", "fp32_weights", "check_data")
"""The machine-readable remedy codes a `Finding` may name."""

_EMPTY = np.zeros(0)


def _array(values: Any, dtype: Any = np.float64) -> np.ndarray:
    """A float array from an array or a list whose ``None`` entries become NaN."""
    if isinstance(values, np.ndarray):
        return values
    return np.array([math.nan if v is None else v for v in values], dtype=dtype)


@dataclass
class StepView:
    """What the rules read at one recorded step: per-layer arrays in forward order.

    ``act`` is NaN where the output gradient was not measured (``act_on`` says where it was:
    a measured NaN stays NaN with ``act_on`` True); each column of ``values`` is NaN where its
    statistic was not measured, and a statistic measured at no layer is absent. ``uid`` gives
    each layer's index in the judge's table of layer names (its per-layer memory). Lists are
    accepted and turned into arrays (``None`` as not measured).
    """

    step: int
    names: list[str]
    roles: list[str]
    norms: np.ndarray
    act: np.ndarray
    values: Mapping[str, np.ndarray]
    head: int | None
    total: float
    overflow: bool = False
    origin: str | None = None
    birth: str | None = None
    recurrent: Sequence[bool] = ()
    shared: Sequence[bool] = ()  # ran more than once per forward
    depth: Sequence[int] = ()  # a label shared by layers that read one input in turn
    saturating: bool = False
    loss: float | None = None  # the user's loss of the step, when passed
    act_on: np.ndarray | None = None
    weight: np.ndarray | None = None  # role == "weight" (and stepped: what rules judge)
    uid: np.ndarray | None = None
    absent: Sequence[str] | None = None  # layers that ran and are stepped but got no gradient
    unread: Sequence[str] | None = None  # the same, run after layers that got one
    stale: bool | None = None  # the gradients still held the last step's values
    stepped: np.ndarray | None = None  # stepped by the optimizer (None: every layer)
    already: str | None = None  # the NaN/Inf was in `birth`'s "batch" input or "weights"
    idle: np.ndarray | None = None  # holds a .grad no backward pass added to (None: unknown)
    curve: Any = None  # the run's `LossCurve` so far (set by the judge)
    cache: dict[str, Any] = field(default_factory=dict)  # shared by the rules of one step
    memo: dict[str, Any] = field(default_factory=dict)  # shared by the steps of one layout

    def __post_init__(self) -> None:
        n = len(self.names)
        if not isinstance(self.act, np.ndarray):
            self.act_on = np.array([a is not None for a in self.act], dtype=bool)
            self.act = _array(self.act)
        elif self.act_on is None:
            self.act_on = ~np.isnan(self.act)
        self.norms = _array(self.norms)
        if not isinstance(self.values, Mapping):  # a list of per-layer dicts
            keys = dict.fromkeys(k for row in self.values for k in row)
            self.values = {k: _array([row.get(k) for row in self.values]) for k in keys}
            self.values = {k: v for k, v in self.values.items() if not np.isnan(v).all()}
        if self.weight is None:
            self.weight = np.array([r == "weight" for r in self.roles], dtype=bool)
        self.uid = np.arange(n) if self.uid is None else self.uid

    @property
    def broken(self) -> bool:
        """Whether the step went non-finite (not an AMP overflow): its other statistics are
        consequences of the NaN/Inf (relu(NaN) reads as a dead unit)."""
        return not self.overflow and (self.origin is not None or not math.isfinite(self.total))

    @property
    def measured(self) -> set[str]:  # the statistics measured at this step (and the loss)
        return set(self.values) | ({"loss"} if self.loss is not None else set())


@dataclass(frozen=True)
class Mark:
    """Per-layer words of a hit: the layers (positions in the view), a template with at most
    one ``{}`` field, and the number each layer puts in it."""

    layers: np.ndarray
    template: str
    values: np.ndarray = field(default_factory=lambda: _EMPTY)


@dataclass
class Hit:
    """A rule holding at one step: per-layer marks (an earlier mark wins a layer named twice)
    and the evidence in sum."""

    marks: list[Mark]
    evidence: str
    numbers: dict[str, float] = field(default_factory=dict)
    names: tuple[str, ...] = ()  # layers the hit names that are not in the view
    note: str = ""  # set when the condition looks harmless: why (the hit is then a note)

    @property
    def positions(self) -> np.ndarray:
        """Every layer the hit names, in forward order."""
        if len(self.marks) == 1:
            return self.marks[0].layers  # (a mark's layers are in forward order)
        if not self.marks:
            return np.zeros(0, dtype=np.int64)
        return np.unique(np.concatenate([m.layers for m in self.marks]))

    def add(self, layers: np.ndarray, template: str, values: np.ndarray = _EMPTY) -> None:
        """Names ``layers`` not named yet, with ``template`` and their ``values``."""
        if not len(layers):
            return
        if self.marks:
            taken = np.zeros(int(max(layers.max(), *(m.layers.max(initial=0)
                                                     for m in self.marks))) + 1, dtype=bool)
            for m in self.marks:
                taken[m.layers] = True
            keep = ~taken[layers]
            if not keep.all():
                layers, values = layers[keep], values[keep] if len(values) else values
        if len(layers):
            self.marks.append(Mark(layers, template, values))


def median(values: np.ndarray) -> float:
    """`statistics.median`'s value, without `numpy.median`'s fixed cost on small arrays."""
    s = np.sort(values)
    n = len(s)
    return float(s[n // 2]) if n % 2 else float((s[n // 2 - 1] + s[n // 2]) / 2)


def fmt3(x: float) -> str:
    """Three significant digits (the rules' evidence format)."""
    return f"{x:.3g}"


class Rule:
    """Base class: ``check`` returns a `Hit` when the rule's condition holds at a step.

    ``state`` is the rule's own memory across steps (saved with the watch's state_dict); a
    per-layer memory is an array indexed by `StepView.uid` (see `grow`)."""

    kind: str = ""
    status: Status | None = None
    persistent: bool = True
    reads: tuple[str, ...] = ("norm",)
    optional: bool = False
    """Whether the statistics it reads may be missing (then the rule is skipped that step)."""

    def check(self, view: StepView, th: Thresholds, state: dict[str, Any]) -> Hit | None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r})"


def grow(state: dict[str, Any], key: str, view: StepView, fill: float = 0.0,
         width: int | None = None) -> np.ndarray:
    """The per-layer memory ``state[key]`` (one row per layer name the judge knows, ``width``
    columns when given), grown with ``fill`` to cover every layer of ``view``."""
    need = int(view.uid.max()) + 1 if len(view.uid) else 0
    arr = state.get(key)
    shape = (need,) if width is None else (need, width)
    if arr is None:
        arr = state[key] = np.full(shape, fill)
    elif len(arr) < need:
        more = np.full((need - len(arr),) + shape[1:], fill)
        arr = state[key] = np.concatenate([arr, more])
    return arr


def add_absolute(hit: Hit, view: StepView, beyond: np.ndarray, bound: str) -> None:
    """Names in ``hit`` every layer whose own gradient norm is beyond the user's absolute
    bound (``beyond``: a mask over the layers; a finding that holds on the trend sets the
    status of each of them too)."""
    where = np.flatnonzero(beyond & np.isfinite(view.norms))
    hit.add(where, "gradient norm {:.3g} " + bound, view.norms[where])


def signal(view: StepView) -> tuple[float, str]:
    """The gradient entering the model and what it is: the head's output gradient, or
    (unmeasured) its parameter gradient."""
    h = view.head
    if view.act_on[h]:
        return float(view.act[h]), "output gradient"
    return float(view.norms[h]), "gradient norm"


def has_signal(view: StepView, th: Thresholds) -> bool:
    """Whether a gradient enters the model (`signal` at least `Thresholds.vanishing`). A
    converged net has none."""
    value, _ = signal(view)
    return math.isfinite(value) and value >= th.vanishing
