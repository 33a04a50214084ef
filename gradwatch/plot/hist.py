"""Per-layer weight (or gradient) histograms, one line per epoch: the Keras tutorial's view."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from ._common import finish, plural, short

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["Histogram", "plot_histograms", "LEGEND_EPOCHS"]

LEGEND_EPOCHS = 8  # up to this many epochs get a legend entry each; more a colour bar


@dataclass(frozen=True)
class Histogram:
    """Bin counts over bin edges (``len(edges) == len(counts) + 1``), as plain floats.

    Attributes:
        counts: How many values fell in each bin.
        edges: Increasing bin edges.
    """

    counts: tuple[float, ...]
    edges: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.edges) != len(self.counts) + 1 or not self.counts:
            raise ValueError(f"Expected `edges` to have one more entry than `counts` (>= 1 bin), "
                             f"but got {len(self.edges)} edges for {len(self.counts)} counts.")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:])):
            raise ValueError("Expected increasing `edges`, but got a bin of width <= 0.")

    @classmethod
    def of(cls, values: Sequence[float] | np.ndarray, bins: int = 40) -> Histogram:
        """The histogram of raw ``values`` (non-finite ones dropped) in ``bins`` equal bins."""
        arr = np.asarray(values, dtype=float).ravel()
        arr = arr[np.isfinite(arr)]
        if arr.size == 0:
            raise ValueError("Expected at least one finite value to histogram, but got none.")
        lo, hi = float(arr.min()), float(arr.max())
        if hi - lo < 1e-12 * max(1.0, abs(lo)):
            lo, hi = lo - 0.5, hi + 0.5
        counts, edges = np.histogram(arr, bins=bins, range=(lo, hi))
        return cls(tuple(map(float, counts)), tuple(map(float, edges)))

    @classmethod
    def coerce(cls, data: Any) -> Histogram:
        """A `Histogram` from itself, ``{"counts", "edges"}`` (results.json), a ``(counts,
        edges)`` pair (tuple or list, ``len(edges) == len(counts) + 1``), or raw values."""
        if isinstance(data, Histogram):
            return data
        if isinstance(data, Mapping):
            missing = [k for k in ("counts", "edges") if k not in data]
            if missing:
                raise ValueError(f"Expected a histogram dict with keys 'counts' and 'edges', "
                                 f"but it has no {' or '.join(map(repr, missing))} (keys: "
                                 f"{sorted(map(str, data))}).")
            return cls(tuple(map(float, data["counts"])), tuple(map(float, data["edges"])))
        if (isinstance(data, (tuple, list)) and len(data) == 2 and np.ndim(data[0]) == 1
                and np.ndim(data[1]) == 1 and len(data[1]) == len(data[0]) + 1):
            return cls(tuple(map(float, data[0])), tuple(map(float, data[1])))
        try:
            np.asarray(data, dtype=float)
        except (ValueError, TypeError):
            raise ValueError(f"Expected a histogram: a (counts, edges) pair with one more edge "
                             f"than counts, {{'counts', 'edges'}}, or raw values (an array), but "
                             f"got a ragged {type(data).__name__} that is none of these.") from None
        return cls.of(data)

    def to_dict(self) -> dict[str, list[float]]:
        return {"counts": list(self.counts), "edges": list(self.edges)}


def plot_histograms(histograms: Mapping[str, Mapping[Any, Any]], *, quantity: str = "weight",
                    layers: Sequence[str] | None = None, max_layers: int = 6, columns: int = 3,
                    path: str | os.PathLike[str] | None = None,
                    title: str | None = None) -> Figure:
    """One panel per layer, one line per epoch (light: early, dark: late) of a value histogram.

    The Keras MNIST tutorial's per-layer weight histograms: in the vanishing case the input-side
    layers' distributions barely move between epochs while the output side's spread out.

    Args:
        histograms: ``{layer: {epoch: histogram}}`` in forward and epoch order; a histogram is a
            `Histogram`, ``{"counts": [...], "edges": [...]}`` (as stored in ``results.json``),
            a ``(counts, edges)`` pair, or the raw values.
        quantity: What was histogrammed, for the labels ("weight", "gradient").
        layers: Layers to draw; default ``max_layers`` spread evenly from input to output.
        max_layers: How many layers the default picks.
        columns: Panels per row.
        path: Where to save a PNG.
        title: Figure title; a descriptive default when omitted.

    Returns:
        The figure. Each line is the fraction of the layer's values per bin, so epochs with
        different value counts compare. Up to `LEGEND_EPOCHS` epochs are named in a legend, more
        on a colour bar; panel titles read ``index: layer`` and the figure title says when only
        some of the layers are shown (a custom ``title`` too).

    Raises:
        ValueError: No layers, a layer without epochs, an unknown layer, or bad bins.
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    names = list(histograms)
    if not names:
        raise ValueError("Expected `histograms` to hold at least one layer, but got none.")
    if layers is None:
        if max_layers < 1:
            raise ValueError(f"Expected `max_layers` >= 1, but got {max_layers}.")
        keep = np.unique(np.linspace(0, len(names) - 1, min(len(names), max_layers)).round())
        shown = [names[int(i)] for i in keep]
    else:
        unknown = [n for n in layers if n not in histograms]
        if unknown or not layers:
            raise ValueError(f"Expected `layers` among {names[:5]}, but got {unknown or layers}.")
        shown = list(layers)
    data = {n: {e: Histogram.coerce(h) for e, h in histograms[n].items()} for n in shown}
    empty = [n for n, per in data.items() if not per]
    if empty:
        raise ValueError(f"Expected at least one epoch per layer, but {empty[:3]} have none.")
    epochs = list(dict.fromkeys(e for per in data.values() for e in per))
    cols = max(1, min(columns, len(shown)))
    rows = math.ceil(len(shown) / cols)
    fig = Figure(figsize=(3.6 * cols + 1.0, 2.8 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    shade = colormaps["viridis_r"]
    norm = Normalize(0, max(len(epochs) - 1, 1))
    for ax, name in zip(axes, shown):
        for e, h in data[name].items():
            counts = np.asarray(h.counts)
            frac = counts / counts.sum() if counts.sum() > 0 else counts
            ax.stairs(frac, h.edges, color=shade(norm(epochs.index(e))), lw=1.3,
                      label=f"epoch {e}")
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
        ax.set_title(f"{names.index(name)}: {short(name, 28)}", fontsize=9)
        ax.set_xlabel(f"{quantity} value", fontsize=8)
        ax.set_ylabel("fraction per bin", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
    for ax in axes[len(shown):]:
        ax.set_visible(False)
    if len(epochs) <= LEGEND_EPOCHS:
        handles, labels = axes[0].get_legend_handles_labels()
        order = [labels.index(f"epoch {e}") for e in epochs if f"epoch {e}" in labels]
        fig.legend([handles[i] for i in order], [labels[i] for i in order], loc="outside right",
                   fontsize="small")
    else:
        bar = fig.colorbar(ScalarMappable(norm=norm, cmap=shade), ax=list(axes[:len(shown)]),
                           shrink=0.9)
        ticks = np.unique(np.linspace(0, len(epochs) - 1, 6).round().astype(int))
        bar.set_ticks(ticks.tolist(), labels=[str(epochs[i]) for i in ticks])
        bar.set_label("epoch")
    subset = (f"{len(shown)} of {len(names)} layers shown (evenly spaced, input to output); "
              f"panel title: layer index: name" if len(shown) < len(names)
              else f"all {plural(len(names), 'layer')} shown")
    head = title or (f"{quantity.capitalize()} histogram per layer and epoch "
                     f"({plural(len(epochs), 'epoch')})")
    fig.suptitle(f"{head}\n{subset}", fontsize=11)
    return finish(fig, path)
