"""Figures drawn from `StepRecord`s (flow over depth, norms over steps, layer x step map) and
per-layer value histograms per epoch.

Plotting only reads records (live ``watch.history`` or ``read_jsonl(path)``); matplotlib is
imported inside the functions, so ``import gradwatch`` never pulls it in. Every function returns a
`matplotlib.figure.Figure` and saves a PNG to ``path=`` when given; all but `plot_histograms` (a
panel per layer) draw into ``ax=`` when given. The records must be one run, in increasing step
order. Values a log axis cannot show are drawn at its edges: non-finite norms as a black ``X`` at
the top, zero norms as a ``0`` at the bottom; a point with no finite neighbour gets a marker.
Layer statuses take their colour and label from the status table of `gradwatch.record.records`;
a status without an entry is drawn in a neutral grey (the log reader skips a line whose status
this version does not know).
"""

from __future__ import annotations

from .flow import plot_flow
from .heatmap import plot_heatmap
from .hist import Histogram, plot_histograms
from .loss import plot_loss
from .norms import global_clip_level, plot_norms

__all__ = ["Histogram", "global_clip_level", "plot_flow", "plot_heatmap", "plot_histograms",
           "plot_loss", "plot_norms"]
