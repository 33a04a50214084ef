"""The judge: runs the verdict rules on each recorded step, over a window, and keeps the
findings of the run."""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from typing import Any, Mapping, Sequence

from .diagnosis import explain
from ..record.records import Finding, Status
from .rules import RULES, Hit, Rule, StepView
from .thresholds import Thresholds

__all__ = ["Judge"]


class Judge:
    """Runs the rules on each recorded step; owns their windows and the findings so far.

    Persistent rules hold once their condition held on `Thresholds.persistence` of the last
    `Thresholds.window` recorded steps (AMP overflow: on all of them); the others at once.
    """

    def __init__(self, thresholds: Thresholds, rules: Sequence[Rule] = RULES) -> None:
        self.th, self.rules = thresholds, tuple(rules)
        self.windows = {r.kind: deque(maxlen=thresholds.window) for r in self.rules}
        self.findings: dict[str, Finding] = {}  # by kind; `steps` counted in `_steps`
        self._steps: dict[str, int] = {}
        self._last: dict[str, tuple[Hit, StepView]] = {}  # each rule's latest hit
        self.states: dict[str, dict[str, Any]] = {r.kind: {} for r in self.rules}

    def judge(self, view: StepView) -> tuple[list[tuple[Status, str]], list[Finding]]:
        """Per-layer (status, reason) and the findings that became true at this step."""
        statuses: list[tuple[Status, str]] = [(Status.OK, "")] * len(view.names)
        new: list[Finding] = []
        broke = not view.overflow and (view.origin is not None or not math.isfinite(view.total))
        present: set[str] | None = None
        for rule in self.rules:
            if rule.optional:
                if present is None:
                    present = set().union(*view.values, ("loss",) if view.loss is not None
                                          else ())
                if present.isdisjoint(rule.reads):
                    continue  # not measured this step: its window spans the steps it was
            # on a non-finite step only the rules that say so run: the others' statistics are
            # NaN-polluted consequences (e.g. relu(NaN) reads as dead units)
            skip = broke and rule.persistent and rule.kind != "amp_overflow"
            hit = None if skip else rule.check(view, self.th, self.states[rule.kind])
            window = self.windows[rule.kind]
            if broke and hit is None and rule.persistent and any(window) \
                    and rule.kind in self._last:
                # the run went non-finite while this condition was building up: the NaN/Inf is
                # its outcome, so report it now, with the evidence of its latest step
                old_hit, old_view = self._last.pop(rule.kind)
                finding = self._note(rule, old_hit, old_view)
                if finding is not None:
                    new.append(finding)
                continue
            window.append(hit is not None)
            if hit is not None:
                self._last[rule.kind] = (hit, view)
            need = len(window) if rule.kind == "amp_overflow" else self.th.persistence
            holds = hit is not None and (not rule.persistent or (
                len(window) >= need and sum(window) >= need))
            if not holds:
                continue
            if rule.status is not None:
                for i, why in hit.layers.items():
                    if statuses[i][0] is Status.OK:
                        statuses[i] = (rule.status, why)
            finding = self._note(rule, hit, view)
            if finding is not None:
                new.append(finding)
        return statuses, new

    def _note(self, rule: Rule, hit: Hit, view: StepView) -> Finding | None:
        kind = rule.kind
        if kind == "nonfinite":
            kind = f"nonfinite_{view.origin or 'backward'}"
            born = next((k for k in self.findings if k.startswith("nonfinite")), None)
            if born is not None:  # later NaN steps are its consequences (NaN weights...)
                kind = born
        old = self.findings.get(kind)
        if old is not None:  # held again: count it, add the layers not named yet
            self._steps[kind] += 1
            if not kind.startswith("nonfinite"):
                names, known = view.names, old.layers
                more = [names[i] for i in sorted(hit.layers) if names[i] not in known]
                if more:
                    self.findings[kind] = dataclasses.replace(old, layers=known + tuple(more))
            return None
        layers = tuple(view.names[i] for i in sorted(hit.layers))
        if kind.startswith("nonfinite") and view.birth is not None:
            layers = (view.birth,)
        cause, remedy, plans = explain(kind, view, hit)
        codes = tuple(dict.fromkeys(c for plan in plans for c in plan))
        self.findings[kind] = Finding(kind, layers, hit.evidence, cause, remedy, codes,
                                      first_step=view.step, steps=1, plans=plans)
        self._steps[kind] = 1
        return self.findings[kind]

    def _current(self) -> list[Finding]:
        return [f if f.steps == self._steps.get(k, f.steps) else
                dataclasses.replace(f, steps=self._steps[k]) for k, f in self.findings.items()]

    def diagnose(self) -> list[Finding]:
        """Every finding so far, the earliest first (the first is usually the cause of the
        others: gradients that explode, then NaN), most severe first among those of a step."""
        order = {r.kind: k for k, r in enumerate(self.rules)}
        return sorted(self._current(), key=lambda f: (
            f.first_step,
            order.get(f.kind.split("_")[0] if f.kind.startswith("nonfinite") else f.kind, 99)))

    def state_dict(self) -> dict[str, Any]:
        return {"windows": {k: list(w) for k, w in self.windows.items()},
                "states": {k: dict(v) for k, v in self.states.items()},
                "findings": [f.to_dict() for f in self._current()]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for kind, values in state.get("windows", {}).items():
            if kind in self.windows:
                self.windows[kind].clear()
                self.windows[kind].extend(bool(v) for v in values)
        for kind, values in state.get("states", {}).items():
            if kind in self.states:
                self.states[kind] = {k: list(map(float, v)) if isinstance(v, list) else float(v)
                                     for k, v in values.items()}
        self.findings = {f["kind"]: Finding.from_dict(f) for f in state.get("findings", ())}
        self._steps = {k: f.steps for k, f in self.findings.items()}
