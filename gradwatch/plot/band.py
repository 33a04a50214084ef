"""The band of `plot_norms(band=True)`: every layer at once, a median line over a min–max range.

The median and the range are over every layer with a value at the step, zeros included: a layer
whose gradient is exactly 0 is the range's minimum and counts in the median, as it does in
numpy's median. What a log axis cannot show is drawn at its edges, never dropped: a zero
minimum takes the shaded range down to the bottom edge, and the steps where some layer's norm is
0 get a ``0`` there; steps where some layer's norm is NaN or Inf get a black ``X`` at the top
(a NaN layer has no value, so it is out of the median; an Inf one is in it, and in the max).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from ._common import draw_series, edge_marks

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["band_stats", "draw_band"]


def band_stats(per_step: Sequence[Sequence[float | None]]
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(min, median, max, count) per step over the layers with a value (not None, not NaN;
    zeros and Inf included), NaN where a step has none."""
    table = np.array([[np.nan if v is None else v for v in row] for row in per_step],
                     dtype=float).reshape(len(per_step), -1)
    count = (~np.isnan(table)).sum(axis=1)
    lo = np.full(len(table), np.nan)
    mid, hi = lo.copy(), lo.copy()
    ok = count > 0
    if ok.any():
        rows = table[ok]
        lo[ok], hi[ok] = np.nanmin(rows, axis=1), np.nanmax(rows, axis=1)
        mid[ok] = np.nanmedian(rows, axis=1)
    return lo, mid, hi, count


def draw_band(ax: Axes, x: np.ndarray, per_step: Sequence[Sequence[float | None]], n: int,
              all_y: list[float], labelled: set[str]) -> tuple[str, str]:
    """Draws the band of ``per_step`` (one row of layer values per step; see the module
    docstring); returns its (median, range) legend labels. A step whose neighbours have no
    range gets a vertical bar, so a one-record run still shows it."""
    table = np.array([[np.nan if v is None else v for v in row] for row in per_step],
                     dtype=float).reshape(len(per_step), -1)
    lo, mid, hi, count = band_stats(per_step)
    of = f"{n} layers" + ("" if bool((count == n).all()) else " (NaN left out)")
    labels = (f"median of {of}", f"min–max of {of}")
    # the log axis: a zero (or negative) edge is drawn at the bottom, an infinite one not at all
    lo_drawn = np.where(np.isfinite(lo) & (lo <= 0), 1e-300, lo)
    hi_drawn = np.where(np.isfinite(hi), hi, np.nan)
    lo_drawn = np.where(np.isnan(hi_drawn), np.nan, lo_drawn)
    ax.fill_between(x, lo_drawn, hi_drawn, color="tab:blue", alpha=0.2, lw=0, label=labels[1])
    has = np.isfinite(hi_drawn)
    alone = has & ~np.r_[False, has[:-1]] & ~np.r_[has[1:], False]
    if alone.any():
        ax.vlines(x[alone], lo_drawn[alone], hi_drawn[alone], color="tab:blue", alpha=0.35,
                  lw=6)
    median = np.where(np.isfinite(mid) & (mid > 0), mid, np.nan)
    draw_series(ax, x, median, lw=1.4, color="tab:blue", label=labels[0])
    nonfinite = np.isinf(table).any(axis=1) | _recorded_nan(per_step)
    zero = (np.isfinite(table) & (table <= 0)).any(axis=1)
    edge_marks(ax, x, nonfinite, zero, "tab:blue", labelled,
               labels=("a layer's norm non-finite (drawn at top)",
                       "a layer's norm zero (drawn at bottom)"))
    all_y.extend(float(v) for v in np.concatenate([lo, mid, hi]) if np.isfinite(v) and v > 0)
    return labels


def _recorded_nan(per_step: Sequence[Sequence[float | None]]) -> np.ndarray:
    """Per step: whether some layer recorded NaN (not: has no value, None)."""
    return np.array([any(v is not None and v != v for v in row) for row in per_step], dtype=bool)
