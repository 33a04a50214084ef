"""Bench-only figures (depth profiles, training curves), drawn on pyplot-free matplotlib Figures."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

__all__ = ["Reference", "Panel", "plot_layer_profiles", "plot_curves", "save_records_figure",
           "records_figure", "histogram_figures", "require_matplotlib"]

Lines = Mapping[str, tuple[Sequence[float], Sequence[float]]]
INSTALL = "pip install torchvision matplotlib (or pip install -e '.[bench]' in a gradwatch checkout)"


@dataclass(frozen=True)
class Reference:
    """A horizontal line at a claim's number: 11% accuracy, 90%, the 1e-7 loss criterion."""

    value: float
    label: str  # what the line is, e.g. "source: ≈11% (stalled)"
    color: str = "tab:red"


@dataclass(frozen=True)
class Panel:
    """One subplot of `plot_curves`: its lines, what the y-axis measures, and reference lines."""

    lines: Lines  # label -> (x, y)
    ylabel: str  # the quantity and its unit, e.g. "training loss (cross-entropy, nats)"
    logy: bool = False
    percent: bool = False  # y holds fractions in [0, 1], labelled as percent
    references: tuple[Reference, ...] = ()
    points: Mapping[str, tuple[float, float]] = field(default_factory=dict)  # label -> (x, y)
    depth_colors: bool = False  # colour lines in order with a sequential map (layers by depth)


def require_matplotlib() -> None:
    """Raises a one-line ImportError naming the extra when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        raise ImportError(f"The bench draws its figures with matplotlib, which is not "
                          f"installed; fix by `{INSTALL}`.") from err


def _figure(size: tuple[float, float] = (7.0, 4.2), panels: int = 1):
    require_matplotlib()
    from matplotlib.figure import Figure  # no pyplot: no backend or global figure state

    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.subplots(1, panels, squeeze=False)[0]


def _save(fig, path: Path) -> str:
    fig.savefig(path, dpi=110)
    return f"figures/{path.name}"


def _positive(values: Sequence[float]) -> list[float]:
    return [v if (v > 0 and math.isfinite(v)) else math.nan for v in values]


def _log_axis(ax) -> None:
    from ..plot.ticks import log_ticks

    ax.set_yscale("log")
    ax.autoscale_view()
    log_ticks(ax.yaxis)


def plot_layer_profiles(profiles: Mapping[str, Sequence[Sequence[float]]], path: Path, *,
                        ylabel: str, title: str,
                        references: Sequence[Reference] = ()) -> str:
    """One coloured line per setting (thick: the first seed, thin: the others), log scale.

    Returns the figure's path relative to the report folder.
    """
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    fig, (ax,) = _figure()
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    several = any(len(runs) > 1 for runs in profiles.values())
    for k, (label, runs) in enumerate(profiles.items()):
        color = colors[k % len(colors)]
        for i, run in enumerate(runs):
            ax.plot(range(len(run)), _positive(run), color=color, alpha=0.9 if i == 0 else 0.35,
                    lw=1.8 if i == 0 else 0.8, marker="o" if i == 0 else None, ms=3,
                    label=label if i == 0 else None)
    for ref in references:
        ax.axhline(ref.value, color=ref.color, ls="--", lw=1.0, label=ref.label)
    _log_axis(ax)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer (0 = input side)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if several:
        handles += [Line2D([], [], color="gray", lw=1.8, marker="o", ms=3),
                    Line2D([], [], color="gray", lw=0.8, alpha=0.35)]
        labels += ["seed 0", "other seeds"]
    ax.legend(handles, labels, fontsize=8)
    return _save(fig, path)


def _merge_identical(lines: Lines) -> dict[str, tuple[list[float], list[float]]]:
    """Series with the same points drawn once, under a joint label (no hidden line)."""
    groups: dict[tuple, list[str]] = {}
    data: dict[tuple, tuple[list[float], list[float]]] = {}
    for label, (x, y) in lines.items():
        key = (tuple(map(float, x)), tuple(map(float, y)))
        groups.setdefault(key, []).append(label)
        data[key] = (list(key[0]), list(key[1]))
    out = {}
    for key, labels in groups.items():
        joint = labels[0] if len(labels) == 1 else " = ".join(labels) + " (identical)"
        out[joint] = data[key]
    return out


def _draw_panel(ax, name: str, panel: Panel, xlabel: str) -> None:
    from matplotlib import colormaps
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    merged = _merge_identical(panel.lines)
    shade = colormaps["viridis"]
    for k, (label, (x, y)) in enumerate(merged.items()):
        if not x:
            label += " (no logged point: shorter than one log interval)"
        ys = _positive(y) if panel.logy else y
        color = shade(0.9 * k / max(len(merged) - 1, 1)) if panel.depth_colors else None
        ax.plot(x, ys, label=label, lw=1.3, marker="o" if len(x) <= 3 else None, ms=4,
                color=color)
    xs = [v for x, _ in merged.values() for v in x]
    if xs and all(float(v).is_integer() for v in xs):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if max(xs) - min(xs) < 1:  # one epoch: whole-number ticks around it, not 0.96..1.04
            ax.set_xlim(min(xs) - 1, max(xs) + 1)
    for label, (x, y) in panel.points.items():
        ax.scatter([x], [y], marker="D", s=36, zorder=5, edgecolors="black", label=label)
    for ref in panel.references:
        ax.axhline(ref.value, color=ref.color, ls="--", lw=1.0, label=ref.label)
    if panel.logy:
        _log_axis(ax)
    if panel.percent:
        lo, hi = ax.get_ylim()  # enough decimals that neighbouring ticks read differently
        ax.yaxis.set_major_formatter(PercentFormatter(
            xmax=1.0, decimals=0 if hi - lo >= 0.1 else 1 if hi - lo >= 0.01 else 2))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(panel.ylabel)
    ax.set_title(name, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)


def plot_curves(series: Lines, path: Path, *, xlabel: str, ylabel: str, title: str,
                logy: bool = False,
                panels: Mapping[str, Union[Panel, Lines]] | None = None) -> str:
    """Lines ``label -> (x, y)``; with ``panels`` one subplot per panel (``series`` ignored).

    A panel is a `Panel` (its own y label, percent axis, reference lines, single points) or a
    plain lines mapping (then ``ylabel`` and ``logy`` apply). Series with identical points are
    drawn once under a joint label; a series without points is named as such in the legend.
    """
    groups: dict[str, Any] = dict(panels) if panels else {title: series}
    fig, axes = _figure((5.2 * len(groups), 4.0), len(groups))
    for ax, (name, spec) in zip(axes, groups.items()):
        panel = spec if isinstance(spec, Panel) else Panel(spec, ylabel=ylabel, logy=logy)
        _draw_panel(ax, name, panel, xlabel)
    if panels:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def records_figure(kind: str, records: Sequence, *, model: str | None = None, **kwargs: Any):
    """``gradwatch.plot.plot_<kind>(records)`` as the bench draws it (see `save_records_figure`)."""
    require_matplotlib()
    from .. import plot
    from ..verdict.thresholds import Thresholds

    if kind in ("flow", "heatmap") and not {"thresholds", "vanishing", "exploding"} & set(kwargs):
        kwargs["thresholds"] = Thresholds()
    fig = getattr(plot, f"plot_{kind}")(list(records), **kwargs)
    if model and "title" not in kwargs:
        ax = fig.axes[0]
        default = ax.get_title()
        ax.set_title(f"{model}: {default[:1].lower()}{default[1:]}")
    return fig


def save_records_figure(kind: str, records: Sequence, path: Path, *, model: str | None = None,
                        **kwargs: Any) -> str | None:
    """Draws ``gradwatch.plot.plot_<kind>`` for ``records``; None when there is nothing to draw.

    ``flow`` and ``heatmap`` get gradwatch's default `Thresholds` (the ones the bench's runs use)
    unless ``thresholds=`` is given, so the bands the verdicts read are drawn. ``model`` prefixes
    the default title ("Deep sigmoid MLP: gradient flow across 12 layers").
    """
    if not records:
        return None
    return _save(records_figure(kind, records, model=model, **kwargs), path)


def histogram_figures(name: str, hist: Mapping[str, Any], folder: Path) -> list[str]:
    """The figures of an experiment's ``data["histograms"]`` (see `common`'s data contract).

    Weight and gradient histograms per layer and epoch (`gradwatch.plot.plot_histograms`) and
    the median weight-gradient norm per layer over epochs; returns their report-relative paths.
    """
    require_matplotlib()
    from ..plot import plot_histograms

    folder.mkdir(parents=True, exist_ok=True)
    run = hist.get("run", name)
    out = []
    for quantity in ("weight", "gradient"):
        if hist.get(quantity):
            path = folder / f"{name}_{quantity}_hist.png"
            plot_histograms(hist[quantity], quantity=quantity, path=path,
                            title=f"{run}: {quantity} histogram per layer and epoch "
                                  f"(epoch 0 = initialisation; biases excluded)")
            out.append(f"figures/{path.name}")
    norms = hist.get("grad_norm")
    if norms:
        lines = {layer: ([_epoch(e) for e in per], list(per.values()))
                 for layer, per in norms.items()}
        panel = Panel(lines, ylabel="median weight-gradient L2 norm (log)", logy=True,
                      depth_colors=True)
        out.append(plot_curves({}, folder / f"{name}_grad_norm_epochs.png", xlabel="epoch",
                               ylabel="", title=f"{run}: gradient norm per layer and epoch",
                               panels={"per layer (colour = depth, input → output)": panel}))
    return out


def _epoch(key: Any) -> float:
    try:
        return float(key)
    except (TypeError, ValueError):
        return math.nan
