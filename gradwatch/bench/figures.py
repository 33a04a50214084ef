"""Bench-only figures (depth profiles, training curves), drawn on pyplot-free matplotlib Figures."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

__all__ = ["plot_layer_profiles", "plot_curves", "save_records_figure"]


def _figure(size: tuple[float, float] = (7.0, 4.2)):
    from matplotlib.figure import Figure  # no pyplot: no backend or global figure state

    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.add_subplot()


def _save(fig, path: Path) -> str:
    fig.savefig(path, dpi=110)
    return f"figures/{path.name}"


def _positive(values: Sequence[float]) -> list[float]:
    return [v if (v > 0 and math.isfinite(v)) else math.nan for v in values]


def plot_layer_profiles(profiles: Mapping[str, Sequence[Sequence[float]]], path: Path, *,
                        ylabel: str, title: str) -> str:
    """One coloured line per setting (thin lines: seeds) of a per-layer quantity, log scale.

    Returns the figure's path relative to the report folder.
    """
    fig, ax = _figure()
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    for k, (label, runs) in enumerate(profiles.items()):
        color = colors[k % len(colors)]
        for i, run in enumerate(runs):
            ax.plot(range(len(run)), _positive(run), color=color, alpha=0.9 if i == 0 else 0.35,
                    lw=1.8 if i == 0 else 0.8, marker="o" if i == 0 else None, ms=3,
                    label=label if i == 0 else None)
    from matplotlib.ticker import MaxNLocator

    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer (0 = input side)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_curves(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: Path, *,
                xlabel: str, ylabel: str, title: str, logy: bool = False,
                panels: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float]]]]
                | None = None) -> str:
    """Lines ``label -> (x, y)``; with ``panels`` one subplot per panel (``series`` ignored)."""
    from matplotlib.figure import Figure

    groups = dict(panels) if panels else {title: series}
    fig = Figure(figsize=(5.2 * len(groups), 4.0), layout="constrained")
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    for ax, (name, lines) in zip(axes, groups.items()):
        for label, (x, y) in lines.items():
            ax.plot(list(x), _positive(y) if logy else list(y), label=label, lw=1.3)
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(name, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    if panels:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def save_records_figure(kind: str, records: Sequence, path: Path, **kwargs) -> str | None:
    """Draws ``gradwatch.plot.plot_<kind>`` for ``records``; None when there is nothing to draw."""
    if not records:
        return None
    from .. import plot

    fig = getattr(plot, f"plot_{kind}")(list(records), **kwargs)
    return _save(fig, path)
