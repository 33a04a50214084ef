"""Per-layer and total gradient norms over training steps, with clip, spike and NaN events."""

from __future__ import annotations

import math
import operator
import os
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from ..record.records import StepRecord
from ._common import (WHICH_LABEL, Which, check_records, check_which, draw_series, edge_marks,
                      finish, layer_order, legend, log_limits, new_axes, plural, short, split,
                      value)
from .band import draw_band
from .ticks import log_ticks

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_norms", "global_clip_level"]


def global_clip_level(clip: Any) -> float | None:
    """The fixed global max norm a run clipped at, else None.

    ``clip`` is what the run was given or what its log header says under ``options.clip``: a
    number (``clip=1.0``), a ``GlobalNorm`` (or its repr, ``"GlobalNorm(max_norm=1)"``). Other
    policies (per-tensor, adaptive, ``"auto"``) have no single level: None.
    """
    if isinstance(clip, bool) or clip is None:
        return None
    if isinstance(clip, (int, float)):
        level = float(clip)
    elif type(clip).__name__ == "GlobalNorm":
        level = float(clip.max_norm)
    elif isinstance(clip, str) and clip.startswith("GlobalNorm(") and clip.endswith(")"):
        try:
            level = float(clip[len("GlobalNorm("):-1].split(",")[0].split("=")[-1])
        except ValueError:
            return None
    else:
        return None
    return level if 0 < level < math.inf else None


def plot_norms(records: Iterable[StepRecord], *, layers: Sequence[str] | None = None,
               which: Which = "norm", max_layers: int = 8, ax: Axes | None = None,
               path: str | os.PathLike[str] | None = None, title: str | None = None,
               clip_level: float | None = None, band: bool = False) -> Figure:
    """Per-layer gradient norms over training steps on a log scale, with events marked.

    The total norm is the bold black line, drawn under the layers' lines (a layer that carries
    nearly all the gradient lies on it); where clipping acted, the dashed line is the total
    after clipping (``total_norm * clip_coef``) and an orange strip along the bottom edge marks
    the clipped steps. Red
    vertical lines mark steps with non-finite gradients (orange dotted for AMP loss-scale
    overflows), grey dashed lines skipped steps, red stars spikes of the total norm.

    Args:
        records: Recorded steps, e.g. ``watch.history`` or ``list(read_jsonl(path))``.
        layers: Layer names to draw; default ``max_layers`` layers evenly spread over depth (the
            legend and the default title say how many of how many are shown), none with ``band``.
        which: ``"norm"`` (parameter gradients) or ``"act_norm"`` (gradient w.r.t. the output).
        max_layers: How many layers the default picks; layers are coloured by depth.
        ax: Axes to draw into; a new figure when omitted.
        path: Where to save a PNG.
        title: Figure title; a descriptive default when omitted.
        clip_level: The global max norm the run clipped at (``GradWatch(clip=1.0)``), drawn as
            a horizontal line, so the steps whose total crossed it read off the figure
            (`global_clip_level` reads it from a policy or a log header's ``options.clip``).
        band: Draw every layer at once as the median over layers with the min–max range
            shaded, for many layers whose lines would lie on each other; ``layers`` are drawn
            as lines on top. Both are over every layer with a value, zeros included; zero and
            NaN/Inf layers are marked at the edges (`gradwatch.plot.band`).

    Returns:
        The figure.

    Raises:
        ValueError: No records, records not in increasing step order (several runs), an
            unknown layer name, ``max_layers`` < 0, or ``clip_level`` < 0.
        TypeError: ``layers`` given as one string, or a non-number ``max_layers`` or
            ``clip_level``.
    """
    from matplotlib import colormaps
    from matplotlib.ticker import MaxNLocator

    recs = check_records(records)
    check_which(which)
    names = layer_order(recs)
    clip_level = _check_level(clip_level)
    if layers is None and band:
        shown = []
    elif layers is None:
        max_layers = _check_count(max_layers)
        keep = np.unique(np.linspace(0, len(names) - 1, min(len(names), max_layers)).round())
        shown = [names[int(i)] for i in keep] if names and max_layers else []
    else:
        if isinstance(layers, str):
            raise TypeError(f"Expected `layers` to be a list of layer names, but got the string "
                            f"{layers!r}; pass [{layers!r}].")
        unknown = [n for n in layers if n not in names]
        if unknown:
            raise ValueError(f"Expected `layers` among the recorded layers (e.g. {names[:5]}), "
                             f"but got unknown names {unknown[:5]}.")
        shown = list(layers)

    fig, ax = new_axes(ax, (11, 5.5))
    x = np.array([r.step for r in recs], dtype=float)
    labelled: set[str] = set()
    all_y: list[float] = []
    depth = colormaps["viridis"]
    band_labels = [f"median of {len(names)} layers", f"min–max of {len(names)} layers"]
    if band and names:
        band_labels = list(draw_band(ax, x, [[value(r, n, which) for n in names] for r in recs],
                                     len(names), all_y, labelled))
    for n in shown:
        y, nonfinite, zero = split([value(r, n, which) for r in recs])
        color = depth(0.9 * names.index(n) / max(len(names) - 1, 1))
        all_y.extend(y[np.isfinite(y)])
        draw_series(ax, x, y, lw=1, color=color, label=short(n))
        edge_marks(ax, x, nonfinite, zero, color, labelled)
        spiked = np.array([bool(r.layers.get(n) and r.layers[n].spike) for r in recs])
        if spiked.any() and which == "norm":
            ax.scatter(x[spiked], y[spiked], marker="*", s=50, color=color, edgecolors="black",
                       zorder=4, label=None if "layer spike" in labelled else "layer spike")
            labelled.add("layer spike")

    total, t_nonfinite, t_zero = split([r.total_norm for r in recs])
    all_y.extend(total[np.isfinite(total)])
    # under the layer lines: a layer that carries nearly all the gradient (often the head) has
    # the total's norm, and a thin line drawn over the bold one stays visible
    draw_series(ax, x, total, lw=2.6, color="black", label="total (all layers)", zorder=1.9)
    edge_marks(ax, x, t_nonfinite, t_zero, "black", labelled)
    clipped = np.array([r.clipped for r in recs])
    if clipped.any():
        after = total * np.array([r.clip_coef for r in recs])
        draw_series(ax, x, after, lw=1.2, ls="--", color="black", label="total after clipping")
        _rug(ax, x, clipped, f"clipped ({int(clipped.sum())} of {len(recs)} steps)")
    if clip_level is not None:
        ax.axhline(clip_level, color="tab:orange", lw=1.2, ls="-.",
                   label=f"clip level (max norm {clip_level:g})")
        all_y.append(clip_level)
    spikes = np.array([r.spike for r in recs])
    if spikes.any():
        ax.scatter(x[spikes], np.where(np.isfinite(total[spikes]), total[spikes], np.nan),
                   marker="*", s=140, color="tab:red", edgecolors="black", zorder=5,
                   label="spike in total norm")
    bad = np.array([not math.isfinite(r.total_norm) or r.first_nonfinite is not None
                    for r in recs])
    amp = np.array([r.amp_overflow for r in recs]) & bad
    edge = ax.get_xaxis_transform()
    for mask, style, label in ((bad & ~amp, dict(color="tab:red", ls="-", alpha=0.5),
                                "non-finite gradients"),
                               (amp, dict(color="tab:orange", ls=":"), "AMP overflow"),
                               (np.array([r.skipped for r in recs]),
                                dict(color="gray", ls="--"), "step skipped")):
        if mask.any():
            ax.vlines(x[mask], 0, 1, transform=edge, lw=1.2, **style,
                      label=f"{label} ({plural(int(mask.sum()), 'step')})")

    ax.set_yscale("log")
    ax.set_ylim(*log_limits(all_y))
    log_ticks(ax.yaxis)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(WHICH_LABEL[which] + " (log)")
    hidden = (f" (all {len(names)} layers: median and range)" if band else
              f" ({len(shown)} of {len(names)} layers shown)" if len(shown) < len(names) else "")
    ax.set_title(title or f"Gradient norms over {len(recs)} recorded steps{hidden}")
    ax.grid(True, which="major", alpha=0.3)
    heading = None
    if band:
        heading = f"{len(names)} layers (colour = depth)"
    elif shown:  # the legend says it is a subset even under a custom title
        heading = ("layer (colour = depth)" if not hidden else
                   f"layer (colour = depth;\n{len(shown)} of {len(names)} shown, evenly spaced)")
    legend(ax, band_labels + [short(n) for n in shown] + ["total (all layers)"], title=heading)
    return finish(fig, path)


def _check_count(max_layers: Any) -> int:
    """``max_layers`` as an int >= 0 (numpy integers too), or a clear error naming it."""
    try:
        count = operator.index(max_layers)
    except TypeError:
        raise TypeError(f"Expected `max_layers` to be a whole number >= 0, but got "
                        f"{max_layers!r} ({type(max_layers).__name__}).") from None
    if count < 0 or isinstance(max_layers, bool):
        raise ValueError(f"Expected `max_layers` to be a whole number >= 0, but got "
                         f"{max_layers!r}.")
    return count


def _check_level(clip_level: Any) -> float | None:
    """``clip_level`` as a positive float (None, 0 and inf: no line), or a clear error."""
    if clip_level is None:
        return None
    if isinstance(clip_level, bool) or not isinstance(clip_level, (int, float, np.number)):
        raise TypeError(f"Expected `clip_level` to be a number (the max norm clipped at), but "
                        f"got {clip_level!r} ({type(clip_level).__name__}).")
    level = float(clip_level)
    if math.isnan(level) or level < 0:
        raise ValueError(f"Expected `clip_level` to be a max norm >= 0 (0 or inf: no line), "
                         f"but got {level!r}.")
    return level if 0 < level < math.inf else None


def _rug(ax: Axes, x: np.ndarray, mask: np.ndarray, label: str) -> None:
    """Marks the masked steps as a strip along the bottom edge, out of the lines' way.

    Runs of consecutive masked records merge into one bar, so a run clipped at every step reads
    as one strip rather than a marker on every point of the total-norm line.
    """
    spans, start = [], None
    half = np.diff(x).min() / 2 if len(x) > 1 else 0.5
    for i, m in enumerate(mask):
        if m and start is None:
            start = i
        if start is not None and (not m or i == len(mask) - 1):
            end = i if m else i - 1
            spans.append((x[start] - half, x[end] - x[start] + 2 * half))
            start = None
    ax.broken_barh(spans, (0.0, 0.025), transform=ax.get_xaxis_transform(), color="tab:orange",
                   label=label, zorder=4)
