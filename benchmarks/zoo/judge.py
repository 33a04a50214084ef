"""Read gradwatch's verdict on a run and score it against the run's label.

The verdict is ``watch.diagnose()``'s findings, plus the layers flagged at some recorded step.
`score` still reads verdicts whose source is ``"statuses"`` (zoo.jsonl files written before
``diagnose()`` existed: per-step status names as kinds, one coarse "nonfinite" for every origin).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .spec import Label

__all__ = ["Verdict", "read_verdict", "score"]


@dataclass
class Verdict:
    """What gradwatch said about one run.

    Attributes:
        source: ``"diagnose"`` (``"statuses"`` in zoo.jsonl files from before it).
        kinds: Finding kinds, in the order first seen.
        origin: The first layer a non-finite finding names (``"loss"`` for a loss-born finding).
        flagged: Layers whose status was other than ok at some recorded step.
        findings: The findings as plain dicts (kind, layers, evidence, remedies).
        notes: The kinds of ``watch.notes()`` (true, likely harmless; never an alarm).
    """

    source: str
    kinds: list[str] = field(default_factory=list)
    origin: str | None = None
    flagged: list[str] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def text(self) -> str:
        noted = [f"(note: {k})" for k in self.notes]
        if not self.kinds and not self.flagged:
            return " ".join(["nothing", *noted])
        parts = list(self.kinds) + noted
        if self.origin is not None:
            parts.append(f"@{self.origin}")
        if self.flagged and self.source == "diagnose":
            parts.append(f"{len(self.flagged)} flagged")
        return " ".join(parts)


def read_verdict(watch: Any) -> Verdict:
    """The verdict of ``watch`` (a GradWatch) on the steps it recorded."""
    records = watch.history
    flagged: list[str] = []
    for r in records:
        flagged += [n for n in r.flagged if n not in flagged]
    v = Verdict("diagnose", flagged=flagged)
    for f in watch.diagnose():
        layers = tuple(f.layers)
        v.findings.append({"kind": f.kind, "layers": list(layers), "evidence": str(f.evidence),
                           "remedies": list(f.remedies), "first_step": f.first_step})
        if f.kind not in v.kinds:
            v.kinds.append(f.kind)
        if f.kind.startswith("nonfinite") and v.origin is None:
            v.origin = "loss" if f.kind == "nonfinite_loss" else (layers[0] if layers else None)
    v.notes = [f.kind for f in watch.notes()]
    return v


def _kind_matches(label: str, kinds: list[str], source: str) -> bool:
    if label in kinds:
        return True
    # the per-step statuses have one "nonfinite" status for every origin (coarse match)
    return source == "statuses" and label.startswith("nonfinite") and "nonfinite" in kinds


def score(label: Label, verdict: Verdict) -> dict[str, bool | None]:
    """Right/wrong of a verdict against a label.

    Returns:
        ``alarm`` (healthy run: any finding or flagged layer), ``found`` and ``kind_right``
        (pathological run), ``origin_right`` (NaN/Inf runs: the birth layer, or the loss; under
        the fallback a loss-born NaN is right when ``first_nonfinite`` names ``label.head``);
        ``None`` where a score does not apply.
    """
    said = bool(verdict.kinds or verdict.flagged)
    if label.healthy:
        return {"alarm": said, "found": None, "kind_right": None, "origin_right": None}
    origin = None
    if label.birth is not None:
        want = label.birth
        if want == "loss" and verdict.source == "statuses":
            want = label.head
        origin = verdict.origin is not None and verdict.origin == want
    return {"alarm": None, "found": said,
            "kind_right": _kind_matches(label.kind, verdict.kinds, verdict.source),
            "origin_right": origin}
