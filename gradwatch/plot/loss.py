"""The loss the run passed to gradwatch (``note_loss`` / ``step(loss=)``) over training steps."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Iterable

import numpy as np

from ..record.records import StepRecord
from ._common import check_records, draw_series, finish, new_axes
from .ticks import log_ticks

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["has_loss", "passed_loss", "plot_loss"]


def has_loss(records: Iterable[StepRecord]) -> bool:
    """Whether any record carries a finite loss."""
    return any(r.loss is not None and math.isfinite(r.loss) for r in records)


def passed_loss(records: Iterable[StepRecord]) -> bool:
    """Whether any record carries a loss at all (finite or not): the run passed one."""
    return any(r.loss is not None for r in records)


def _no_loss_message(recs: list[StepRecord]) -> str:
    """Why no loss can be drawn: none was passed, or every one passed is NaN/Inf."""
    carried = sum(r.loss is not None for r in recs)
    if not carried:
        return ("Expected records with a loss, but none carries one; pass the loss with "
                "watch.note_loss(loss) or watch.step(loss=loss).")
    return (f"Expected a finite loss to draw, but the loss is non-finite (NaN/Inf) at all "
            f"{carried} recorded step(s) that carry one (steps {recs[0].step} .. "
            f"{recs[-1].step}); the run diverged or the loss is NaN from the start.")


def plot_loss(records: Iterable[StepRecord], *, ax: Axes | None = None,
              path: str | os.PathLike[str] | None = None, title: str | None = None) -> Figure:
    """The recorded loss against the optimizer step (log scale when it spans > 2 decades).

    Args:
        records: Recorded steps, e.g. ``watch.history`` or ``list(read_jsonl(path))``.
        ax: Axes to draw into; a new figure when omitted.
        path: Where to save a PNG.
        title: Figure title; a descriptive default when omitted.

    Returns:
        The figure.

    Raises:
        ValueError: No records, or none carries a finite loss (the message says whether none
            was passed or every one is NaN/Inf).
    """
    from matplotlib.ticker import MaxNLocator

    recs = check_records(records)
    if not has_loss(recs):
        raise ValueError(_no_loss_message(recs))
    x = np.array([r.step for r in recs if r.loss is not None], dtype=float)
    y = np.array([r.loss for r in recs if r.loss is not None], dtype=float)
    fig, ax = new_axes(ax, (11, 3.5))
    draw_series(ax, x, y, lw=1.4, color="tab:blue", label="loss")
    bad = ~np.isfinite(y)
    if bad.any():
        ax.vlines(x[bad], 0, 1, transform=ax.get_xaxis_transform(), color="tab:red", alpha=0.5,
                  label=f"non-finite loss ({int(bad.sum())} steps)")
    finite = y[np.isfinite(y)]
    if finite.size and finite.min() > 0 and finite.max() / finite.min() > 100:
        ax.set_yscale("log")
        ax.autoscale_view()
        log_ticks(ax.yaxis)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title or f"Loss over {len(x)} recorded steps")
    ax.grid(True, alpha=0.3)
    if bad.any():
        ax.legend(loc="best", fontsize=8)
    return finish(fig, path)
