"""The judge: runs the verdict rules on each recorded step, over a window, and keeps the
findings of the run. Statuses come out as per-layer arrays (`Verdicts`)."""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from typing import Any, Mapping, Sequence

import numpy as np

from ..record.records import STATUS_CODES, Finding
from .diagnosis import explain
from .rules import RULES
from .view import Hit, Rule, StepView

__all__ = ["Judge", "Verdicts"]


@dataclasses.dataclass
class Verdicts:
    """The statuses of one step's layers as columns, and the findings that became true.

    ``status`` holds codes into `gradwatch.record.records.STATUS_CODES` (0 is ok); a layer's
    words are ``templates[template[i]].format(value[i])`` (``template[i]`` is -1 for none)."""

    status: np.ndarray
    template: np.ndarray
    value: np.ndarray
    templates: tuple[str, ...]
    findings: list[Finding]


class Judge:
    """Runs the rules on each recorded step; owns their windows and the findings so far.

    Persistent rules hold once their condition held on `Thresholds.persistence` of the last
    `Thresholds.window` recorded steps (AMP overflow: on all of them); the others at once.
    A rule's per-layer memory is indexed by the judge's table of layer names (`uids`).
    """

    def __init__(self, thresholds: Any, rules: Sequence[Rule] = RULES) -> None:
        self.th, self.rules = thresholds, tuple(rules)
        self.windows = {r.kind: deque(maxlen=thresholds.window) for r in self.rules}
        self.findings: dict[str, Finding] = {}  # by kind; `steps` counted in `_steps`
        self._steps: dict[str, int] = {}
        self._last: dict[str, tuple[Hit, StepView]] = {}  # each rule's latest hit
        self.states: dict[str, dict[str, Any]] = {r.kind: {} for r in self.rules}
        self.names: dict[str, int] = {}  # layer name -> row of the rules' per-layer memory

    def uids(self, names: Sequence[str]) -> np.ndarray:
        """The memory row of each named layer (new names get new rows)."""
        table = self.names
        return np.array([table.setdefault(n, len(table)) for n in names], dtype=np.int64)

    def judge(self, view: StepView) -> Verdicts:
        """The step's per-layer statuses and the findings that became true at it."""
        n = len(view.names)
        status = np.zeros(n, dtype=np.int8)
        template = np.full(n, -1, dtype=np.int16)
        value = np.zeros(n)
        templates: list[str] = []
        new: list[Finding] = []
        broke = not view.overflow and (view.origin is not None or not math.isfinite(view.total))
        present = view.measured
        for rule in self.rules:
            if rule.optional and present.isdisjoint(rule.reads):
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
                code = STATUS_CODES.index(rule.status)
                for mark in hit.marks:
                    free = status[mark.layers] == 0
                    where = mark.layers[free]
                    if not len(where):
                        continue
                    status[where] = code
                    template[where] = len(templates)
                    templates.append(mark.template)
                    if len(mark.values):
                        value[where] = mark.values[free]
            finding = self._note(rule, hit, view)
            if finding is not None:
                new.append(finding)
        return Verdicts(status, template, value, tuple(templates), new)

    def _note(self, rule: Rule, hit: Hit, view: StepView) -> Finding | None:
        kind = rule.kind
        if kind == "nonfinite":
            kind = f"nonfinite_{view.origin or 'backward'}"
            born = next((k for k in self.findings if k.startswith("nonfinite")), None)
            if born is not None:  # later NaN steps are its consequences (NaN weights...)
                kind = born
        old = self.findings.get(kind)
        positions = hit.positions.tolist()
        if old is not None:  # held again: count it, add the layers not named yet
            self._steps[kind] += 1
            if not kind.startswith("nonfinite"):
                names, known = view.names, set(old.layers)
                more = [names[i] for i in positions if names[i] not in known]
                more += [n for n in hit.names if n not in known and n not in more]
                if more:
                    self.findings[kind] = dataclasses.replace(old, layers=old.layers + tuple(more))
            return None
        layers = tuple(view.names[i] for i in positions) + hit.names
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
                "states": {k: {key: v.tolist() if isinstance(v, np.ndarray) else
                               (list(v) if isinstance(v, list) else
                                dict(v) if isinstance(v, dict) else v)
                               for key, v in s.items()} for k, s in self.states.items()},
                "names": list(self.names),
                "findings": [f.to_dict() for f in self._current()]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for kind, values in state.get("windows", {}).items():
            if kind in self.windows:
                self.windows[kind].clear()
                self.windows[kind].extend(bool(v) for v in values)
        self.names = {str(n): k for k, n in enumerate(state.get("names", ()))}
        for kind, values in state.get("states", {}).items():
            if kind in self.states:
                self.states[kind] = {k: _restore(k, v) for k, v in values.items()}
        self.findings = {f["kind"]: Finding.from_dict(f) for f in state.get("findings", ())}
        self._steps = {k: f.steps for k, f in self.findings.items()}


_ARRAYS = ("shares", "measured", "streak")
"""Per-layer memories (arrays over the judge's layer names); other lists are plain lists."""


def _restore(key: str, value: Any) -> Any:
    if isinstance(value, dict):  # name -> count
        return {str(k): int(v) for k, v in value.items()}
    if key in _ARRAYS:
        return np.array(value, dtype=np.float64)
    if isinstance(value, list):
        return list(map(float, value))
    return float(value)
