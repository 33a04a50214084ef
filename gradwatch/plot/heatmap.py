"""Layer x step heat map of the gradient norm (log colour scale), for deep models and long runs."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from ..record.records import StepRecord
from ._common import (WHICH_LABEL, Which, finish, layered_records, name_ticks, new_axes, plural,
                      value)
from .ticks import log10_ticks

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["ZERO_COLOUR", "plot_heatmap"]

ZERO_COLOUR = "magenta"  # zero norms: off the log scale, and unlike white visible on the page


def plot_heatmap(records: Iterable[StepRecord], *, which: Which = "norm",
                 thresholds: Any = None, vanishing: float | None = None,
                 exploding: float | None = None, cmap: str = "viridis", ax: Axes | None = None,
                 path: str | os.PathLike[str] | None = None, title: str | None = None) -> Figure:
    """Layer x step heat map of the gradient norm on a log colour scale, for deep models and
    long runs.

    Rows are layers in forward order (input at the top), columns recorded steps. Non-finite
    cells are red, zero norms magenta (`ZERO_COLOUR`), layers not recorded at a step light
    grey. The absolute thresholds, when given, are drawn as outlined white lines on the colour
    bar.

    A long run has more steps than the axes have pixels, and an image resampled to that size
    keeps one column in every few: a one-step NaN would be counted in the legend but not drawn.
    So when the figure is drawn (or saved), consecutive steps are merged into columns two pixels
    wide at that resolution (layers into rows, for more layers than pixel rows): a column is
    red if any of its cells is non-finite, else magenta if any is zero, else coloured by the
    largest finite norm among its cells (a norm that was recorded, so a one-step spike stays
    visible), else grey (nothing recorded); the axis label says how many steps (layers) one
    holds. Where the cells fit, nothing is merged (`gradwatch.plot.pixels`).

    Args:
        records: Recorded steps, e.g. ``watch.history`` or ``list(read_jsonl(path))``.
        which: ``"norm"`` (parameter gradients) or ``"act_norm"`` (gradient w.r.t. the output).
        thresholds: An object with ``vanishing``/``exploding`` attributes (e.g. `Thresholds`).
        vanishing: Lower bound to mark on the colour bar (overrides ``thresholds``).
        exploding: Upper bound to mark on the colour bar (overrides ``thresholds``).
        cmap: A matplotlib colour map name for the finite values (one without red or
            magenta keeps the flagged cells apart).
        ax: Axes to draw into; a new figure when omitted.
        path: Where to save a PNG.
        title: Figure title; a descriptive default when omitted.

    Returns:
        The figure.

    Raises:
        ValueError: No records or no per-layer statistics.
    """
    from matplotlib import colormaps, patheffects
    from matplotlib.colors import Normalize
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import FixedLocator, FuncFormatter
    from matplotlib.transforms import offset_copy

    from .pixels import PixelBins

    recs, names, vanishing, exploding = layered_records(records, which, thresholds, vanishing,
                                                        exploding)
    logs, nonfinite, zero, missing = _cells(recs, names, which)
    if which == "act_norm" and missing.all():
        raise ValueError("Expected activation-gradient norms, but these records have none "
                         "(recorded with activations=False?); use which='norm'.")
    finite = logs[np.isfinite(logs)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (-1.0, 1.0)
    if vmax - vmin < 1e-9:
        vmin, vmax = vmin - 0.5, vmax + 0.5

    fig, ax = new_axes(ax, (11, max(4.0, min(2.5 + 0.1 * len(names), 9.0))))

    def say_bins(rows: tuple[int, int], cols: tuple[int, int]) -> None:
        ax.set_xlabel("optimizer step" + _merged(cols, "recorded steps per column"))
        ax.set_ylabel("layer, in forward order (input at top)" + _merged(rows, "layers per row"))

    image = PixelBins(ax, logs, nonfinite, zero, under=vmin - 1, over=vmax + 1,
                      on_bins=say_bins, interpolation="nearest", norm=Normalize(vmin, vmax),
                      cmap=colormaps[cmap].with_extremes(over="red", under=ZERO_COLOUR,
                                                         bad="lightgrey"))
    image.set_clip_path(ax.patch)
    ax.add_image(image)
    ax.set_aspect("auto")
    ax.set_xlim(-0.5, len(recs) - 0.5)
    ax.set_ylim(len(names) - 0.5, -0.5)
    bar = fig.colorbar(image, ax=ax, label=f"{WHICH_LABEL[which]} (log colour scale)")
    log10_ticks(bar.ax.yaxis)
    marked = [(b, label) for b, label in ((vanishing, "vanishing"), (exploding, "exploding"))
              if which == "norm" and b is not None and vmin <= math.log10(b) <= vmax]
    outlined = [patheffects.withStroke(linewidth=3.5, foreground="black")]
    for bound, _label in marked:
        bar.ax.axhline(math.log10(bound), color="white", lw=1.5, path_effects=outlined)
    step_of = [r.step for r in recs]
    columns = np.unique(np.linspace(0, len(recs) - 1, min(len(recs), 12)).round().astype(int))
    ax.xaxis.set_major_locator(FixedLocator(columns))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: str(step_of[int(round(v))])))
    name_ticks(ax.yaxis, names, most=30)
    ax.tick_params(axis="y", labelsize=8 if len(names) <= 20 else 7)
    ax.set_title(title or f"Gradient norm per layer and step "
                          f"({plural(len(names), 'layer')} x {plural(len(recs), 'step')})")
    special = [(nonfinite, "red", "non-finite"), (zero, ZERO_COLOUR, "zero norm"),
               (missing, "lightgrey", "not recorded")]
    handles = [Patch(facecolor=c, edgecolor="black",
                     label=f"{label} ({plural(int(m.sum()), 'cell')})")
               for m, c, label in special if m.any()]
    if marked:
        handles.append(Line2D([], [], color="white", lw=1.5, path_effects=outlined,
                              label="absolute bounds on colour bar: " + ", ".join(
                                  f"{label} {b:g}" for b, label in marked)))
    if handles:
        below = offset_copy(ax.transAxes, fig=fig, y=-36, units="points")  # under the xlabel
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.0, 0.0), ncol=3,
                  bbox_transform=below, fontsize="small", frameon=False)
    return finish(fig, path)


def _merged(per_bin: tuple[int, int], what: str) -> str:
    """An axis label's note on merged cells: "" when each bin is one cell."""
    least, most = per_bin
    if most == 1:
        return ""
    count = f"{least}" if least == most else f"{least}–{most}"
    return f" ({count} {what}: the largest norm, red / magenta if any is non-finite / zero)"


def _cells(recs: list[StepRecord], names: list[str], which: str
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(log10 norms with NaN where not drawn by value, non-finite, zero, not recorded), layers
    by records, filled one record at a time into arrays made once: a 400-layer x 100k-step
    map holds a few matrices of its size, not a list of per-record arrays besides them."""
    raw = np.full((len(names), len(recs)), np.nan)
    missing = np.zeros(raw.shape, dtype=bool)
    for j, r in enumerate(recs):
        values = [value(r, n, which) for n in names]
        missing[:, j] = [v is None for v in values]
        raw[:, j] = [math.nan if v is None else v for v in values]
    nonfinite = ~np.isfinite(raw) & ~missing
    zero = (raw <= 0) & ~nonfinite
    raw[nonfinite | zero] = np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        np.log10(raw, out=raw)
    return raw, nonfinite, zero, missing

