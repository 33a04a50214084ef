"""The judge: runs the verdict rules on each recorded step, over a window, and keeps the
findings of the run. Statuses come out as per-layer arrays (`Verdicts`)."""

from __future__ import annotations

import dataclasses
from collections import deque
from typing import Any, Mapping, Sequence

import numpy as np

from ..record.records import STATUS_CODES, Finding
from .curve import LossCurve
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
    held: tuple[str, ...] = ()  # the kinds of the findings (not notes) that held at this step


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
        self.notes: dict[str, Finding] = {}  # by kind: true, likely harmless conditions
        self._steps: dict[str, int] = {}
        self.curve = LossCurve(thresholds.window)
        self._last: dict[str, tuple[Hit, StepView] | Finding] = {}  # each rule's latest hit
        # (a resumed watch holds the finding it would make of it)
        self.states: dict[str, dict[str, Any]] = {r.kind: {} for r in self.rules}
        self.names: dict[str, int] = {}  # layer name -> row of the rules' per-layer memory
        # what the loop reads of each rule, looked up once: (rule, the statistics whose
        # absence skips it or None, persistent, its window, the status code or None)
        self._plan = [(r, frozenset(r.reads) if r.optional else None, r.persistent,
                       self.windows[r.kind], None if r.status is None else
                       STATUS_CODES.index(r.status)) for r in self.rules]
        self._named: dict[str, tuple[tuple[str, ...], set[str]]] = {}  # see `_unnamed`
        self._held: list[str] = []  # the finding kinds counted at the step being judged

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
        broke = view.broken
        self._held = held = []
        self.curve.add(view.loss)
        view.curve = self.curve
        present = view.measured
        th, states, persistence = self.th, self.states, self.th.persistence
        for rule, reads, persistent, window, code in self._plan:
            if reads is not None and present.isdisjoint(reads):
                continue  # not measured this step: its window spans the steps it was
            # on a non-finite step only the rules that say so run: the others' statistics are
            # NaN-polluted consequences (e.g. relu(NaN) reads as dead units)
            skip = broke and persistent and rule.kind != "amp_overflow"
            hit = None if skip else rule.check(view, th, states[rule.kind])
            if broke and hit is None and persistent and any(window) \
                    and rule.kind in self._last:
                # the run went non-finite while this condition was building up: the NaN/Inf is
                # its outcome, so report it now, with the evidence of its latest step
                old = self._last.pop(rule.kind)
                finding = self._resumed(old) if isinstance(old, Finding) else self._keep(
                    rule, old[0], old[1], self.notes if old[0].note else None)
                if finding is not None:
                    new.append(finding)
                continue
            window.append(hit is not None)
            if hit is None:
                continue
            self._last[rule.kind] = (hit, view)
            if persistent:
                need = window.maxlen if rule.kind == "amp_overflow" else persistence  # (a
                # full window: the scaler's first overflows while it calibrates are normal)
                if len(window) < need or sum(window) < need:
                    continue
            if hit.note:  # true but harmless: no status, kept apart from the findings
                finding = self._keep(rule, hit, view, self.notes)
                if rule.kind in self.findings:
                    finding = self._supersede(rule.kind)
                if finding is not None:
                    new.append(finding)
                continue
            if code is not None:
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
            finding = self._keep(rule, hit, view)
            if finding is not None:
                new.append(finding)
        return Verdicts(status, template, value, tuple(templates), new,
                        tuple(k for k in dict.fromkeys(held) if k in self.findings))

    def _keep(self, rule: Rule, hit: Hit, view: StepView,
              store: dict[str, Finding] | None = None) -> Finding | None:
        """Keeps ``hit`` in ``store`` (the findings, or the notes): a new `Finding` (returned),
        or one more step and any new layers of the kept one."""
        store = self.findings if store is None else store
        kind = rule.kind
        if kind == "nonfinite":
            kind = f"nonfinite_{view.origin or 'backward'}"
            born = next((k for k in store if k.startswith("nonfinite")), None)
            if born is not None:  # later NaN steps are its consequences (NaN weights...)
                kind = born
        key = kind if store is self.findings else f"note:{kind}"
        if store is self.findings:
            self._held.append(kind)
        old = store.get(kind)
        if old is not None:  # held again: count it, add the layers not named yet
            self._steps[key] += 1
            if not kind.startswith("nonfinite"):
                more = self._unnamed(key, old.layers, hit, view)
                if more:
                    store[kind] = dataclasses.replace(old, layers=old.layers + more)
                    self._named[key] = (store[kind].layers, self._named[key][1])
            return None
        store[kind] = _made(kind, hit, view)
        self._steps[key] = 1
        return store[kind]

    def _resumed(self, f: Finding) -> Finding | None:
        """`_keep` for the finding a resumed watch holds for a condition that was building up
        when it was saved (the run went non-finite since)."""
        store, key = (self.notes, f"note:{f.kind}") if f.note else (self.findings, f.kind)
        if not f.note:
            self._held.append(f.kind)
        if f.kind in store:
            self._steps[key] += 1
            return None
        store[f.kind] = f
        self._steps[key] = f.steps
        return f

    def _unnamed(self, key: str, layers: tuple[str, ...], hit: Hit,
                 view: StepView) -> tuple[str, ...]:
        """The layers ``hit`` names that ``layers`` (a kept finding's) does not, in the hit's
        order. The set of named layers is kept per finding, not rebuilt at every step it
        holds."""
        memo = self._named.get(key)
        if memo is None or memo[0] is not layers:  # first use, or changed elsewhere
            memo = self._named[key] = (layers, set(layers))
        known, names = memo[1], view.names
        more = [names[i] for i in hit.positions.tolist() if names[i] not in known]
        more += [n for n in hit.names if n not in known and n not in more]
        known.update(more)
        return tuple(more)

    def _supersede(self, kind: str) -> Finding:
        """An alarm of ``kind`` that now holds as a note (the loss fell since): the note, with
        the alarm's first step and its steps added, replaces it (returned, so the log has it)."""
        alarm, note = self.findings.pop(kind), self.notes[kind]
        steps = self._steps.pop(kind) + self._steps[f"note:{kind}"]
        layers = alarm.layers + tuple(n for n in note.layers if n not in alarm.layers)
        self.notes[kind] = dataclasses.replace(note, layers=layers, steps=steps,
                                               first_step=min(alarm.first_step, note.first_step))
        self._steps[f"note:{kind}"] = steps
        return self.notes[kind]

    def _current(self, notes: bool = False) -> list[Finding]:
        if notes:  # a note whose kind became an alarm is superseded by it
            return [f if f.steps == self._steps.get(f"note:{k}", f.steps) else
                    dataclasses.replace(f, steps=self._steps[f"note:{k}"])
                    for k, f in self.notes.items() if k not in self.findings]
        return [f if f.steps == self._steps.get(k, f.steps) else
                dataclasses.replace(f, steps=self._steps[k]) for k, f in self.findings.items()]

    def diagnose(self, notes: bool = False) -> list[Finding]:
        """Every finding so far (with ``notes``: every note instead), the earliest first (the
        first is usually the cause of the others: gradients that explode, then NaN), most
        severe first among those of a step."""
        order = {r.kind: k for k, r in enumerate(self.rules)}
        return sorted(self._current(notes), key=lambda f: (
            f.first_step,
            order.get(f.kind.split("_")[0] if f.kind.startswith("nonfinite") else f.kind, 99)))

    def state_dict(self) -> dict[str, Any]:
        return {"windows": {k: list(w) for k, w in self.windows.items()},
                "states": {k: {key: v.tolist() if isinstance(v, np.ndarray) else
                               (list(v) if isinstance(v, list) else
                                dict(v) if isinstance(v, dict) else v)
                               for key, v in s.items()} for k, s in self.states.items()},
                "names": list(self.names), "curve": self.curve.state_dict(),
                "findings": [f.to_dict() for f in self._current()],
                "notes": [f.to_dict() for f in self._current(True)],
                "last": {k: (v if isinstance(v, Finding) else _made(k, *v)).to_dict()
                         for k, v in self._last.items()}}

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
        self.notes = {f["kind"]: Finding.from_dict(f) for f in state.get("notes", ())}
        self._steps = {k: f.steps for k, f in self.findings.items()} | {
            f"note:{k}": f.steps for k, f in self.notes.items()}
        self.curve.load_state_dict(state.get("curve", {}))
        self._last = {str(k): Finding.from_dict(f) for k, f in state.get("last", {}).items()}


def _made(kind: str, hit: Hit, view: StepView) -> Finding:
    """The finding ``hit`` at ``view`` makes when it is first kept."""
    layers = tuple(view.names[i] for i in hit.positions.tolist()) + hit.names
    if kind.startswith("nonfinite") and view.birth is not None:
        layers = (view.birth,)
    cause, remedy, plans = explain(kind, view, hit)
    codes = tuple(dict.fromkeys(c for plan in plans for c in plan))
    return Finding(kind, layers, hit.evidence, cause, remedy, codes, first_step=view.step,
                   steps=1, plans=plans, note=hit.note)


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
