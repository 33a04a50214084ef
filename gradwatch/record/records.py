"""Plain-float records of what gradwatch measured: one `StepRecord` per recorded step."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from .status import STATUS_CODES, STATUSES, Status, StatusInfo, status_info

__all__ = ["Status", "STATUS_CODES", "StatusInfo", "STATUSES", "status_info", "LayerStat", 
           "Finding", "StepRecord"]


_LAYER_KEYS = ("norm", "act_norm", "status", "spike", "reason")


@dataclass(frozen=True)
class LayerStat:
    """What one layer's gradients looked like at one step.

    Attributes:
        norm: L2 norm of the gradients of the parameters the module owns directly, before clipping
            (unscaled under AMP, after the distributed reduce).
        act_norm: L2 norm of the gradient with respect to the module's output(s), over every call
            of the module in the backward pass that produced the parameter gradients; ``None``
            when activation tracking is off or the output did not require grad.
        status: The verdict (see `gradwatch.verdict.rules`).
        spike: Whether ``norm`` jumped against this layer's own running history.
        reason: Evidence for a status other than ok, or for a spike (empty when healthy).
        values: Every other declared statistic (`gradwatch.measure.statistics`) by name, e.g.
            ``update_ratio``; a value is ``None`` when it could not be measured at this step.
    """

    norm: float
    act_norm: float | None = None
    status: Status = Status.OK
    spike: bool = False
    reason: str = ""
    values: Mapping[str, float | None] = field(default_factory=dict)

    def numbers(self) -> dict[str, float | None]:
        """Every statistic of this layer by name: ``norm``, ``act_norm`` and `values`."""
        return {"norm": self.norm, "act_norm": self.act_norm, **self.values}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: the statistics flat next to status, spike and reason."""
        return {**self.numbers(), "status": self.status.value, "spike": self.spike,
                "reason": self.reason}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerStat:
        act = data.get("act_norm")
        extra = {str(k): (None if v is None else float(v)) for k, v in data.items()
                 if k not in _LAYER_KEYS}
        return cls(
            norm=float(data["norm"]),
            act_norm=None if act is None else float(act),
            status=Status(data.get("status", "ok")),
            spike=bool(data.get("spike", False)),
            reason=str(data.get("reason", "")),
            values=extra,
        )


def _marks(layers: Mapping[str, LayerStat]) -> list[tuple[str, Status, bool]]:
    fast = getattr(layers, "marks", None)  # a `LayerTable` answers without building stats
    if callable(fast):
        return fast()
    return [(n, s.status, s.spike) for n, s in layers.items()
            if s.status is not Status.OK or s.spike]


@dataclass(frozen=True)
class Finding:
    """One diagnosis: what is wrong, the evidence in numbers, the likely cause and the remedy.

    Attributes:
        kind: The problem: ``"vanishing"``, ``"exploding"``, ``"divergence"``, ``"dead_units"``,
            ``"saturation"``, ``"vanishing_through_time"``, ``"nonfinite_forward"``,
            ``"nonfinite_backward"``, ``"nonfinite_loss"``, ``"amp_overflow"`` or
            ``"stalled"``.
        layers: The layers that carry the evidence (where a NaN was born, for non-finite kinds).
        evidence: The numbers behind the finding, in words.
        cause: The likely cause.
        remedy: What to do, in words.
        remedies: Machine-readable remedy codes (see `gradwatch.verdict.rules.REMEDIES`), every code
            of `plans` once, in order.
        first_step: The first recorded step at which the finding held.
        steps: On how many recorded steps it held.
        plans: The remedy's alternatives, in the order the words give them, each the codes to
            apply together: ``(("relu", "he_init"), ("normalization",), ("residual",))`` is
            "a ReLU-family activation with He initialisation, or normalisation, or residual
            connections". Defaults to each of `remedies` alone (records written before plans).
        note: Empty for an alarm. For a note, why the condition, though true, looks harmless
            (e.g. the loss falls meanwhile): a note never sets a layer's status and is not
            among `GradWatch.diagnose`'s findings (see `GradWatch.notes`).
    """

    kind: str
    layers: tuple[str, ...]
    evidence: str
    cause: str
    remedy: str
    remedies: tuple[str, ...] = ()
    first_step: int = 0
    steps: int = 1
    plans: tuple[tuple[str, ...], ...] = ()
    note: str = ""

    def __post_init__(self) -> None:
        if not self.plans and self.remedies:
            object.__setattr__(self, "plans", tuple((c,) for c in self.remedies))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "layers": list(self.layers), "evidence": self.evidence,
                "cause": self.cause, "remedy": self.remedy, "remedies": list(self.remedies),
                "plans": [list(p) for p in self.plans],
                "first_step": self.first_step, "steps": self.steps} | (
                    {"note": self.note} if self.note else {})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Finding:
        return cls(kind=str(data["kind"]), layers=tuple(str(x) for x in data.get("layers", ())),
                   evidence=str(data.get("evidence", "")), cause=str(data.get("cause", "")),
                   remedy=str(data.get("remedy", "")),
                   remedies=tuple(str(x) for x in data.get("remedies", ())),
                   first_step=int(data.get("first_step", 0)), steps=int(data.get("steps", 1)),
                   plans=tuple(tuple(str(c) for c in p) for p in data.get("plans", ())),
                   note=str(data.get("note", "")))

    def __str__(self) -> str:
        where = f" at {', '.join(self.layers[:4])}" + ("…" if len(self.layers) > 4 else "") \
            if self.layers else ""
        return (f"{'note: ' if self.note else ''}{self.kind}{where} (from step "
                f"{self.first_step}, {self.steps} recorded step(s)): {self.evidence}"
                + (f"; {self.note}" if self.note else "")
                + f". Likely cause: {self.cause}. Remedy: {self.remedy}.")


@dataclass(frozen=True)
class StepRecord:
    """Everything gradwatch measured at one recorded optimizer step.

    Attributes:
        step: Zero-based index of the optimizer step.
        total_norm: Pre-clip L2 norm over all watched gradients; the number clipping used.
        clip_coef: Factor the gradients were scaled by (1.0 when not clipped). For value and
            unit-wise policies it is the ratio of the post-clip to the pre-clip total norm.
        layers: Per-layer statistics keyed by qualified module name, in forward order.
        first_nonfinite: Where the NaN/Inf was born: the first module in forward order whose
            output went non-finite (``nonfinite_origin == "forward"``), else the layer nearest
            the output in backward order whose gradient went non-finite. ``None`` when every
            gradient is finite or the loss itself was non-finite.
        spike: Whether ``total_norm`` jumped against its own running history.
        skipped: Whether the optimizer step was skipped (``on_nonfinite="skip"``).
        amp_overflow: Whether the non-finite gradients came from an AMP loss-scale overflow
            (a normal event the `GradScaler` handles by skipping the step), not from the model.
        nonfinite_origin: ``"forward"``, ``"backward"`` or ``"loss"`` on a step whose gradients
            went non-finite (not an AMP overflow); ``None`` otherwise.
        findings: The diagnosis findings that became true at this step (see `Finding`), notes
            (``Finding.note`` set) included.
        loss: The loss the user passed for this step (`GradWatch.step` ``loss=`` or
            `GradWatch.note_loss`), as a float; ``None`` when none was passed.
        held: The kinds of the diagnosis findings (not notes) that held at this step, the
            ones that became true at it included: what a log's reader counts a finding's
            steps from (`Finding.steps`).
    """

    step: int
    total_norm: float
    clip_coef: float = 1.0
    layers: Mapping[str, LayerStat] = field(default_factory=dict)
    first_nonfinite: str | None = None
    spike: bool = False
    skipped: bool = False
    amp_overflow: bool = False
    nonfinite_origin: str | None = None
    findings: tuple[Finding, ...] = ()
    loss: float | None = None
    held: tuple[str, ...] = ()

    def marks(self) -> list[tuple[str, Status, bool]]:
        """(name, status, spiked) of the layers that are not ok or spiked, in forward order."""
        return _marks(self.layers)

    @property
    def flagged(self) -> tuple[str, ...]:
        """Names of the layers whose status is not ok, in forward order."""
        return tuple(name for name, status, _ in _marks(self.layers) if status is not Status.OK)

    @property
    def spikes(self) -> tuple[str, ...]:
        """Names of the layers whose norm spiked against their own history."""
        return tuple(name for name, _, spiked in _marks(self.layers) if spiked)

    @property
    def clipped(self) -> bool:
        """Whether clipping changed the gradients at this step."""
        return self.clip_coef < 1.0 or not math.isfinite(self.clip_coef)

    @property
    def nonfinite(self) -> bool:
        """Whether the model's gradients went non-finite at this step (AMP overflows excluded)."""
        return not self.amp_overflow and (self.first_nonfinite is not None
                                          or self.nonfinite_origin is not None
                                          or not math.isfinite(self.total_norm))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (non-finite floats stay floats: ``json`` writes NaN/Infinity)."""
        out = {
            "step": self.step,
            "total_norm": self.total_norm,
            "clip_coef": self.clip_coef,
            "first_nonfinite": self.first_nonfinite,
            "nonfinite_origin": self.nonfinite_origin,
            "spike": self.spike,
            "skipped": self.skipped,
            "amp_overflow": self.amp_overflow,
            "loss": self.loss,
            "layers": {name: s.to_dict() for name, s in self.layers.items()},
        }
        if self.findings:
            out["findings"] = [f.to_dict() for f in self.findings]
        if self.held:
            out["held"] = list(self.held)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StepRecord:
        """Inverse of `to_dict`; raises ``KeyError``/``ValueError``/``TypeError`` on malformed
        input."""
        first = data.get("first_nonfinite")
        if first is not None and not isinstance(first, str):
            raise TypeError(f"Expected `first_nonfinite` to be a layer name or null, but got "
                            f"{type(first).__name__}.")
        step = data["step"]
        if isinstance(step, bool) or not isinstance(step, (int, float)) \
                or not math.isfinite(step) or step != int(step) or step < 0:
            raise ValueError(f"Expected `step` to be a whole number >= 0, but got {step!r}.")
        layers = data.get("layers", {})
        if not isinstance(layers, Mapping):
            raise TypeError(f"Expected `layers` to be an object of layer name -> statistics, "
                            f"but got {type(layers).__name__}.")
        return cls(
            step=int(step),
            total_norm=float(data["total_norm"]),
            clip_coef=float(data.get("clip_coef", 1.0)),
            layers={str(k): LayerStat.from_dict(v) for k, v in layers.items()},
            first_nonfinite=first,
            spike=bool(data.get("spike", False)),
            skipped=bool(data.get("skipped", False)),
            amp_overflow=bool(data.get("amp_overflow", False)),
            nonfinite_origin=data.get("nonfinite_origin"),
            findings=tuple(Finding.from_dict(f) for f in data.get("findings", ())),
            loss=None if data.get("loss") is None else float(data["loss"]),
            held=_held(data.get("held", ())),
        )


def _held(value: Any) -> tuple[str, ...]:
    """A record dict's ``held``: a list of finding kinds."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(k, str) for k in value):
        raise TypeError(f"Expected `held` to be a list of finding kinds (strings), but got "
                        f"{value!r}.")
    return tuple(value)
