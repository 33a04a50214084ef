"""The heat map's image: layer x step cells merged, when drawn, into bins that each show.

An image of more columns than the axes have pixels is resampled to nearest neighbour, which keeps
one column in every few: a one-step NaN counted in the legend would not be drawn. `PixelBins`
reduces the cells to bins at least a pixel high and `COLUMN_PIXELS` wide at the resolution the
axes is drawn (or saved) at, so every bin is seen; a bin takes the flag or the largest value of
its cells (`reduce_bins`). Only `gradwatch.plot.heatmap` imports this module, inside its
function, since it imports matplotlib (``import gradwatch.plot`` does not).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from matplotlib.image import AxesImage

__all__ = ["COLUMN_PIXELS", "PixelBins", "bin_starts", "reduce_bins"]

COLUMN_PIXELS = 2  # a step column is at least this wide: a one-step NaN reads as a red tick


def bin_starts(n: int, bins: int) -> np.ndarray:
    """The first cell of each of ``bins`` (<= ``n``) runs of consecutive cells that split
    ``n`` cells as evenly as they can (the runs differ by at most one cell): bin ``j`` holds the
    cells ``i`` with ``i * bins // n == j``, so bins drawn equally wide sit within a cell of
    their cells."""
    return (np.arange(bins) * n + bins - 1) // bins


def reduce_bins(logs: np.ndarray, nonfinite: np.ndarray, zero: np.ndarray, rows: int, cols: int,
                *, under: float, over: float) -> np.ndarray:
    """``logs`` (layers x steps, NaN where not drawable) reduced to ``rows`` x ``cols`` bins:
    ``over`` where a bin has a non-finite cell, else ``under`` where it has a zero, else its
    largest finite value, else NaN (nothing recorded). As many bins as cells keep every cell."""
    r, c = bin_starts(logs.shape[0], rows), bin_starts(logs.shape[1], cols)

    def per_bin(ufunc: Any, a: np.ndarray) -> np.ndarray:
        return ufunc.reduceat(ufunc.reduceat(a, r, axis=0), c, axis=1)

    out = per_bin(np.maximum, np.where(np.isnan(logs), -np.inf, logs))
    out[np.isneginf(out)] = np.nan
    out[per_bin(np.logical_or, zero)] = under
    out[per_bin(np.logical_or, nonfinite)] = over
    return out


class PixelBins(AxesImage):
    """An `AxesImage` of layer x step cells (row ``i`` at y = i, column ``j`` at x = j) that,
    each time it is drawn, reduces them to bins at least one pixel high and `COLUMN_PIXELS`
    wide in its axes (`reduce_bins`), and tells ``on_bins(per_row, per_column)`` how many
    cells a bin holds, each as ``(least, most)``, e.g. to say so in an axis label.

    ``under`` and ``over`` are the values the colour map's under (zero) and over (non-finite)
    colours stand for. The image spans the cells' extent whatever the binning, and the bins
    are only recomputed when the pixel size of the axes changes.
    """

    def __init__(self, ax: Any, logs: np.ndarray, nonfinite: np.ndarray, zero: np.ndarray, *,
                 under: float, over: float,
                 on_bins: Callable[[tuple[int, int], tuple[int, int]], None], **kwargs: Any):
        rows, cols = logs.shape
        super().__init__(ax, extent=(-0.5, cols - 0.5, rows - 0.5, -0.5), **kwargs)
        self._cells = (logs, nonfinite, zero)
        self._limits = (under, over)
        self._on_bins = on_bins
        self._shape: tuple[int, int] | None = None
        self.fit()

    def fit(self) -> None:
        """Bins the cells for the axes' current size in pixels (nothing when unchanged)."""
        logs, nonfinite, zero = self._cells
        n_rows, n_cols = logs.shape
        box = self.axes.bbox
        shape = (min(n_rows, max(1, int(box.height))),
                 min(n_cols, max(1, int(box.width / COLUMN_PIXELS))))
        if shape == self._shape:
            return
        self._shape = shape
        under, over = self._limits
        self.set_data(np.ma.masked_invalid(reduce_bins(logs, nonfinite, zero, *shape,
                                                       under=under, over=over)))
        self._on_bins((n_rows // shape[0], -(-n_rows // shape[0])),
                      (n_cols // shape[1], -(-n_cols // shape[1])))

    def draw(self, renderer: Any) -> None:
        self.fit()  # the layout is done and the axes has its size at this output's dpi
        super().draw(renderer)
