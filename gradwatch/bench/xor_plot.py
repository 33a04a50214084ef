"""The XOR experiment's figures: loss over epochs with its spread, epochs to converge by depth."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

__all__ = ["plot_loss_spread", "plot_depth_sweep"]


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
                     path: Path, *, title: str, tol: float) -> str:
    """One panel per setting: median summed epoch loss over seeds and its min–max band.

    ``panels`` maps a title to ``(epochs, curves)``, one curve per seed (NaN once the run
    stopped; a stopped run holds its last loss). Returns the path relative to the report.
    """
    fig, axes = _figure(5.4, len(panels))
    for ax, (name, (epochs, curves)) in zip(axes, panels.items()):
        x = np.asarray(epochs)
        held = np.array([_held(c) for c in curves]).reshape(len(curves), len(x))
        ok = ~np.isnan(held).all(0)
        lo, hi = np.nanmin(held[:, ok], 0), np.nanmax(held[:, ok], 0)
        med = np.nanmedian(held[:, ok], 0)
        ax.fill_between(x[ok], lo, hi, color="tab:blue", alpha=0.2,
                        label=f"min–max over {len(curves)} seeds")
        ax.plot(x[ok], med, color="tab:blue", lw=1.6, label="median over seeds")
        ax.axhline(tol, color="tab:green", ls="--", lw=1, label=f"stopping criterion {tol:g}")
        ax.axhline(0.5, color="tab:red", ls=":", lw=1, label="0.5: every output 0.5")
        ax.set_yscale("log")
        ax.set_xlabel("epoch (4 Adam updates each)")
        ax.set_ylabel("summed loss Σ½(y−t)² over the 4 patterns")
        ax.set_title(name, fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def plot_depth_sweep(rows: Mapping[str, Mapping[int, Sequence[int | None]]], path: Path, *,
                     epochs: int, title: str) -> str:
    """Epochs to converge per seed against depth, one colour per kind.

    ``rows`` maps a kind to ``{depth: [epochs or None per seed]}``; seeds that did not converge
    within ``epochs`` are drawn as open markers on the budget line.
    """
    fig, (ax,) = _figure(7.0, 1)
    colors = {"plain": "tab:red", "residual": "tab:blue"}
    shift = {kind: 0.12 * (k - (len(rows) - 1) / 2) for k, kind in enumerate(rows)}
    for kind, by_depth in rows.items():
        color = colors.get(kind, "tab:gray")
        xs, ys, fx = [], [], []
        for depth, values in by_depth.items():
            for v in values:
                (xs if v is not None else fx).append(depth + shift[kind])
                if v is not None:
                    ys.append(v)
        ax.scatter(xs, ys, color=color, s=18, alpha=0.8, label=f"{kind}: converged")
        if fx:
            ax.scatter(fx, [epochs] * len(fx), facecolors="none", edgecolors=color, s=30,
                       label=f"{kind}: not converged in {epochs:,} epochs")
    ax.axhline(epochs, color="gray", lw=0.8, ls=":")
    ax.set_yscale("log")
    ax.set_xlabel("hidden 4→4 layers")
    ax.set_ylabel("epochs to summed loss ≤ 1e-7")
    depths = sorted({d for by_depth in rows.values() for d in by_depth})
    ax.set_xticks(depths)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)
