"""Gradient flow: per-layer gradient norm against depth, one or a few steps overlaid."""

from __future__ import annotations

import math
import operator
import os
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

from ..record.records import Status, StepRecord
from ._common import (WHICH_LABEL, Which, absolute_bounds, draw_series, edge_marks, finish,
                      layered_records, legend, log_limits, name_ticks, new_axes, short, split,
                      status_style, value)
from .depth import depth_reference, relative_bounds
from .ticks import log_ticks

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_flow"]


def plot_flow(records: Iterable[StepRecord], *, steps: int | Sequence[int] | None = None,
              which: Which = "norm", thresholds: Any = None, vanishing: float | None = None,
              exploding: float | None = None, relative_vanishing: float | None = None,
              relative_exploding: float | None = None, roles: Mapping[str, str] | None = None,
              head: str | None = None, ax: Axes | None = None,
              path: str | os.PathLike[str] | None = None, title: str | None = None) -> Figure:
    """Per-layer gradient norm against depth: the "gradient magnitude across layers" figure.

    Args:
        records: Recorded steps, e.g. ``watch.history`` or ``list(read_jsonl(path))``.
        steps: Step number(s) to overlay; default the first, middle and last record.
        which: ``"norm"`` (parameter gradients) or ``"act_norm"`` (gradient w.r.t. the output).
        thresholds: A `Thresholds` (or an object with its ``vanishing``, ``exploding``,
            ``relative_vanishing`` and ``relative_exploding`` attributes): the bounds to draw.
        vanishing: Absolute lower bound to draw (overrides ``thresholds``).
        exploding: Absolute upper bound to draw (overrides ``thresholds``).
        relative_vanishing: Relative lower bound (overrides ``thresholds``), e.g. a log
            header's thresholds.
        relative_exploding: Relative upper bound (overrides ``thresholds``).
        roles: Layer name -> role (a run header's ``"roles"``): only ``"weight"`` layers enter
            the depth reference, as in the rules; default every layer (see `gradwatch.plot.depth`).
        head: The layer whose output is the model's (``GradWatch.head``); default the last.
        ax: Axes to draw into; a new figure when omitted.
        path: Where to save a PNG.
        title: Figure title; a descriptive default when omitted.

    Returns:
        The figure. Lines run from input (left) to output (right), one per step, later steps
        darker; flagged layers carry a marker coloured by status (grey diamonds for a status
        without a declared style) on their norm, or, where a log axis cannot show the norm,
        on the axes' edge by the edge marks: the top edge for NaN/Inf, the bottom edge for
        zero, with a legend entry saying so. The layer where NaN/Inf was first born (at the run's
        first non-finite record, drawn or not) is marked by a dotted vertical line: later
        non-finite steps may only carry it on (weights an optimizer step made NaN). The shaded, hatched bands (one hatch direction per band) are the
        relative bounds the depth verdicts read: ``relative_vanishing``
        (``relative_exploding``) times the output side's median norm at the latest drawn step
        (a black bar over the output side's layers marks that median; earlier steps' bounds
        are dashed lines in their colours). The absolute bounds are dotted lines labelled
        "absolute", for ``which="norm"`` only, since they bound parameter-gradient
        norms. A bound far beyond the data is named in the legend, not drawn.

    Raises:
        ValueError: No records, records not in increasing step order (several runs), no
            per-layer statistics, an unknown step or ``head``, or bad bounds.
        TypeError: ``steps`` not whole numbers, ``roles`` not a mapping, or a relative bound
            not a number.
    """
    from matplotlib import colormaps

    recs, names, vanishing, exploding = layered_records(records, which, thresholds, vanishing,
                                                        exploding)
    by_step = {r.step: r for r in recs}
    if steps is None:
        chosen = [recs[i] for i in sorted({0, len(recs) // 2, len(recs) - 1})]
    else:
        wanted = _steps(steps)
        unknown = [s for s in wanted if s not in by_step]
        if unknown or not wanted:
            raise ValueError(f"Expected `steps` among the recorded steps ({recs[0].step} .. "
                             f"{recs[-1].step}, {len(recs)} records), but got {unknown or wanted}.")
        chosen = [by_step[s] for s in sorted(set(wanted))]
    if which == "act_norm" and all(value(r, n, which) is None for r in chosen for n in names):
        raise ValueError("Expected activation-gradient norms, but these records have none "
                         "(recorded with activations=False?); use which='norm'.")
    if which != "norm":
        vanishing = exploding = None
    rel_v = _relative("relative_vanishing", getattr(thresholds, "relative_vanishing", None)
                      if relative_vanishing is None else relative_vanishing)
    rel_e = _relative("relative_exploding", getattr(thresholds, "relative_exploding", None)
                      if relative_exploding is None else relative_exploding)
    if roles is not None and not isinstance(roles, Mapping):
        raise TypeError(f"Expected `roles` to map layer name -> role (a run header's "
                        f"\"roles\"), but got {type(roles).__name__}.")
    if head is not None and head not in names:
        raise ValueError(f"Expected `head` among the recorded layers (e.g. {names[-3:]}), but "
                         f"got {head!r}.")

    fig, ax = new_axes(ax, (min(9.5 + 0.1 * len(names), 18), 5.5 if len(names) <= 20 else 7.5))
    size = 70 if len(names) <= 30 else 30
    x = np.arange(len(names))
    shades = colormaps["YlGn"](np.linspace(0.45, 0.95, len(chosen)))
    labelled: set[str] = set()
    all_y: list[float] = []
    refs = []
    for r, color in zip(chosen, shades):
        ref = depth_reference(r, names, which, relative_vanishing=rel_v,
                              relative_exploding=rel_e, roles=roles, head=head)
        if ref is not None:
            refs.append((ref, color))
        y, nonfinite, zero = split([value(r, n, which) for n in names])
        all_y.extend(y[np.isfinite(y)])
        draw_series(ax, x, y, marker="o" if len(names) <= 60 else None, ms=3, lw=1.6,
                    color=color, label=f"step {r.step}")
        edge_marks(ax, x, nonfinite, zero, color, labelled)
        _flagged(ax, r, names, y, nonfinite, zero, size, labelled)
    born = next((r for r in recs if r.first_nonfinite in r.layers), None)
    if born is not None:  # the first birth: later non-finite steps may be its consequences
        ax.axvline(names.index(born.first_nonfinite), color="black", ls=":", lw=1.2,
                   label=f"NaN/Inf born here (step {born.step}, the first non-finite step): "
                         f"{short(born.first_nonfinite)}")

    near = [b for ref, _ in refs[-1:] for b in (ref.vanishing, ref.exploding)]
    lo, hi = log_limits(all_y, vanishing, exploding, *near)
    ax.set_yscale("log")
    ax.set_ylim(lo, hi)
    log_ticks(ax.yaxis)
    if refs and (rel_v is not None or rel_e is not None):
        relative_bounds(ax, refs, lo, hi, rel_v, rel_e)
    absolute_bounds(ax, lo, hi, vanishing, exploding)
    ax.set_xlim(-0.5, len(names) - 0.5)
    name_ticks(ax.xaxis, names)
    ax.tick_params(axis="x", labelrotation=90, labelsize=8 if len(names) <= 20 else 7)
    ax.set_xlabel("layer, in forward order (input → output)")
    ax.set_ylabel(WHICH_LABEL[which] + " (log)")
    ax.set_title(title or f"Gradient flow across {len(names)} layers")
    ax.grid(True, which="major", axis="y", alpha=0.3)
    legend(ax, [f"step {r.step}" for r in chosen])
    return finish(fig, path)


FLAG_EDGE = {"top": 1.0, "bottom": 0.0}  # axes fraction: on the spine, not a value


def _flagged(ax: Axes, record: StepRecord, names: Sequence[str], y: np.ndarray,
             nonfinite: np.ndarray, zero: np.ndarray, size: float, labelled: set[str]) -> None:
    """Marks the layers ``record`` flags: on their norm where the log axis can draw it, else
    centred on the edge its edge mark is by (NaN/Inf: top, zero: bottom), where no marker can
    be read as a value. One scatter per status and place, each kind labelled once; a layer with
    no value at this step gets no marker."""
    groups: dict[tuple[str, str], tuple[Any, list[int]]] = {}
    for i, n in enumerate(names):
        stat = record.layers.get(n)
        if stat is None or stat.status is Status.OK:
            continue
        where = "" if np.isfinite(y[i]) else "top" if nonfinite[i] else \
            "bottom" if zero[i] else None
        if where is not None:
            style = status_style(stat.status)
            groups.setdefault((style.label, where), (style, []))[1].append(i)
    edge = ax.get_xaxis_transform()  # x in data units, y in axes fraction
    for (name, where), (style, idx) in groups.items():
        label = f"flagged {name}" + {"": "", "top": " (NaN/Inf norm, on the top edge)",
                                     "bottom": " (zero norm, on the bottom edge)"}[where]
        ys = y[idx] if not where else np.full(len(idx), FLAG_EDGE[where])
        ax.scatter(idx, ys, marker=style.marker, s=size, color=style.color, edgecolors="black",
                   zorder=4, label=None if label in labelled else label,
                   **({} if not where else {"transform": edge, "clip_on": False}))
        labelled.add(label)


def _steps(steps: Any) -> list[int]:
    """``steps`` (one step or several; numpy integers too) as a list of ints, or a clear error."""
    try:
        return [operator.index(steps)]
    except TypeError:
        pass
    if isinstance(steps, (str, bytes)) or not isinstance(steps, Iterable):
        raise TypeError(f"Expected `steps` to be a step number or a list of them, but got "
                        f"{steps!r} ({type(steps).__name__}).")
    out = []
    for s in steps:
        try:
            out.append(operator.index(s))
        except TypeError:
            raise TypeError(f"Expected `steps` to hold whole step numbers, but got {s!r} "
                            f"({type(s).__name__}).") from None
    return out


def _relative(name: str, factor: Any) -> float | None:
    """A relative bound as a float > 0 (None: no band), or a clear error naming it."""
    if factor is None:
        return None
    if isinstance(factor, bool) or not isinstance(factor, (int, float, np.number)):
        raise TypeError(f"Expected `{name}` to be a number (a factor of the output side's "
                        f"median norm), but got {factor!r} ({type(factor).__name__}).")
    value = float(factor)
    if not 0 < value < math.inf:
        raise ValueError(f"Expected `{name}` to be a factor > 0 and finite, but got {value!r}.")
    return value
