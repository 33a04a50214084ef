"""What the verdict rules read and write: the step view, a rule's hit, the depth trends, the base rule."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple
from ..record.records import Status
from .thresholds import Thresholds

__all__ = ['REMEDIES', 'StepView', 'Hit', 'Trend', 'depth_trend', 'entering', 'Rule']


REMEDIES = ("relu", "he_init", "xavier_init", "normalization", "residual", "lower_lr", "warmup",
            "clip", "weight_decay", "loss_scaling", "fix_op", "gated_rnn", "logit_loss",
            "nonzero_init", "zero_grad")
"""The machine-readable remedy codes a `Finding` may name."""


@dataclass
class StepView:
    """What the rules read at one recorded step; lists are per layer in forward order."""

    step: int
    names: list[str]
    roles: list[str]
    norms: list[float]
    act: list[float | None]
    values: list[Mapping[str, float | None]]
    head: int | None
    total: float
    overflow: bool = False
    origin: str | None = None
    birth: str | None = None
    recurrent: list[bool] = field(default_factory=list)
    shared: list[bool] = field(default_factory=list)  # ran more than once per forward
    saturating: bool = False
    loss: float | None = None  # the user's loss of the step, when passed
    cache: dict[str, Any] = field(default_factory=dict)  # shared by the rules of one step


@dataclass
class Hit:
    """A rule holding at one step: evidence per layer (index into the view) and in sum."""

    layers: dict[int, str]
    evidence: str
    numbers: dict[str, float] = field(default_factory=dict)


def _fmt(x: float) -> str:
    return f"{x:.3g}"


class Trend(NamedTuple):
    """One depth trend (see `depth_trend`); ratios are over the output side's median norm."""

    what: str  # "gradient" or "output-gradient"
    starved: float  # the input side's largest norm: vanishing reads it
    median: float  # the input side's median norm: exploding reads it
    layers: list[int]  # the weight layers it spans (indices into the view)
    rel: list[float]  # each of those layers' norm


def depth_trend(view: StepView) -> list[Trend]:
    """The depth trend of the weight layers up to the head, on the parameter-gradient norms
    and (when measured) on the output-gradient norms.

    The input side is the first third of the weight layers, the output side the last third
    (the head included), so a net whose layers are all small alike (LayerScale γ near 0 at
    init) shows no trend, while a gradient that shrinks or grows layer after layer does.
    Vanishing reads the input side's largest norm: the whole input side must be starved, since
    layers small by design sit beside big ones at the same depth (attention query/key
    projections and the layers that only feed attention logits get little gradient while
    attention is near uniform, and in forward order they can fill most of the first third, as
    in ConvBERT). Exploding reads the input side's median, which one large layer does not move.
    A layer whose module ran more than once in the forward pass (weights shared across depth,
    as in ALBERT) has no single depth: its gradient sums over all of them, and it is left out.
    """
    cached = view.cache.get("trend")
    if cached is not None:
        return cached
    view.cache["trend"] = out = []
    h = view.head
    if h is None:
        return out
    roles, shared = view.roles, view.shared or [False] * len(view.roles)
    idx = [i for i in range(h + 1) if roles[i] == "weight" and not shared[i]]
    if len(idx) < 3:
        return out
    k = max(1, len(idx) // 3)
    isfinite = math.isfinite
    for what, values in (("gradient", view.norms), ("output-gradient", view.act)):
        vals = [values[i] for i in idx]
        if None in vals or not all(map(isfinite, vals)):
            continue
        ref = statistics.median(vals[-k:])
        if ref <= 0:
            continue
        first = vals[:k]
        out.append(Trend(what, max(first) / ref, statistics.median(first) / ref, idx,
                         [v / ref for v in vals]))
    return out


def entering(view: StepView) -> float | None:
    """The output gradient of the first layer in forward order (the gradient that reaches the
    input side: an embedding's, a stem's), over the output side's median output gradient (the
    last third of the weight layers up to the head); None when output gradients are not
    measured. Layers small by design sit beside the path the gradient takes (attention
    query/key projections hang off the residual stream), so the stream's own entry reads big
    in a healthy net however small they are, while a gradient that every block scales down on
    its way (an activation after each residual sum) arrives orders smaller."""
    trend = next((t for t in depth_trend(view) if t.what == "output-gradient"), None)
    first = next((a for a in view.act if a is not None), None)
    if trend is None or first is None or not math.isfinite(first):
        return None
    k = max(1, len(trend.layers) // 3)
    ref = statistics.median(view.act[i] for i in trend.layers[-k:])
    return first / ref if ref > 0 else None


class Rule:
    """Base class: ``check`` returns a `Hit` when the rule's condition holds at a step.

    ``state`` is the rule's own memory across steps (saved with the watch's state_dict)."""

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


def _add_absolute(hit: Hit, view: StepView, beyond: Any, bound: str) -> None:
    """Names in ``hit`` every layer whose own gradient norm is beyond the user's absolute
    bound (a finding that holds on the trend sets the status of each of them too)."""
    for i, n in enumerate(view.norms):
        if i not in hit.layers and math.isfinite(n) and beyond(n):
            hit.layers[i] = f"gradient norm {_fmt(n)} {bound}"


def _signal(view: StepView) -> tuple[float, str]:
    """The gradient entering the model and what it is: the head's output gradient, or
    (unmeasured) its parameter gradient."""
    h = view.head
    if view.act[h] is not None:
        return view.act[h], "output gradient"
    return view.norms[h], "gradient norm"


def _has_signal(view: StepView, th: Thresholds) -> bool:
    """Whether a gradient enters the model (`_signal` at least `Thresholds.vanishing`). A
    converged net has none."""
    signal, _ = _signal(view)
    return math.isfinite(signal) and signal >= th.vanishing
