"""Shared pieces of the gradwatch figures: input checks, log-axis data shaping, labels, legends."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Literal, Sequence

import numpy as np

from ..record.records import StepRecord, status_info

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["Which", "WHICH_LABEL", "StatusStyle", "STATUS_MARKERS", "NEUTRAL_STYLE", "MAX_TICK_LABELS",
           "absolute_bounds", "check_records", "layered_records", "check_which", "draw_series",
           "edge_marks",
           "finish", "layer_order", "legend", "log_limits", "name_ticks",
           "new_axes", "plural", "short", "split", "status_style", "thresholds_from", "value"]

Which = Literal["norm", "act_norm"]

WHICH_LABEL = {"norm": "gradient L2 norm (layer parameters)",
               "act_norm": "gradient L2 norm (w.r.t. layer output)"}


@dataclass(frozen=True)
class StatusStyle:
    """How a layer status is drawn: colour, marker shape and legend label."""

    color: str
    marker: str
    label: str


STATUS_MARKERS: dict[str, str] = {"vanishing": "v", "exploding": "^", "nonfinite": "X",
                                  "diverging": ">", "dead": "s", "saturated": "P"}
"""Status value -> marker shape; a status missing here gets the neutral diamond."""
NEUTRAL_STYLE = StatusStyle("#7f7f7f", "D", "other")


def status_style(status: Any) -> StatusStyle:
    """The style of ``status`` (a `Status` or its value); unknown statuses are drawn neutral.

    Colour and label come from the status table in `gradwatch.record.records` (``status_info``),
    so plots, summary and report agree; markers from `STATUS_MARKERS`.
    """
    value = str(getattr(status, "value", status))
    found = status_info(value)
    return StatusStyle(found.color, STATUS_MARKERS.get(value, NEUTRAL_STYLE.marker), found.label)


MAX_TICK_LABELS = 40
DECADES_KEPT = 3.0  # a threshold band further than this from the data is named, not drawn


def check_records(records: Iterable[StepRecord]) -> list[StepRecord]:
    """The records as a list: StepRecords of one run, in increasing step order.

    Records of several runs (``read_jsonl(path, run="all")``) would share one step axis and be
    drawn as a zigzag back to step 0; they are refused with the way to plot each run apart.
    """
    fix = _records_fix(records)
    if fix:
        raise TypeError(f"Expected `records` to be StepRecords (a list of them), but got "
                        f"{fix}.")
    if records is None or isinstance(records, (str, bytes, dict)) or hasattr(
            records, "__fspath__"):
        raise TypeError(f"Expected `records` to be StepRecords (watch.history or "
                        f"list(gradwatch.read_jsonl(path))), but got {type(records).__name__}.")
    recs = list(records)
    if not recs:
        raise ValueError("Expected `records` to hold at least one StepRecord, but got none; "
                         "record a step first (watch.history) or check the log is not empty.")
    for r in recs:
        if not isinstance(r, StepRecord):
            raise TypeError(f"Expected `records` to hold StepRecord objects, but got "
                            f"{type(r).__name__}; read a log with gradwatch.read_jsonl(path).")
    steps = np.fromiter((r.step for r in recs), dtype=float, count=len(recs))
    back = np.flatnonzero(np.diff(steps) <= 0)
    if back.size:
        i = int(back[0]) + 1
        raise ValueError(f"Expected `records` of one run in increasing step order, but record "
                         f"{i} has step {recs[i].step} after step {recs[i - 1].step}; records "
                         f"of several runs (read_jsonl(path, run='all')) cannot share one step "
                         f"axis: plot each run apart (for run in read_runs(path): "
                         f"plot_norms(run.records)) or pick one with read_jsonl(path, run=k).")
    return recs


def _records_fix(records: Any) -> str:
    """For what is often passed in place of the records (a run read from a log, the watch, one
    record), what it is and what to pass; else ""."""
    if isinstance(records, StepRecord):
        return f"one StepRecord (step {records.step}); pass a list: [record]"
    if type(records).__name__ == "GradWatch" and hasattr(records, "history"):
        return "the GradWatch itself; pass its records: watch.history"
    if hasattr(records, "records") and not hasattr(records, "__iter__"):
        return (f"a {type(records).__name__} (read_runs(path) gives runs); pass its records: "
                f"run.records")
    return ""


def check_which(which: str) -> None:
    if which not in WHICH_LABEL:
        raise ValueError(f"Expected `which` to be one of {sorted(WHICH_LABEL)}, but got {which!r}.")


def layer_order(recs: Sequence[StepRecord]) -> list[str]:
    """Every layer name seen, in first-seen (forward) order."""
    return list(dict.fromkeys(name for r in recs for name in r.layers))


def layered_records(records: Iterable[StepRecord], which: str, thresholds: Any,
                    vanishing: float | None, exploding: float | None,
                    ) -> tuple[list[StepRecord], list[str], float | None, float | None]:
    """Validates the common arguments of the layer plots: records, layer names and bounds."""
    recs = check_records(records)
    check_which(which)
    vanishing, exploding = thresholds_from(thresholds, vanishing, exploding)
    names = layer_order(recs)
    if not names:
        raise ValueError("Expected records with per-layer statistics, but every record has an "
                         "empty `layers`; was the model's layer list empty?")
    return recs, names, vanishing, exploding


def thresholds_from(thresholds: Any, vanishing: float | None,
                exploding: float | None) -> tuple[float | None, float | None]:
    """Resolves explicit floats over a ``Thresholds``-like object; 0, inf and None mean no band."""
    if thresholds is not None:
        vanishing = getattr(thresholds, "vanishing", None) if vanishing is None else vanishing
        exploding = getattr(thresholds, "exploding", None) if exploding is None else exploding
    out = []
    for name, v in (("vanishing", vanishing), ("exploding", exploding)):
        if v is not None:
            v = float(v)
            if math.isnan(v) or v < 0:
                raise ValueError(f"Expected `{name}` to be a positive norm bound, but got {v!r}.")
            v = v if 0 < v < math.inf else None
        out.append(v)
    if out[0] is not None and out[1] is not None and out[0] >= out[1]:
        raise ValueError(f"Expected `vanishing` < `exploding`, but got {out[0]:g} >= {out[1]:g}.")
    return out[0], out[1]


def value(r: StepRecord, name: str, which: str) -> float | None:
    stat = r.layers.get(name)
    return None if stat is None else getattr(stat, which)


def split(values: Sequence[float | None]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y for a log axis with NaN gaps, mask of non-finite values, mask of zeros)."""
    raw = np.array([np.nan if v is None else v for v in values], dtype=float)
    missing = np.array([v is None for v in values], dtype=bool)
    nonfinite = ~np.isfinite(raw) & ~missing
    zero = np.isfinite(raw) & (raw <= 0)
    y = np.where(nonfinite | zero, np.nan, raw)
    return y, nonfinite, zero


def log_limits(values: Iterable[float], *bounds: float | None) -> tuple[float, float]:
    """Log-axis limits around the positive finite ``values`` and the ``bounds`` near them.

    A bound more than `DECADES_KEPT` decades beyond the data does not stretch the axis (the data
    would flatten into a line); `bands` names it in the legend instead.
    """
    data = [v for v in values if math.isfinite(v) and v > 0]
    near = [b for b in bounds if b and (not data or
                                        math.log10(min(data)) - DECADES_KEPT <= math.log10(b)
                                        <= math.log10(max(data)) + DECADES_KEPT)]
    vals = data + near
    if not vals:
        return 1e-3, 1e3
    lo, hi = min(vals), max(vals)
    return lo / 10 ** 0.6, hi * 10 ** 0.6


def new_axes(ax: Axes | None, size: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    from matplotlib.figure import Figure  # a pyplot-free figure: no global state, no GUI

    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.add_subplot()


def finish(fig: Figure, path: str | os.PathLike[str] | None) -> Figure:
    """Saves ``fig`` at ``path`` (a PNG unless the name says another format matplotlib knows;
    folders created) when given; returns it. A directory is refused, naming ``path``:
    matplotlib would silently write ``DIR.png`` beside it."""
    if path is not None:
        target = Path(path)
        if target.is_dir():
            raise ValueError(f"Expected `path` to be a PNG file name, but {str(target)!r} is a "
                             f"directory; pass e.g. {str(target / 'figure.png')!r}.")
        target.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(target, dpi=110)
    return fig


def draw_series(ax: Axes, x: np.ndarray, y: np.ndarray, **style: Any) -> Any:
    """``ax.plot(x, y, **style)`` plus a marker on each finite point without a finite
    neighbour: a line needs two points, so a one-record run or a finite step between NaN
    steps would otherwise draw nothing and read as "no data". Returns the line."""
    line, = ax.plot(x, y, **style)
    ok = np.isfinite(y)
    alone = ok & ~np.r_[False, ok[:-1]] & ~np.r_[ok[1:], False]
    if alone.any():
        ax.plot(x[alone], y[alone], ls="none", marker="o",
                ms=max(3.0, 1.6 * float(style.get("lw", 1.5))), color=line.get_color(),
                zorder=line.get_zorder())
    return line


def short(name: str, width: int = 30) -> str:
    """Keeps the end of a long qualified name: the most specific part ("…layer.3.mlp.fc1")."""
    return (name or "(root)") if len(name) <= width else "…" + name[-(width - 1):]


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def name_ticks(axis: Any, names: Sequence[str], most: int = MAX_TICK_LABELS) -> None:
    """Labels an axis of layer indices with layer names, thinned to at most ``most`` labels."""
    from matplotlib.ticker import FixedLocator, FuncFormatter

    n = len(names)
    idx = np.unique(np.linspace(0, n - 1, min(n, most)).round().astype(int))
    axis.set_major_locator(FixedLocator(idx))
    label = (lambda i: short(names[i])) if n <= most else \
        (lambda i: f"{i}: {short(names[i])}")
    axis.set_major_formatter(FuncFormatter(lambda x, _pos: label(int(round(x)))
                                           if 0 <= round(x) < n else ""))


def edge_marks(ax: Axes, x: np.ndarray, nonfinite: np.ndarray, zero: np.ndarray,
                color: Any, labelled: set[str],
                labels: tuple[str, str] = ("non-finite (drawn at top)",
                                           "zero norm (drawn at bottom)")) -> None:
    """Draws off-scale values at the axes' edges (non-finite at the top, zeros at the bottom),
    each kind labelled once (``labels``: the non-finite and the zero label)."""
    edge = ax.get_xaxis_transform()  # x in data units, y in axes fraction
    for mask, y, marker, c, label in ((nonfinite, 0.97, "X", "black", labels[0]),
                                      (zero, 0.03, "$0$", color, labels[1])):
        if mask.any():
            ax.scatter(x[mask], np.full(int(mask.sum()), y), transform=edge, marker=marker, s=60,
                       color=c, label=None if label in labelled else label, zorder=5,
                       clip_on=False)
            labelled.add(label)


def legend(ax: Axes, first: Sequence[str] = (), **kwargs: Any) -> None:
    """A legend right of the axes, entries named in ``first`` leading in that order."""
    handles, labels = ax.get_legend_handles_labels()
    rank = {label: i for i, label in enumerate(first)}
    order = sorted(range(len(labels)), key=lambda i: (rank.get(labels[i], len(rank)), i))
    ax.legend([handles[i] for i in order], [labels[i] for i in order], loc="upper left",
              bbox_to_anchor=(1.01, 1.0), fontsize="small", title_fontsize="small", **kwargs)


def absolute_bounds(ax: Axes, lo: float, hi: float, vanishing: float | None,
                    exploding: float | None) -> None:
    """Draws the absolute norm bounds inside ``lo..hi`` as dotted lines labelled "absolute"
    (the relative bounds the depth verdicts read are `gradwatch.plot.depth`'s); a bound beyond
    the axis is named in the legend, not drawn."""
    from matplotlib.lines import Line2D

    for bound, name, sign, where in ((vanishing, "vanishing", "<", "below"),
                                     (exploding, "exploding", ">", "above")):
        if bound is None:
            continue
        color = status_style(name).color
        label = f"absolute {name} bound: norm {sign} {bound:g}"
        if lo < bound < hi:
            ax.axhline(bound, color=color, ls=":", lw=1.4, label=label)
        else:  # a line off the axis: nothing drawn, the legend still says where it is
            ax.add_line(Line2D([], [], color=color, ls=":", lw=1.4,
                               label=f"{label}, {where} the axis"))
