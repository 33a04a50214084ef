"""One reduction of a run's records (`RunSummary`), read by ``summary()``, the report and the
bench, with one number formatter and one layer order.

The reduction reads columns (`gradwatch.io.logrecords.LogRecords`: what `read_runs` gives, or
the records copied into columns once), never a `LayerStat` per layer and record: a run of a
400-layer model over 100,000 steps is summarised in bounded memory.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np

from ..record.records import STATUSES, Finding, LayerStat, Status, StepRecord
from .logrecords import LogRecords, columns_of
from .runstats import (blocks, finite_medians, gather, latest, layer_names, statistic_names,
                       status_hits)

__all__ = ["fmt", "layer_order", "LayerSummary", "RunSummary", "summarize", "findings_of",
           "step_columns"]


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
    return layer_names(columns_of(records))


def _median(values: Iterable[float | None]) -> float | None:
    """The median of the finite values (None without one); callers say how many were not."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(finite) if finite else None


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
    births: tuple[tuple[str, int, int], ...]  # (where, count, first step), earliest first
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


def step_columns(view: LogRecords) -> dict[str, np.ndarray]:
    """The records' step-level values as arrays (one entry per record): ``step``, ``total``,
    ``clip``, and the masks ``nonfinite``, ``clipped``, ``spike``, ``skipped``, ``amp``
    (`StepRecord.nonfinite`, `StepRecord.clipped`, ...)."""
    store, index = view.store, view.index
    flags = store.flags[index]
    total, clip = store.total[index], store.clip[index]
    amp = (flags & 4) != 0
    named = np.isin(index, list(store.first)) | np.isin(index, list(store.origin))
    return {"step": store.step[index], "total": total, "clip": clip, "amp": amp,
            "nonfinite": ~amp & (named | ~np.isfinite(total)),
            "clipped": (clip < 1.0) | ~np.isfinite(clip), "spike": (flags & 1) != 0,
            "skipped": (flags & 2) != 0}


def findings_of(records: Iterable[StepRecord], notes: bool = False) -> list[Finding]:
    """The diagnosis a log holds, as the live `GradWatch.diagnose` states it (with ``notes``:
    its notes, as `GradWatch.notes` states them, at the step each was first kept, with the
    layers it named then).

    A record carries a finding at the step it became true, and names it in ``held`` at each
    step it held: ``steps`` counts those records. The layers it named since are read from the
    layers' statuses (a layer gets a finding's status on each step the finding holds), in the
    order the live diagnosis adds them; a kind without a status, or whose status another
    finding of the run shares (``vanishing`` and ``stalled``), keeps the layers it was recorded
    with. A log written before records had ``held`` counts the records from ``first_step`` on
    with a layer in the finding's status (with a non-finite gradient, for the non-finite kinds).
    """
    view = columns_of(records)
    carried = view.store.findings
    first: dict[str, Finding] = {}
    kept: dict[str, Finding] = {}
    latest_note: dict[str, bool] = {}  # kind -> whether its latest word is a note
    for i in view.index[np.isin(view.index, list(carried))].tolist():
        for f in carried[i]:  # an alarm and a note of one kind: the later supersedes
            if f.note:
                kept[f.kind] = f
            elif f.kind not in first or latest_note[f.kind]:
                first[f.kind] = f
            latest_note[f.kind] = bool(f.note)
    if notes:
        return [f for kind, f in kept.items() if latest_note[kind]]
    first = {kind: f for kind, f in first.items() if not latest_note[kind]}
    status_of = _status_of_kind()
    shared = Counter(status_of.get(k) for k in first)
    heads = step_columns(view) if first else {}
    held = _held_steps(view, first, heads)
    out = []
    for kind, f in first.items():
        later = heads["step"] >= f.first_step
        steps = held.get(kind)  # the records that say the finding held (newer logs)
        if kind.startswith("nonfinite"):
            out.append(dataclasses.replace(f, steps=steps or max(f.steps, int(
                (later & heads["nonfinite"]).sum()))))
            continue
        status = status_of.get(kind)
        if status is None or shared[status] > 1:
            out.append(f if steps is None else dataclasses.replace(f, steps=steps))
            continue
        hits, hit_steps = status_hits(view, status, later)
        layers = list(f.layers)
        layers += [name for name, _k in hits if name not in layers]
        out.append(dataclasses.replace(f, layers=tuple(layers),
                                       steps=steps or max(hit_steps, f.steps)))
    return out


def _held_steps(view: LogRecords, first: Mapping[str, Finding],
                heads: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Kind -> the records from the finding's first step on whose ``held`` names it, for the
    kinds some record names (a log written before `StepRecord.held` names none)."""
    held = view.store.held
    rows = [(k, held[i]) for k, i in enumerate(view.index.tolist()) if i in held] \
        if held else []
    out = {}
    for kind, f in first.items():
        n = sum(1 for k, kinds in rows if kind in kinds and heads["step"][k] >= f.first_step)
        if n:
            out[kind] = n
    return out


def _layer_summaries(view: LogRecords, names: Sequence[str], stat_names: Sequence[str],
                     last: StepRecord, flags: Mapping[tuple[str, str], int] | None
                     ) -> tuple[list[LayerSummary], int]:
    """Each layer's `LayerSummary` (medians and max over its finite values, with how many of
    its records those were; statuses and spikes counted from the columns unless ``flags``
    gives them), and the run's layer spikes."""
    out, spikes = [], 0
    codes = {st.value: view.store.status_ids.get(st) for st in STATUSES if st is not Status.OK}
    for block in blocks(names):
        norm, present = gather(view, block, "norm")
        medians, maxima, finite = finite_medians(norm, present)
        cols = {"norm": (norm, present), "act_norm": _act(view, block)}
        cols.update((k, gather(view, block, "extra", k)) for k in stat_names
                    if k not in cols and k in view.store.extra)
        meds = {k: finite_medians(*v)[0] for k, v in cols.items() if k != "norm"}
        meds["norm"] = medians
        lasts = {k: latest(*v) for k, v in cols.items()}
        counted = _counted(view, block, codes)
        spikes += sum(counted["spike"])
        for j, name in enumerate(block):
            count = {key: n[j] for key, n in counted.items()} if flags is None else {
                key: flags.get((name, key), 0) for key in counted}
            out.append(LayerSummary(
                name=name, last=last.layers.get(name), median_norm=medians[j],
                max_norm=maxima[j],
                medians={k: meds[k][j] if k in meds else None for k in stat_names},
                latest={k: lasts[k][j] if k in lasts else None for k in stat_names},
                statuses={value: count[value] for value in codes}, spikes=count["spike"],
                kept=int(present[:, j].sum()), finite=finite[j]))
    return out, spikes


def _act(view: LogRecords, block: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    act, present = gather(view, block, "act")
    return act, present & (gather(view, block, "act_on")[0] > 0)


def _counted(view: LogRecords, block: Sequence[str], codes: Mapping[str, int | None]
             ) -> dict[str, list[int]]:
    """Per status value (and ``"spike"``): on how many records each layer of the block had it."""
    status = gather(view, block, "status")[0]
    out = {value: ((status == code).sum(axis=0).tolist() if code is not None
                   else [0] * len(block)) for value, code in codes.items()}
    out["spike"] = (gather(view, block, "spike")[0] > 0).sum(axis=0).tolist()
    return out


def summarize(records: Iterable[StepRecord], *, steps: int | None = None,
              run: Mapping[str, int] | None = None,
              flags: Mapping[tuple[str, str], int] | None = None,
              findings: Sequence[Finding] | None = None,
              notes: Sequence[Finding] | None = None) -> RunSummary:
    """Reduces records (and, from a live watch, its run-wide counters) to a `RunSummary`.

    Args:
        records: The records, oldest first (`read_runs`'s ``Run.records`` are read as the
            columns they are; other records are copied into columns once).
        steps: Optimizer steps seen; defaults to the last record's step + 1.
        run: Run-wide counters (`gradwatch.record.ledger.COUNTERS`); default: counted from records.
        flags: Steps each (layer, status or "spike") was flagged over the run; default: counted.
        findings: The diagnosis; default: the findings the records carry.
        notes: The notes (true, likely harmless); default: those the records carry.
    """
    recs = records if isinstance(records, Sequence) else list(records)
    view = columns_of(recs)
    plain = steps is None and run is None and flags is None and findings is None and notes is None
    if plain and "summary" in view.derived:  # a log's records: summarised once
        return view.derived["summary"]
    n = len(view)
    names = layer_names(view)
    heads = step_columns(view)
    totals = [t for t in heads["total"].tolist() if math.isfinite(t)]
    bad = np.flatnonzero(heads["nonfinite"]).tolist()
    born: dict[str, list[int]] = {}  # where -> [count, first step], the earliest birth first
    for k in bad:
        i = int(view.index[k])
        where = view.store.first.get(i) or (
            "the loss" if view.store.origin.get(i) == "loss" else "unknown")
        born.setdefault(where, [0, int(heads["step"][k])])[0] += 1
    stat_names = statistic_names(view, names)
    last = recs[-1] if n else None
    layers, layer_spikes = _layer_summaries(view, names, stat_names, last, flags) if n \
        else ([], 0)
    clipped = heads["clipped"]
    run = run if run is not None else {
        "recorded": n, "clipped": int(clipped.sum()), "skipped": int(heads["skipped"].sum()),
        "nonfinite": len(bad), "spikes": int(heads["spike"].sum()),
        "amp_overflow": int(heads["amp"].sum())}
    step_of = heads["step"].tolist()
    summary = RunSummary(
        steps=steps if steps is not None else (step_of[-1] + 1 if n else 0),
        recorded=int(run.get("recorded", n)), kept=n,
        first_step=step_of[0] if n else None, last_step=step_of[-1] if n else None,
        total_last=float(heads["total"][-1]) if n else None,
        total_min=min(totals) if totals else None,
        total_median=statistics.median(totals) if totals else None,
        total_max=max(totals) if totals else None, total_finite=len(totals),
        clipped=int(run.get("clipped", int(clipped.sum()))),
        clip_coef_median=_median(heads["clip"][clipped].tolist()),
        nonfinite_steps=tuple(step_of[k] for k in bad),
        amp_overflow=int(run.get("amp_overflow", 0)), skipped=int(run.get("skipped", 0)),
        births=tuple((w, k, first) for w, (k, first) in born.items()),
        spike_steps=tuple(step_of[k] for k in np.flatnonzero(heads["spike"]).tolist()),
        layer_spikes=layer_spikes,
        layers=tuple(layers), statistics=tuple(stat_names),
        findings=tuple(findings if findings is not None else findings_of(view)),
        notes=tuple(notes if notes is not None else findings_of(view, notes=True)))
    if plain:
        view.derived["summary"] = summary
    return summary

