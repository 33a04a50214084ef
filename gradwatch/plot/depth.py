"""The depth reference the vanishing/exploding verdicts read, rebuilt from one record.

The depth rules (`gradwatch.verdict.rules`, ``DepthVanishing`` / ``DepthExploding``) compare
the weight layers up to the head with the output side, the last third of them: a layer is
flagged vanishing when its norm is below ``relative_vanishing`` times the output side's median
norm (exploding: above ``relative_exploding`` times it). This module finds that median in a
`StepRecord`, so a figure can draw the bound the verdicts used, not an unrelated absolute one.

Records do not carry layer roles: with ``roles`` (a run header's ``"roles"``, as
`gradwatch.io.loggers.read_runs` returns it) only ``"weight"`` layers count, as in the rules;
without it every layer with a recorded value counts, which is the same for plain MLPs and CNNs
and differs where normalisation or embedding layers sit among the weights.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ..record.records import StepRecord
from ._common import status_style, value

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["DepthReference", "depth_reference", "relative_bounds"]


@dataclass(frozen=True)
class DepthReference:
    """The output side of one record and the relative bounds it sets.

    Attributes:
        step: The record's step.
        layers: Positions (in the plotted layer order) of the layers the rules compare.
        output_side: The last third of ``layers``: the reference.
        median: The output side's median norm.
        vanishing: ``relative_vanishing * median`` (None without a relative bound).
        exploding: ``relative_exploding * median`` (None without a relative bound).
    """

    step: int
    layers: tuple[int, ...]
    output_side: tuple[int, ...]
    median: float
    vanishing: float | None
    exploding: float | None


def depth_reference(record: StepRecord, names: Sequence[str], which: str, *,
                    relative_vanishing: float | None, relative_exploding: float | None,
                    roles: Mapping[str, str] | None = None,
                    head: str | None = None) -> DepthReference | None:
    """The `DepthReference` of ``record`` over ``names``; None where the rules read no trend
    (fewer than three layers, a non-finite or missing value among them, a median of 0).

    ``head`` is the layer whose output is the model's (`GradWatch.head`); default the last.
    """
    end = names.index(head) if head in names else len(names) - 1
    idx = [i for i in range(end + 1) if roles is None or roles.get(names[i]) == "weight"]
    vals = [value(record, names[i], which) for i in idx]
    if roles is None:  # every layer with a value at this step
        idx, vals = [i for i, v in zip(idx, vals) if v is not None], [v for v in vals if v is not None]
    if len(idx) < 3 or any(v is None or not math.isfinite(v) for v in vals):
        return None
    k = max(1, len(idx) // 3)
    median = statistics.median(vals[-k:])
    if median <= 0:
        return None
    return DepthReference(record.step, tuple(idx), tuple(idx[-k:]), median,
                          None if relative_vanishing is None else relative_vanishing * median,
                          None if relative_exploding is None else relative_exploding * median)


def relative_bounds(ax: Axes, refs: Sequence[tuple[DepthReference, Any]], lo: float, hi: float,
                    relative_vanishing: float | None, relative_exploding: float | None) -> None:
    """Shades the relative vanishing/exploding bands of the last reference in ``refs``
    (``(reference, step colour)`` pairs, latest last), draws the other steps' bounds as dashed
    lines in their colours, and the output side's median as a bar over those layers."""
    from matplotlib.patches import Rectangle

    last, color_last = refs[-1]
    x0, x1 = min(last.output_side) - 0.3, max(last.output_side) + 0.3
    ax.hlines(last.median, x0, x1, color="black", lw=2.4,
              label=f"output side's median (last third), step {last.step}: {last.median:.3g}")
    earlier = False
    for name, factor, bound_of, sign in (
            ("vanishing", relative_vanishing, lambda r: r.vanishing, "<"),
            ("exploding", relative_exploding, lambda r: r.exploding, ">")):
        bound = bound_of(last)
        if bound is None:
            continue
        label = f"relative {name} band: {sign} {factor:g} × that median ({bound:.2g})"
        look = _band_look(status_style(name).color, name)
        if lo < bound < hi:
            span = (lo, bound) if name == "vanishing" else (bound, hi)
            ax.axhspan(*span, **look, label=label)
            ax.axhline(bound, color=color_last, ls="--", lw=1.0)
        else:  # a zero-size proxy: the legend still says where the band is
            ax.add_patch(Rectangle((0, 0), 0, 0, **look,
                                   label=f"{label}, {'below' if sign == '<' else 'above'} "
                                         f"the axis"))
        for r, c in refs[:-1]:
            if bound_of(r) is not None and lo < bound_of(r) < hi:
                ax.axhline(bound_of(r), color=c, ls="--", lw=1.0,
                           label=None if earlier else "same bounds at earlier steps (dashed)")
                earlier = True


def _band_look(color: Any, name: str) -> dict[str, Any]:
    """How a relative band is shaded: a faint fill in its status colour, hatched one way for
    vanishing and the other way for exploding, so the two bands are told apart where their pale
    colours look alike, and the lines over them stay readable when a band fills most of the
    axes (a deep run whose output side's median is tiny)."""
    from matplotlib.colors import to_rgba

    return dict(facecolor=to_rgba(color, 0.06), edgecolor=to_rgba(color, 0.4), lw=0,
                hatch="\\\\" if name == "vanishing" else "//")
