"""One reduction of a run's records (`RunSummary`), read by ``summary()``, the report and the
bench, with one number formatter and one layer order."""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from ..record.records import STATUSES, Finding, LayerStat, Status, StepRecord

__all__ = ["fmt", "layer_order", "LayerSummary", "RunSummary", "summarize", "findings_of",
           "statistic_names"]


def fmt(x: float | None) -> str:
    """The one number format of text output: 3 significant digits, ``NaN``, ``inf``, ``–``."""
    if x is None:
        return "–"
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.3g}"


def layer_order(records: Sequence[StepRecord]) -> list[str]:
    """Layers in forward order (input first) as the last record has them, then any others."""
    if not records:
        return []
    names = list(records[-1].layers)
    seen = set(names)
    for r in records:
        for n in r.layers:
            if n not in seen:
                seen.add(n)
                names.append(n)
    return names


def _median(values: Iterable[float | None]) -> float | None:
    """The median of the finite values (None without one); callers say how many were not."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(finite) if finite else None


def statistic_names(per_layer: Iterable[Sequence[Mapping[str, float | None]]]) -> list[str]:
    """Every statistic named in any record of any layer (``norm`` and ``act_norm`` first, then
    as the newest records order them), so a statistic measured only on some steps (every 4th,
    an ``every=N`` log, a wrapped history) or only by some layers (``dead_frac`` after a ReLU)
    still gets its column. ``per_layer`` holds each layer's ``numbers()`` dicts, oldest first,
    which `summarize` builds anyway: one pass, no extra work per record."""
    names: dict[str, None] = {}
    for numbers in per_layer:
        for nums in reversed(numbers):
            names.update(dict.fromkeys(nums))
    return list(names)


@dataclass(frozen=True)
class LayerSummary:
    """One layer over the run: last statistics, medians, and how often each status fired."""

    name: str
    last: LayerStat | None
    median_norm: float | None
    max_norm: float | None
    medians: Mapping[str, float | None]  # every statistic by name, median over records
    statuses: Mapping[str, int]  # status value -> recorded steps (counted over the whole run)
    spikes: int
    latest: Mapping[str, float | None] = field(default_factory=dict)  # last measured value
    kept: int = 0  # records holding this layer (what median_norm and max_norm read)
    finite: int = 0  # of those, the records whose norm is finite (what they are over)


@dataclass(frozen=True)
class RunSummary:
    """The whole run in numbers."""

    steps: int  # optimizer steps seen (recorded or not)
    recorded: int  # recorded steps over the run
    kept: int  # records this summary was computed from
    first_step: int | None
    last_step: int | None
    total_last: float | None
    total_min: float | None
    total_median: float | None
    total_max: float | None
    clipped: int
    clip_coef_median: float | None
    nonfinite_steps: tuple[int, ...]
    amp_overflow: int
    skipped: int
    births: tuple[tuple[str, int, int], ...]  # (where, count, first step)
    spike_steps: tuple[int, ...]
    layer_spikes: int
    layers: tuple[LayerSummary, ...]
    statistics: tuple[str, ...]  # every per-layer statistic seen, by name
    findings: tuple[Finding, ...] = field(default=())
    notes: tuple[Finding, ...] = field(default=())  # true, likely harmless (`Finding.note`)
    total_finite: int = 0  # kept records with a finite total norm (what min/median/max are over)


def _status_of_kind() -> dict[str, Status]:
    """The status each finding kind writes on its layers (from the declared rules)."""
    from ..verdict.rules import RULES  # the rules declare it; imported here, where it is read

    return {r.kind: r.status for r in RULES if r.status is not None}


def findings_of(records: Iterable[StepRecord], notes: bool = False) -> list[Finding]:
    """The diagnosis a log holds, as the live `GradWatch.diagnose` states it (with ``notes``:
    its notes, as `GradWatch.notes` states them, at the step each was first kept, with the
    layers it named then).

    A record carries a finding at the step it became true. Its later steps and the layers it
    named since are read from the layers' statuses (a layer gets a finding's status on each
    step the finding holds): ``steps`` counts the records from ``first_step`` on with a layer
    in that status (with a non-finite gradient, for the non-finite kinds) and ``layers`` grows
    in the order the live diagnosis adds them. A status two findings of the run share
    (``vanishing`` and ``stalled``) and a kind without a status keep the recorded numbers.
    """
    recs = list(records)
    first: dict[str, Finding] = {}
    kept: dict[str, Finding] = {}
    latest: dict[str, bool] = {}  # kind -> whether its latest word is a note
    for r in recs:
        for f in r.findings:  # an alarm and a note of one kind: the later supersedes
            if f.note:
                kept[f.kind] = f
            elif f.kind not in first or latest[f.kind]:
                first[f.kind] = f
            latest[f.kind] = bool(f.note)
    if notes:
        return [f for kind, f in kept.items() if latest[kind]]
    first = {kind: f for kind, f in first.items() if not latest[kind]}
    status_of = _status_of_kind()
    shared = Counter(status_of.get(k) for k in first)
    out = []
    for kind, f in first.items():
        later = [r for r in recs if r.step >= f.first_step]
        if kind.startswith("nonfinite"):
            out.append(dataclasses.replace(f, steps=max(f.steps, sum(
                r.nonfinite and not r.amp_overflow for r in later))))
            continue
        status = status_of.get(kind)
        if status is None or shared[status] > 1:
            out.append(f)
            continue
        layers, steps = list(f.layers), 0
        for r in later:
            hit = [name for name, x in r.layers.items() if x.status is status]
            steps += bool(hit)
            layers += [name for name in hit if name not in layers]
        out.append(dataclasses.replace(f, layers=tuple(layers), steps=max(steps, f.steps)))
    return out


def _layer_summary(name: str, stats: Sequence[LayerStat],
                   numbers: Sequence[Mapping[str, float | None]], stat_names: Sequence[str],
                   last: LayerStat | None, flags: Mapping[tuple[str, str], int]) -> LayerSummary:
    """One layer's `LayerSummary` from its stats (oldest first) and their ``numbers()``: the
    medians and max over finite values, with how many of the records those were."""
    finite = [s.norm for s in stats if math.isfinite(s.norm)]
    latest = {}
    for k in stat_names:
        latest[k] = next((nums[k] for nums in reversed(numbers) if nums.get(k) is not None), None)
    return LayerSummary(
        name=name, last=last, median_norm=statistics.median(finite) if finite else None,
        max_norm=max(finite) if finite else None,
        medians={k: _median(nums.get(k) for nums in numbers) for k in stat_names},
        latest=latest,
        statuses={st.value: flags.get((name, st.value), 0) for st in STATUSES
                  if st is not Status.OK},
        spikes=flags.get((name, "spike"), 0), kept=len(stats), finite=len(finite))


def summarize(records: Iterable[StepRecord], *, steps: int | None = None,
              run: Mapping[str, int] | None = None,
              flags: Mapping[tuple[str, str], int] | None = None,
              findings: Sequence[Finding] | None = None,
              notes: Sequence[Finding] | None = None) -> RunSummary:
    """Reduces records (and, from a live watch, its run-wide counters) to a `RunSummary`.

    Args:
        records: The records, oldest first.
        steps: Optimizer steps seen; defaults to the last record's step + 1.
        run: Run-wide counters (`gradwatch.record.ledger.COUNTERS`); default: counted from records.
        flags: Steps each (layer, status or "spike") was flagged over the run; default: counted.
        findings: The diagnosis; default: the findings the records carry.
        notes: The notes (true, likely harmless); default: those the records carry.
    """
    recs = list(records)
    names = layer_order(recs)
    totals = [r.total_norm for r in recs if math.isfinite(r.total_norm)]
    clipped = [r for r in recs if r.clipped]
    bad = [r for r in recs if r.nonfinite]
    born: Counter[str] = Counter()
    first_born: dict[str, int] = {}
    for r in bad:
        where = r.first_nonfinite or ("the loss" if r.nonfinite_origin == "loss" else "unknown")
        born[where] += 1
        first_born.setdefault(where, r.step)
    if flags is None:
        counted: Counter[tuple[str, str]] = Counter()
        for r in recs:
            for n, s in r.layers.items():
                if s.status is not Status.OK:
                    counted[(n, s.status.value)] += 1
                if s.spike:
                    counted[(n, "spike")] += 1
        flags = counted
    stats_of = {name: [r.layers[name] for r in recs if name in r.layers] for name in names}
    numbers_of = {name: [s.numbers() for s in stats] for name, stats in stats_of.items()}
    stat_names = statistic_names(numbers_of.values())
    layers = [_layer_summary(name, stats_of[name], numbers_of[name], stat_names,
                             recs[-1].layers.get(name), flags) for name in names]
    run = run if run is not None else {
        "recorded": len(recs), "clipped": len(clipped), "skipped": sum(r.skipped for r in recs),
        "nonfinite": len(bad), "spikes": sum(r.spike for r in recs),
        "amp_overflow": sum(r.amp_overflow for r in recs)}
    return RunSummary(
        steps=steps if steps is not None else (recs[-1].step + 1 if recs else 0),
        recorded=int(run.get("recorded", len(recs))), kept=len(recs),
        first_step=recs[0].step if recs else None, last_step=recs[-1].step if recs else None,
        total_last=recs[-1].total_norm if recs else None,
        total_min=min(totals) if totals else None,
        total_median=statistics.median(totals) if totals else None,
        total_max=max(totals) if totals else None, total_finite=len(totals),
        clipped=int(run.get("clipped", len(clipped))),
        clip_coef_median=_median(r.clip_coef for r in clipped),
        nonfinite_steps=tuple(r.step for r in bad),
        amp_overflow=int(run.get("amp_overflow", 0)), skipped=int(run.get("skipped", 0)),
        births=tuple((w, k, first_born[w]) for w, k in born.most_common()),
        spike_steps=tuple(r.step for r in recs if r.spike),
        layer_spikes=sum(len(r.spikes) for r in recs), layers=tuple(layers),
        statistics=tuple(stat_names),
        findings=tuple(findings if findings is not None else findings_of(recs)),
        notes=tuple(notes if notes is not None else findings_of(recs, notes=True)))
