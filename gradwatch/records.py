"""Plain-float records of what gradwatch measured: one `StepRecord` per recorded step."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Mapping

__all__ = ["Status", "LayerStat", "StepRecord"]


class Status(str, Enum):
    """Verdict on one layer's gradient at one step."""

    OK = "ok"
    VANISHING = "vanishing"
    EXPLODING = "exploding"
    NONFINITE = "nonfinite"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class LayerStat:
    """What one layer's gradients looked like at one step.

    Attributes:
        norm: L2 norm of the gradients of the parameters the module owns directly, before clipping
            (unscaled under AMP, after the distributed reduce).
        act_norm: L2 norm of the gradient with respect to the module's output(s), over every call
            of the module since the last record; ``None`` when activation tracking is off or the
            output did not require grad.
        status: The verdict (see `Thresholds`).
        spike: Whether ``norm`` jumped against this layer's own running history.
        reason: Evidence for a status other than ok, or for a spike (empty when healthy).
    """

    norm: float
    act_norm: float | None = None
    status: Status = Status.OK
    spike: bool = False
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "norm": self.norm,
            "act_norm": self.act_norm,
            "status": self.status.value,
            "spike": self.spike,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerStat:
        act = data.get("act_norm")
        return cls(
            norm=float(data["norm"]),
            act_norm=None if act is None else float(act),
            status=Status(data.get("status", "ok")),
            spike=bool(data.get("spike", False)),
            reason=str(data.get("reason", "")),
        )


@dataclass(frozen=True)
class StepRecord:
    """Everything gradwatch measured at one recorded optimizer step.

    Attributes:
        step: Zero-based index of the optimizer step.
        total_norm: Pre-clip L2 norm over all watched gradients; the number clipping used.
        clip_coef: Factor the gradients were scaled by (1.0 when not clipped). For value and
            unit-wise policies it is the ratio of the post-clip to the pre-clip total norm.
        layers: Per-layer statistics keyed by qualified module name, in forward order.
        first_nonfinite: The layer nearest the output (in backward order) whose gradient went
            non-finite: where the NaN/Inf was born. ``None`` when all gradients are finite.
        spike: Whether ``total_norm`` jumped against its own running history.
        skipped: Whether the optimizer step was skipped (``on_nonfinite="skip"``).
        amp_overflow: Whether the non-finite gradients came from an AMP loss-scale overflow
            (a normal event the `GradScaler` handles by skipping the step), not from the model.
    """

    step: int
    total_norm: float
    clip_coef: float = 1.0
    layers: Mapping[str, LayerStat] = field(default_factory=dict)
    first_nonfinite: str | None = None
    spike: bool = False
    skipped: bool = False
    amp_overflow: bool = False

    @property
    def flagged(self) -> tuple[str, ...]:
        """Names of the layers whose status is not ok, in forward order."""
        return tuple(name for name, s in self.layers.items() if s.status is not Status.OK)

    @property
    def spikes(self) -> tuple[str, ...]:
        """Names of the layers whose norm spiked against their own history."""
        return tuple(name for name, s in self.layers.items() if s.spike)

    @property
    def clipped(self) -> bool:
        """Whether clipping changed the gradients at this step."""
        return self.clip_coef < 1.0 or not math.isfinite(self.clip_coef)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (non-finite floats stay floats: ``json`` writes NaN/Infinity)."""
        return {
            "step": self.step,
            "total_norm": self.total_norm,
            "clip_coef": self.clip_coef,
            "first_nonfinite": self.first_nonfinite,
            "spike": self.spike,
            "skipped": self.skipped,
            "amp_overflow": self.amp_overflow,
            "layers": {name: s.to_dict() for name, s in self.layers.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StepRecord:
        """Inverse of `to_dict`; raises ``KeyError``/``ValueError`` on malformed input."""
        return cls(
            step=int(data["step"]),
            total_norm=float(data["total_norm"]),
            clip_coef=float(data.get("clip_coef", 1.0)),
            layers={str(k): LayerStat.from_dict(v) for k, v in data.get("layers", {}).items()},
            first_nonfinite=data.get("first_nonfinite"),
            spike=bool(data.get("spike", False)),
            skipped=bool(data.get("skipped", False)),
            amp_overflow=bool(data.get("amp_overflow", False)),
        )
