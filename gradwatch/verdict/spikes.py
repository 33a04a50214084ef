"""Spikes: a quantity's norm jumping against its own running history (EMA of log10 norms)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:
    from .thresholds import Thresholds

__all__ = ["RunningStats", "SpikeTracker"]


class RunningStats:
    """EMA mean and variance of log10(norm), for spikes against a quantity's own history.

    A spike is judged before the update; the update then uses the value capped at the spike
    threshold (as ZClip does), so one spike neither hides the next nor inflates the variance.
    """

    __slots__ = ("count", "mean", "var")

    def __init__(self, count: int = 0, mean: float = 0.0, var: float = 0.0) -> None:
        self.count, self.mean, self.var = count, mean, var

    def observe(self, norm: float, th: Thresholds) -> str:
        """Updates with ``norm``; returns the evidence of a spike, or "" for none."""
        bound = th.spike
        if bound is None or not 0 < norm < math.inf:  # NaN fails the test too
            return ""
        x = math.log10(norm)
        mean, count = self.mean, self.count
        std = math.sqrt(self.var)
        evidence = ""
        if count >= th.spike_warmup:
            z = (x - mean) / std if std > 0 else (math.inf if x > mean else 0.0)
            if z > bound:
                ratio = 10 ** (x - mean)
                if ratio >= th.spike_min_ratio:
                    evidence = f"norm {norm:.3g} is {ratio:.3g}x its running mean (z={z:.1f})"
                    x = mean + bound * std
        if count == 0:
            self.mean = x
        else:
            beta = th.spike_momentum if count >= th.spike_warmup else count / (count + 1)
            delta = x - mean
            self.mean = mean + (1 - beta) * delta
            self.var = beta * (self.var + (1 - beta) * delta * delta)
        self.count = count + 1
        return evidence

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean, "var": self.var}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RunningStats:
        return cls(int(state["count"]), float(state["mean"]), float(state["var"]))

    def __repr__(self) -> str:
        return f"RunningStats(count={self.count}, mean={self.mean:.4g}, var={self.var:.4g})"


class SpikeTracker:
    """`RunningStats` of every layer as arrays (one entry per history column, the judge's
    table of layer names) and of the total norm; owns its `state_dict`."""

    def __init__(self) -> None:
        self.count = np.zeros(0)
        self.mean = np.zeros(0)
        self.var = np.zeros(0)
        self.total = RunningStats()

    def _grow(self, width: int) -> None:
        if width > len(self.count):
            pad = np.zeros(width - len(self.count))
            self.count, self.mean, self.var = (np.concatenate([a, pad]) for a in
                                               (self.count, self.mean, self.var))

    def observe(self, columns: np.ndarray, norms: np.ndarray, total: float,
                th: Thresholds, whole: bool = False) -> tuple[np.ndarray, np.ndarray, bool]:
        """Updates each layer's statistics (``columns``: the layers' entries) with its norm;
        returns each layer's spike ratio to its running mean (0: no spike), its z-score, and
        whether the total norm spiked. The arithmetic is `RunningStats.observe`'s. ``whole``:
        ``columns`` is 0, 1, 2, ... (then, on the common step, `_steady` updates the arrays whole
        instead of gathering and scattering them)."""
        ratio, z_out = np.zeros(len(norms), dtype=np.float64), np.zeros(len(norms))
        spiked = bool(self.total.observe(total, th))
        if th.spike is None or not len(columns):
            return ratio, z_out, spiked
        self._grow(int(columns.max()) + 1)
        ok = (norms > 0) & (norms < math.inf)
        if whole and len(columns) == len(self.count) and ok.all() and self._steady(norms, th):
            return ratio, z_out, spiked
        cols, n = columns[ok], norms[ok]
        x = np.log10(n)
        mean, count, var = self.mean[cols], self.count[cols], self.var[cols]
        std = np.sqrt(var)
        warm = count >= th.spike_warmup
        some = std > 0
        z = np.where(some, (x - mean) / np.where(some, std, 1.0),
                     np.where(x > mean, math.inf, 0.0))
        r = np.power(10.0, np.minimum(x - mean, 308.0))  # (a ratio past 1e308 reads 1e308)
        spike = warm & (z > th.spike) & (r >= th.spike_min_ratio)
        x = np.where(spike, mean + th.spike * std, x)
        beta = np.where(warm, th.spike_momentum, count / (count + 1))
        delta = x - mean
        first = count == 0
        self.mean[cols] = np.where(first, x, mean + (1 - beta) * delta)
        self.var[cols] = np.where(first, var, beta * (var + (1 - beta) * delta * delta))
        self.count[cols] = count + 1
        where = np.flatnonzero(ok)[spike]
        ratio[where], z_out[where] = r[spike], z[spike]
        return ratio, z_out, spiked

    def _steady(self, norms: np.ndarray, th: Thresholds) -> bool:
        """The common step, in fewer array operations: every entry is there, warm, has a
        spread and does not spike. Then the entries are updated (the same arithmetic as
        `observe`'s) and True is returned; otherwise nothing changes and it returns False."""
        count = self.count
        if not len(count) or count.min() < max(th.spike_warmup, 1):
            return False
        std = np.sqrt(self.var)
        if not std.min() > 0:
            return False
        delta = np.log10(norms) - self.mean
        if (delta / std > th.spike).any():
            return False
        beta = th.spike_momentum
        self.mean = self.mean + (1 - beta) * delta
        self.var = beta * (self.var + (1 - beta) * delta * delta)
        self.count = count + 1
        return True

    def state_dict(self, names: Sequence[str]) -> dict[str, Any]:
        """``names``: the layer name of each entry."""
        self._grow(len(names))
        return {"stats": {n: RunningStats(int(self.count[k]), float(self.mean[k]),
                                          float(self.var[k])).state_dict()
                          for k, n in enumerate(names)},
                "total_stats": self.total.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any], column: Mapping[str, int],
                        known: Sequence[str]) -> None:
        """``column``: the entry of each layer name; ``known``: the watched layers' names."""
        unknown = set(state["stats"]) - set(known)
        if unknown:
            raise ValueError(f"Expected a state_dict of a GradWatch on the same model, but it "
                             f"names layers this model lacks: {sorted(unknown)[:5]}.")
        self._grow(max(column.values(), default=-1) + 1)
        for name, s in state["stats"].items():
            k = column[name]
            self.count[k], self.mean[k], self.var[k] = s["count"], s["mean"], s["var"]
        self.total = RunningStats.from_state(state["total_stats"])
