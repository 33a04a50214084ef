"""`Thresholds`: every bound gradwatch's verdict rules use, with its default and evidence."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

from .scalars import ArgumentTypeError, plain_number

__all__ = ["Thresholds"]

_NUMBER_FIELDS = ("vanishing", "exploding", "relative_vanishing", "relative_exploding", "spike",
                  "spike_min_ratio", "spike_momentum", "spike_warmup", "window", "persistence", "recovery",
                  "divergence_update_ratio", "dead_units", "saturation", "time_vanishing",
                  "stalled_loss", "stalled_gradient", "zero_gradient", "loss_rising", "loss_falling",
                  "no_gradient", "not_zeroed", "not_moving")


@dataclass(frozen=True)
class Thresholds:
    """The bounds of gradwatch's verdict rules (`gradwatch.verdict.rules`).

    Vanishing and exploding are whole-network verdicts on the depth trend: the input-side third
    of the weight-bearing layers against the head (the last weight-bearing layer in forward
    order), held on at least `persistence` of the last `window` recorded steps. Divergence,
    dead units, saturation and vanishing through time have bounds of their own; non-finite
    gradients are reported at once. The README ("What gradwatch tells you") gives the evidence
    behind each default.
    """

    vanishing: float = 1e-7
    """Steps whose head gradient norm is below this are not judged (a converged net)."""
    exploding: float = 1e4
    """Exploding when the total gradient norm stays above this."""
    relative_vanishing: float | None = 1e-3
    """Vanishing when the input-side weight layers' median norm is below this times the head's
    (None: off)."""
    relative_exploding: float | None = 1e3
    """Exploding when the input-side weight layers' median norm is above this times the head's
    (None: off)."""
    recovery: float = 100.0
    """A vanishing depth ratio that has grown this many times since its lowest (or the square
    root of it within the window) is a net escaping a transient state (small-by-design scales
    at init), not a verdict."""
    window: int = 5
    """Recorded steps a persistent verdict looks back over."""
    persistence: int = 4
    """Of the last `window` recorded steps, on how many a persistent condition must hold."""
    divergence_update_ratio: float | None = 1.0
    """Diverging when the weight layers' median update/weight ratio ‖Δθ‖/‖θ‖ exceeds this at a
    step (the update is as large as the weights; healthy runs stay near 1e-3, None: off)."""
    dead_units: float | None = 0.5
    """Dead units when at least this share of a layer's units is zeroed by the following
    ReLU-family module for every input of the last 4 measured steps
    (`gradwatch.capture.units.UNIT_WINDOW`; persistent; None: off)."""
    saturation: float | None = 0.8
    """Saturation when at least this share of a saturating module's outputs sits within 1% of
    its bounds (persistent; None: off)."""
    time_vanishing: float | None = 1e-6
    """Vanishing through time when a recurrent module's first/last time-step gradient ratio is
    below this (persistent; None: off)."""
    stalled_loss: float | None = 0.5
    """Stalled when no gradient enters the model (the head's at most `stalled_gradient` times
    the loss) on steps whose loss is at least this times the run's highest (persistent; needs
    the loss passed to `GradWatch.step` or `GradWatch.note_loss`; None: off)."""
    stalled_gradient: float = 1e-12
    """The head's gradient, relative to the loss (capped at 1), at or below which no gradient
    enters the model: converged float32 nets bottom out near 1e-7 of the loss (label smoothing
    included), stalled ones at exactly 0 or an underflow's 1e-13 and below."""
    zero_gradient: int | None = 5
    """Zero gradient when a weight layer's gradient is exactly 0 on this many recorded steps in a
    row while a gradient enters the model (persistent; LoRA's A is 0 at step 0 only; None:
    off)."""
    no_gradient: int | None = 5
    """No gradient when a layer that requires grad, is stepped by the optimizer (when one is
    given) and ran in the recorded forward pass gets no gradient at all (``.grad`` is None) on
    this many recorded steps in a row while other layers get one: a ``.detach()``,
    ``torch.no_grad()``, ``.data`` or an integer cast cut it off the loss (needs the default
    ``activations=True``, which sees what ran; None: off)."""
    not_zeroed: int | None = 3
    """Not zeroed when a gradient still holds exactly the values it had after the previous
    ``optimizer.step()`` when the next backward pass begins, on this many recorded steps in a
    row: ``zero_grad()`` was not called, so gradients accumulate across steps (needs the
    optimizer and ``activations=True``; None: off)."""
    not_moving: int | None = 8
    """Not moving when no layer the optimizer steps changed across ``optimizer.step()`` (every
    update/weight ratio exactly 0) although they got non-zero gradients, on this many measured
    update ratios in a row (they are measured on the first 4 recorded steps, then on every
    4th, so 8 span the first 17 recorded steps): a learning rate of 0 (a scheduler or warm-up stuck at 0), or updates
    all below the weights' resolution (low-precision weights, a learning rate near 0). After
    the weights moved, a streak is a note (the end of a schedule that decays to 0: on a small
    MLP, the last 41 to 61 steps of a million-step cosine schedule); needs the optimizer;
    None: off."""
    loss_rising: float | None = 1.5
    """Loss rising when the median loss of the last `window` recorded steps is at least this
    times the median of the first `window` (persistent; needs the loss; healthy zoo runs end at
    most 1.13x above their start; None: off)."""
    loss_falling: float | None = 0.75
    """A true condition that does not hold the run back is a note, not an alarm (dead units
    while the loss learns: a narrow squeeze-excitation bottleneck, units a frozen part leaves
    unused): when the median loss of the last `window` recorded steps is at most this times
    both the first loss and the median of the first `window` (the loss fell by 25%, the
    sweep's definition of a model that trained). A note never sets a layer's status (needs the
    loss; None: never a note)."""
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
        for name in _NUMBER_FIELDS:  # numpy scalars (np.int64(5), np.float32(0.5)) and 0-d
            value = plain_number(getattr(self, name))  # tensors as Python's
            if value is not getattr(self, name):
                object.__setattr__(self, name, value)
            if isinstance(value, numbers.Integral) and not isinstance(value, (bool, int)):
                object.__setattr__(self, name, int(value))
            elif isinstance(value, numbers.Real) and not isinstance(value, (bool, int, float)):
                object.__setattr__(self, name, float(value))
            value = getattr(self, name)
            if value is None and name not in ("vanishing", "exploding", "spike_min_ratio",
                                              "spike_momentum", "spike_warmup", "window",
                                              "persistence", "recovery", "stalled_gradient"):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ArgumentTypeError(f"Expected `Thresholds.{name}` to be a number, but got "
                                f"{type(value).__name__} {value!r}; e.g. Thresholds({name}="
                                f"{getattr(Thresholds, name)!r}).")
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
            raise (ValueError if isinstance(self.spike_warmup, int) else ArgumentTypeError)(f"Expected `Thresholds.spike_warmup` to be an int >= 1, "
                             f"but got {self.spike_warmup!r}.")
        if not 1 < self.recovery < math.inf:
            raise ValueError(f"Expected `Thresholds.recovery` > 1 and finite, but got "
                             f"{self.recovery!r}.")
        for name in ("window", "persistence"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise (ValueError if isinstance(getattr(self, name), int) else ArgumentTypeError)(f"Expected `Thresholds.{name}` to be an int >= 1, but got "
                                 f"{getattr(self, name)!r}.")
        if self.persistence > self.window:
            raise ValueError(f"Expected `Thresholds.persistence` <= `Thresholds.window`, but got "
                             f"persistence={self.persistence}"
                             f"{' (its default)' if self.persistence == _DEFAULT_PERSISTENCE else ''}, "
                             f"window={self.window}; pass both, e.g. Thresholds(window="
                             f"{self.window}, persistence={self.window}).")
        if not 0 <= self.stalled_gradient < 1:
            raise ValueError(f"Expected `Thresholds.stalled_gradient` in [0, 1), but got "
                             f"{self.stalled_gradient!r}.")
        for name in ("zero_gradient", "no_gradient", "not_zeroed", "not_moving"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise (ValueError if isinstance(value, int) else ArgumentTypeError)(f"Expected `Thresholds.{name}` to be an int >= 1 or None, "
                                 f"but got {value!r}.")
        if self.loss_rising is not None and not 1 < self.loss_rising < math.inf:
            raise ValueError(f"Expected `Thresholds.loss_rising` > 1 and finite, or None, but "
                             f"got {self.loss_rising!r}.")
        for name in ("divergence_update_ratio", "time_vanishing"):
            value = getattr(self, name)
            if value is not None and not 0 < value < math.inf:
                raise ValueError(f"Expected `Thresholds.{name}` > 0 and finite, or None, but got "
                                 f"{value!r}.")
        for name in ("dead_units", "saturation", "stalled_loss", "loss_falling"):
            value = getattr(self, name)
            if value is not None and not 0 < value <= 1:
                raise ValueError(f"Expected `Thresholds.{name}` in (0, 1] or None, but got "
                                 f"{value!r}.")

    def to_dict(self) -> dict[str, Any]:
        """The thresholds as a JSON-ready dict (written into a run's log header)."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


_DEFAULT_PERSISTENCE = Thresholds.__dataclass_fields__["persistence"].default
