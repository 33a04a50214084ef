"""Spikes: a quantity's norm jumping against its own running history (EMA of log10 norms)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping, Sequence

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
    """The running statistics of every layer and of the total norm; owns its `state_dict`."""

    def __init__(self, names: Sequence[str]) -> None:
        self.layers = {name: RunningStats() for name in names}
        self.total = RunningStats()

    def add(self, names: Sequence[str]) -> None:
        """Starts a history for each layer not seen yet (the watched set grew)."""
        for name in names:
            self.layers.setdefault(name, RunningStats())

    def observe(self, names: Sequence[str], norms: Sequence[float], total: float,
                th: Thresholds) -> tuple[list[str], bool]:
        """Spike evidence per layer, aligned with ``names`` ("" for none), and whether the total
        norm spiked."""
        layers = self.layers
        out = []
        for name, n in zip(names, norms):
            stats = layers.get(name)
            if stats is None:
                stats = layers[name] = RunningStats()
            out.append(stats.observe(n, th))
        return out, bool(self.total.observe(total, th))

    def state_dict(self) -> dict[str, Any]:
        return {"stats": {n: s.state_dict() for n, s in self.layers.items()},
                "total_stats": self.total.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        unknown = set(state["stats"]) - set(self.layers)
        if unknown:
            raise ValueError(f"Expected a state_dict of a GradWatch on the same model, but it "
                             f"names layers this model lacks: {sorted(unknown)[:5]}.")
        for name, s in state["stats"].items():
            self.layers[name] = RunningStats.from_state(s)
        self.total = RunningStats.from_state(state["total_stats"])
