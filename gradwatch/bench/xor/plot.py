"""The XOR experiment's figures: loss over epochs with its spread, epochs to converge by depth."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ...plot.ticks import log_ticks

__all__ = ["plot_loss_spread", "plot_depth_sweep"]


_MARK_STYLES = ({"ls": "-."}, {"ls": (0, (1, 2))}, {"ls": "--"})


def _figure(width: float, panels: int):
    from matplotlib.figure import Figure  # no pyplot: no backend or global figure state

    fig = Figure(figsize=(width * panels, 4.0), layout="constrained")
    return fig, fig.subplots(1, panels, squeeze=False)[0]


def _save(fig, path: Path) -> str:
    fig.savefig(path, dpi=110)
    return f"figures/{path.name}"


def _held(curve: Sequence[float]) -> np.ndarray:
    """A run's curve with the loss it stopped at carried forward (NaN after it stopped)."""
    arr = np.array(curve, dtype=float)
    last = math.nan
    for i, v in enumerate(arr):
        if math.isnan(v):
            arr[i] = last
        else:
            last = v
    return arr


def plot_loss_spread(panels: Mapping[str, tuple[Sequence[int], Sequence[Sequence[float]]]],
                     path: Path, *, title: str, tol: float,
                     marks: Mapping[str, Sequence[tuple[float, str]]] | None = None) -> str:
    """One panel per setting: median summed epoch loss over seeds, quartile and min–max bands.

    ``panels`` maps a title to ``(epochs, curves)``, one curve per seed (NaN once the run
    stopped; a stopped run holds its last loss). ``marks`` adds labelled vertical lines (the
    source's epochs) per panel. Returns the path relative to the report folder.
    """
    fig, axes = _figure(5.6, len(panels))
    for ax, (name, (epochs, curves)) in zip(axes, panels.items()):
        x = np.asarray(epochs)
        held = np.array([_held(c) for c in curves]).reshape(len(curves), len(x))
        ok = ~np.isnan(held).all(0)
        x, held = x[ok], held[:, ok]
        q0, q1, q2, q3, q4 = np.nanpercentile(held, [0, 25, 50, 75, 100], axis=0)
        ax.fill_between(x, q0, q4, color="tab:blue", alpha=0.12,
                        label=f"min–max over {len(curves)} seeds")
        ax.fill_between(x, q1, q3, color="tab:blue", alpha=0.3, label="quartiles")
        ax.plot(x, q2, color="tab:blue", lw=1.6, label="median")
        ax.axhline(tol, color="tab:green", ls="--", lw=1, label=f"stopping criterion {tol:g}")
        ax.axhline(0.5, color="tab:red", ls=":", lw=1, label="0.5: every output 0.5")
        for (epoch, label), style in zip((marks or {}).get(name, ()), _MARK_STYLES):
            ax.axvline(epoch, color="black", lw=0.9, label=label, **style)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.autoscale_view()
        log_ticks(ax.xaxis)
        log_ticks(ax.yaxis)
        ax.set_xlabel("epoch (4 Adam updates each; log scale)")
        ax.set_ylabel("summed loss Σ½(y−t)² over the 4 patterns")
        ax.set_title(name, fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def plot_depth_sweep(rows: Mapping[str, Mapping[int, Sequence[int | None]]], path: Path, *,
                     epochs: int, title: str,
                     marks: Sequence[tuple[float, str]] = ()) -> str:
    """Epochs to converge per seed against depth, one colour per kind.

    ``rows`` maps a kind to ``{depth: [epochs or None per seed]}``; seeds that did not converge
    within ``epochs`` are drawn as open markers on the budget line with their count beside
    them. ``marks`` adds labelled horizontal lines (the source's epochs).
    """
    fig, (ax,) = _figure(7.0, 1)
    fig.set_figheight(4.8)
    colors = {"plain": "tab:red", "residual": "tab:blue"}
    shift = {kind: 0.25 * (k - (len(rows) - 1) / 2) for k, kind in enumerate(rows)}
    for pos, (kind, by_depth) in enumerate(rows.items()):
        color = colors.get(kind, "tab:gray")
        xs, ys, failed = [], [], []
        for depth, values in by_depth.items():
            got = [v for v in values if v is not None]
            xs += [depth + shift[kind]] * len(got)
            ys += got
            if len(got) < len(values):
                failed.append((depth + shift[kind], len(values) - len(got), len(values)))
        ax.scatter(xs, ys, color=color, s=18, alpha=0.8, label=f"{kind}: converged")
        if failed:
            ax.scatter([f[0] for f in failed], [epochs] * len(failed), facecolors="none",
                       edgecolors=color, s=34,
                       label=f"{kind}: not converged in {epochs:,} epochs (count of seeds)")
            for x, k, n in failed:
                ax.annotate(f"{k}/{n}", (x, epochs), textcoords="offset points",
                            xytext=(12 * (pos - (len(rows) - 1) / 2), 7),
                            ha="center", fontsize=7, color=color)
    for (epoch, label), style in zip(marks, _MARK_STYLES):
        ax.axhline(epoch, color="black", lw=0.9, label=label, **style)
    ax.set_yscale("log")
    ax.autoscale_view()
    ax.set_ylim(top=epochs * 1.8)
    log_ticks(ax.yaxis)
    ax.set_xlabel("hidden 4→4 layers")
    ax.set_ylabel("epochs until the summed loss ≤ 1e-7")
    depths = sorted({d for by_depth in rows.values() for d in by_depth})
    ax.set_xticks(depths)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    fig.legend(fontsize=7, loc="outside lower center", ncols=2)
    return _save(fig, path)
