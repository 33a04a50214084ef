"""Verdicts: `Thresholds` and the pure functions that turn per-layer norms into statuses."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from .records import Status

__all__ = ["Thresholds", "RunningStats", "layer_verdicts"]


@dataclass(frozen=True)
class Thresholds:
    """When a layer's gradient norm counts as vanishing, exploding or spiking.

    A layer is judged on the L2 norm of its own parameter gradients, first against absolute
    bounds, then against the output-side layer of the same step (a depth-relative criterion, so
    a verdict holds whatever the loss scale), and finally against its own running history.
    Defaults were calibrated on the reference experiments (`python -m gradwatch.bench`).
    """

    vanishing: float = 1e-7
    """A layer whose norm is below this is vanishing."""
    exploding: float = 1e4
    """A layer whose norm is above this is exploding."""
    relative_vanishing: float | None = 1e-3
    """Vanishing when the norm is below this times the output-side layer's norm (None: off)."""
    relative_exploding: float | None = 1e3
    """Exploding when the norm is above this times the output-side layer's norm (None: off)."""
    spike: float | None = 6.0
    """A spike is a log10-norm this many running standard deviations above its running mean
    (None: off); applies to each layer and to the total norm."""
    spike_min_ratio: float = 2.0
    """A spike must also be at least this many times the running (geometric) mean norm."""
    spike_momentum: float = 0.98
    """EMA momentum of the running log-norm mean and variance (about a 50-step memory)."""
    spike_warmup: int = 20
    """Observations before spikes are reported."""

    def __post_init__(self) -> None:
        for name in ("vanishing", "exploding", "spike_min_ratio"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"Expected `Thresholds.{name}` to be a finite number >= 0, "
                                 f"but got {value!r}.")
        if self.vanishing >= self.exploding:
            raise ValueError(f"Expected `Thresholds.vanishing` < `Thresholds.exploding`, but got "
                             f"vanishing={self.vanishing!r}, exploding={self.exploding!r}; "
                             f"swap them or pick a smaller `vanishing`.")
        rv, re_ = self.relative_vanishing, self.relative_exploding
        if rv is not None and not 0 < rv < 1:
            raise ValueError(f"Expected `Thresholds.relative_vanishing` in (0, 1) or None, "
                             f"but got {rv!r}.")
        if re_ is not None and not 1 < re_ < math.inf:
            raise ValueError(f"Expected `Thresholds.relative_exploding` > 1 and finite, or None, "
                             f"but got {re_!r}.")
        if self.spike is not None and not 0 < self.spike < math.inf:
            raise ValueError(f"Expected `Thresholds.spike` > 0 or None, but got {self.spike!r}.")
        if not 0 < self.spike_momentum < 1:
            raise ValueError(f"Expected `Thresholds.spike_momentum` in (0, 1), "
                             f"but got {self.spike_momentum!r}.")
        if not isinstance(self.spike_warmup, int) or self.spike_warmup < 1:
            raise ValueError(f"Expected `Thresholds.spike_warmup` to be an int >= 1, "
                             f"but got {self.spike_warmup!r}.")


def layer_verdicts(norms: Sequence[float], th: Thresholds) -> list[tuple[Status, str]]:
    """The status of each layer and the evidence for it, from one step's layer norms.

    ``norms`` are in forward order. Absolute bounds come first; the relative bounds compare
    each layer with the output-side layer (the last finite, nonzero norm), which is how the
    textbook "gradient magnitude across layers" reads: a vanishing layer has a gradient orders
    of magnitude below the one entering the network at the top, an exploding one orders above.
    They are skipped with fewer than three layers.
    """
    finite = [n for n in norms if math.isfinite(n) and n > 0]
    ref = finite[-1] if len(norms) >= 3 and finite else None
    out: list[tuple[Status, str]] = []
    for n in norms:
        if not math.isfinite(n):
            out.append((Status.NONFINITE, f"norm is {n}"))
        elif n > th.exploding:
            out.append((Status.EXPLODING, f"norm {n:.3g} > exploding {th.exploding:g}"))
        elif n < th.vanishing:
            out.append((Status.VANISHING, f"norm {n:.3g} < vanishing {th.vanishing:g}"))
        elif ref is not None and th.relative_vanishing and n < th.relative_vanishing * ref:
            out.append((Status.VANISHING, f"norm {n:.3g} is {n / ref:.2g}x the output-side "
                        f"layer's ({ref:.3g}) < relative_vanishing {th.relative_vanishing:g}"))
        elif ref is not None and th.relative_exploding and n > th.relative_exploding * ref:
            out.append((Status.EXPLODING, f"norm {n:.3g} is {n / ref:.2g}x the output-side "
                        f"layer's ({ref:.3g}) > relative_exploding {th.relative_exploding:g}"))
        else:
            out.append((Status.OK, ""))
    return out


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
        if th.spike is None or not math.isfinite(norm) or norm <= 0:
            return ""
        x = math.log10(norm)
        std = math.sqrt(self.var)
        z = (x - self.mean) / std if std > 0 else (math.inf if x > self.mean else 0.0)
        ratio = 10 ** (x - self.mean)
        evidence = ""
        if self.count >= th.spike_warmup and z > th.spike and ratio >= th.spike_min_ratio:
            evidence = f"norm {norm:.3g} is {ratio:.3g}x its running mean (z={z:.1f})"
            x = self.mean + th.spike * std
        if self.count == 0:
            self.mean = x
        else:
            beta = th.spike_momentum if self.count >= th.spike_warmup else self.count / (self.count + 1)
            delta = x - self.mean
            self.mean += (1 - beta) * delta
            self.var = beta * (self.var + (1 - beta) * delta * delta)
        self.count += 1
        return evidence

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean, "var": self.var}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RunningStats:
        return cls(int(state["count"]), float(state["mean"]), float(state["var"]))

    def __repr__(self) -> str:
        return f"RunningStats(count={self.count}, mean={self.mean:.4g}, var={self.var:.4g})"
