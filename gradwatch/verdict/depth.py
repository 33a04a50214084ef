"""The depth trends the vanishing and exploding rules read: the input side's gradient over the
output side's, on parameter and output gradients, and the gradient entering the first layer."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .view import StepView, median

__all__ = ["Trend", "depth_trend", "entering"]


class Trend(NamedTuple):
    """One depth trend (see `depth_trend`); ratios are over the output side's median norm."""

    what: str  # "gradient" or "output-gradient"
    starved: float  # the input side's largest norm: vanishing reads it
    median: float  # the input side's median norm: exploding reads it
    layers: np.ndarray  # the weight layers it spans (positions in the view)
    rel: np.ndarray  # each of those layers' norm over the output side's median


def depth_trend(view: StepView) -> list[Trend]:
    """The depth trend of the weight layers up to the head, on the parameter-gradient norms
    and (when measured) on the output-gradient norms.

    The input side is the first third of the weight layers (ending at a depth: `_trend_span`),
    the output side the last third (the head included), so a net whose layers are all small alike (LayerScale γ near 0 at
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
    span = view.memo.get("trend")
    if span is None:  # which layers, and how many per side: fixed while the layout is
        span = view.memo["trend"] = _trend_span(view)
    if span is None:
        return out
    idx, k, k_out = span
    for what, values, measured in (("gradient", view.norms, None),
                                   ("output-gradient", view.act, view.act_on)):
        if measured is not None and not measured[idx].all():
            continue
        vals = values[idx]
        if not np.isfinite(vals).all():
            continue
        ref = median(vals[-k_out:])
        if ref <= 0:
            continue
        first = vals[:k]
        view.cache[f"ref:{what}"] = ref  # the output side's median (`entering` reads it)
        out.append(Trend(what, float(first.max()) / ref, median(first) / ref, idx, vals / ref))
    return out


def _trend_span(view: StepView) -> tuple[np.ndarray, int, int] | None:
    """The positions `depth_trend` reads and the size of the input and the output side (None:
    fewer than 3). The input side ends at a depth: layers that read one input in turn
    (`StepView.depth`: attention's query, key and value) are all in it or all out of it (up to
    half of the layers), so query and key, small by design, are not the input side alone."""
    h = view.head
    if h is None:
        return None
    keep = view.weight[:h + 1].copy()
    if len(view.shared):
        keep &= ~np.asarray(view.shared[:h + 1], dtype=bool)
    idx = np.flatnonzero(keep)
    if len(idx) < 3:
        return None
    k = k_out = max(1, len(idx) // 3)
    if len(view.depth):
        labels = np.asarray(view.depth)[idx]
        while k < len(idx) // 2 and labels[k] == labels[k - 1]:
            k += 1
    return idx, k, k_out


def entering(view: StepView) -> float | None:
    """The output gradient of the first layer in forward order (the gradient that reaches the
    input side: an embedding's, a stem's), over the output side's median output gradient (the
    last third of the weight layers up to the head); None when output gradients are not
    measured. Layers small by design sit beside the path the gradient takes (attention
    query/key projections hang off the residual stream), so the stream's own entry reads big
    in a healthy net however small they are, while a gradient that every block scales down on
    its way (an activation after each residual sum) arrives orders smaller. When the first
    layer is itself a query projection (the embeddings frozen), the largest output gradient
    of the layers that read its input (`StepView.depth`) stands for it."""
    trend = next((t for t in depth_trend(view) if t.what == "output-gradient"), None)
    if trend is None:
        return None
    on = int(view.act_on.argmax())  # the first measured layer
    if not view.act_on[on]:
        return None
    first = float(view.act[on])
    if len(view.depth):  # with the layers reading its input in turn: query, key and value
        beside = np.flatnonzero((np.asarray(view.depth) == view.depth[on]) & view.act_on)
        first = float(view.act[beside].max())
    if not math.isfinite(first):
        return None
    ref = view.cache["ref:output-gradient"]
    return first / ref
