"""Text summaries of a run from its records: Markdown, or self-contained HTML with figures."""

from __future__ import annotations

import base64
import html
from pathlib import Path, PurePath
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..verdict.diagnosis import NOTHING, details, headline
from ..record.records import STATUSES, Finding, Status, StepRecord
from .htmlparts import CSS, html_diagnosis, html_table, inline
from .logrecords import LogRecords, columns_of
from .runstats import status_hits
from .runsummary import RunSummary, findings_of, fmt, step_columns, summarize
from .reportargs import check_header as _check_header, check_images as _check_images, \
    check_records as _check, declared_labels as _labels
from .summary import FINITE_NOTE, of_finite
from ..measure.statistics import label_of

__all__ = ["findings", "diagnosis_lines", "run_overview", "layer_table", "markdown_report",
           "html_report", "settings"]

_CORE = (Status.VANISHING, Status.EXPLODING, Status.NONFINITE)


def _steps(steps: Sequence[int], most: int = 8) -> str:
    """"step 3" or "steps 3, 5, … (12 in all)"."""
    shown = ", ".join(str(s) for s in steps[:most])
    more = f", … ({len(steps)} in all)" if len(steps) > most else ""
    return ("step " if len(steps) == 1 else "steps ") + shown + more


def _shown_statuses(s: RunSummary) -> list[Status]:
    """The core statuses, then any other that fired in this run (no empty columns)."""
    fired = {k for layer in s.layers for k, n in layer.statuses.items() if n}
    return list(_CORE) + [st for st in STATUSES if st not in _CORE and st is not Status.OK
                          and st.value in fired]


def run_overview(records: Iterable[StepRecord]) -> list[tuple[str, str]]:
    """(label, value) rows describing the whole run.

    Raises:
        ValueError: ``records`` is empty.
    """
    return _overview(summarize(columns_of(_check(records))))


def _overview(s: RunSummary) -> list[tuple[str, str]]:
    n = s.kept
    finite = (f" ({s.total_finite} of {n} steps finite)" if s.total_finite < n else "")
    return [
        ("recorded steps", f"{n} (steps {s.first_step} .. {s.last_step})"),
        ("layers watched", str(len(s.layers))),
        ("total norm (finite steps)",
         f"min {fmt(s.total_min)} · median {fmt(s.total_median)} · max {fmt(s.total_max)}"
         + finite if s.total_median is not None else f"no finite value in {n} steps"),
        ("clipped steps", f"{s.clipped} of {n} ({100 * s.clipped / n:.1f}%)"
         + (f", median coefficient {fmt(s.clip_coef_median)}" if s.clipped else "")),
        ("steps with non-finite gradients", f"{len(s.nonfinite_steps)}"
         + (f" ({_steps(s.nonfinite_steps)})" if s.nonfinite_steps else "")),
        ("AMP loss-scale overflows (steps the GradScaler skipped; not counted above)",
         str(s.amp_overflow)),
        ("skipped optimizer steps", str(s.skipped)),
        ("where NaN/Inf was born (first_nonfinite)", _births(s)),
        ("spikes in total norm", f"{len(s.spike_steps)}"
         + (f" ({_steps(s.spike_steps)})" if s.spike_steps else "")),
        ("layer spikes", str(s.layer_spikes)),
    ]


def _births(s: RunSummary) -> str:
    """The first birth of a NaN/Inf (the earliest step), then the places later non-finite
    steps named, as what followed it (a NaN in the weights shows up first in layer 0)."""
    if not s.births:
        return "–"
    (where, k, first), *later = s.births
    return f"`{where}` ×{k} (first at step {first})" + ("; followed by: " + "; ".join(
        f"`{w}` ×{c} (first at step {f})" for w, c, f in later) if later else "")


def settings(header: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """(setting, value) rows from a run header: the options (clip, every, ...) and thresholds."""
    if not header:
        return []
    rows = [(f"option `{k}`", "none" if v is None else str(v))
            for k, v in (header.get("options") or {}).items()]
    rows += [(f"threshold `{k}`", "off" if v is None else f"{v:g}" if isinstance(
        v, (int, float)) and not isinstance(v, bool) else str(v))
             for k, v in (header.get("thresholds") or {}).items()]
    return rows


def layer_table(records: Iterable[StepRecord], *, header: Mapping[str, Any] | None = None
                ) -> tuple[list[str], list[list[str]]]:
    """Header and one row per layer (forward order): norms and how often each verdict fired.

    A median or max over fewer records than hold the layer (NaN/Inf left out) reads
    ``m (k/n)``: over the ``k`` finite of ``n`` values. A statistic declared in the run
    ``header`` (its ``"statistics"``) is named by its label.

    Raises:
        ValueError: ``records`` is empty.
    """
    return _table(summarize(columns_of(_check(records))), _check_header(header))


def _table(s: RunSummary, header: Mapping[str, Any] | None = None
           ) -> tuple[list[str], list[list[str]]]:
    shown = _shown_statuses(s)
    extra = [k for k in s.statistics if k not in ("norm", "act_norm")]
    declared = _labels(header)
    head = ["#", "layer", "last norm", "median norm", "max norm", "median act norm",
            *(f"median {declared.get(k) or label_of(k)}" for k in extra),
            *(STATUSES[st].label for st in shown), "spikes"]
    rows = []
    for i, layer in enumerate(s.layers):
        rows.append([str(i), layer.name, fmt(layer.last.norm if layer.last else None),
                     of_finite(layer.median_norm, layer.finite, layer.kept),
                     of_finite(layer.max_norm, layer.finite, layer.kept),
                     fmt(layer.medians.get("act_norm")),
                     *(fmt(layer.medians.get(k)) for k in extra),
                     *(str(layer.statuses.get(st.value, 0)) for st in shown), str(layer.spikes)])
    return head, rows


def _table_note(s: RunSummary) -> str | None:
    """The footnote under the layer table when some layer's norms were non-finite."""
    return FINITE_NOTE[0].upper() + FINITE_NOTE[1:] + "." if any(
        x.finite < x.kept for x in s.layers) else None


def findings(records: Iterable[StepRecord], *, most: int = 3) -> list[str]:
    """A few plain-language sentences on what went wrong, worst first; one line when nothing did.

    Raises:
        ValueError: ``records`` is empty.
    """
    recs = columns_of(_check(records))
    return _findings(recs, summarize(recs), most)


def _findings(recs: LogRecords, s: RunSummary, most: int = 3) -> list[str]:
    n, out = s.kept, []
    bad = np.flatnonzero(step_columns(recs)["nonfinite"])
    if bad.size:
        first = recs[int(bad[0])]
        where = f", born in `{first.first_nonfinite}`" if first.first_nonfinite else (
            ", born in the loss" if first.nonfinite_origin == "loss" else "")
        out.append(f"Non-finite gradients at {bad.size} of {n} steps; first at step "
                   f"{first.step}{where}.")
    for st in _shown_statuses(s):
        hits = status_hits(recs, st)[0]
        if hits:
            most_often = sorted(hits, key=lambda hit: hit[1], reverse=True)[:most]
            worst = ", ".join(f"`{name}` ({k}/{n} steps)" for name, k in most_often)
            out.append(f"{len(hits)} layer(s) flagged {STATUSES[st].label} at least once; "
                       f"most often {worst}.")
    if s.spike_steps:
        out.append(f"{len(s.spike_steps)} spike(s) of the total norm, at {_steps(s.spike_steps)}.")
    if s.clipped:
        out.append(f"Clipping acted at {s.clipped} of {n} steps ({100 * s.clipped / n:.0f}%).")
    if s.amp_overflow:
        out.append(f"AMP loss-scale overflows at {s.amp_overflow} of {n} steps (the GradScaler "
                   f"skipped them and lowered its scale).")
    return out or ["No layer was flagged, no gradient went non-finite, no spike, no clipping."]


def diagnosis_lines(records: Sequence[StepRecord],
                    diagnosis: Sequence[Finding] | None = None,
                    notes: Sequence[Finding] | None = None) -> list[str]:
    """The diagnosis in the words of `GradWatch.summary` (`gradwatch.verdict.diagnosis.headline` and
    `details`): one headline line per finding, each followed by indented detail lines.

    Args:
        records: The run's records.
        diagnosis: The findings (default: the log's, as `findings_of` reads them; equal to the
            live ``diagnose()`` of the run that wrote it).
        notes: The notes, listed after the findings with a "note:" prefix (default: the
            log's; equal to the live ``notes()``).
    """
    found = list(diagnosis) if diagnosis is not None else findings_of(records)
    kept = list(notes) if notes is not None else findings_of(records, notes=True)
    lines = [] if found else [NOTHING]
    for f in found + kept:
        lines.append(("note: " if f.note else "") + headline(f))
        lines += [f"  {label}: {text}" for label, text in details(f)]
    return lines


def _md_diagnosis(lines: Sequence[str]) -> list[str]:
    return [f"  - {line.strip()}" if line.startswith("  ") else f"- {line}" for line in lines]


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return lines


def _summarized(records: Iterable[StepRecord]) -> tuple[LogRecords, RunSummary]:
    """The records as columns (copied once, when they are not) and their summary (computed
    once for a log's records: the command line writes two reports of one run)."""
    recs = columns_of(_check(records))
    return recs, summarize(recs)


def markdown_report(records: Iterable[StepRecord], *, title: str = "gradwatch report",
                    images: Mapping[str, str] | None = None,
                    diagnosis: Sequence[Finding] | None = None,
                    header: Mapping[str, Any] | None = None) -> str:
    """A Markdown report: diagnosis, run overview, settings, figures (linked), per-layer table.

    Args:
        records: Recorded steps, e.g. ``watch.history`` or ``list(read_jsonl(path))``.
        title: The report's heading.
        images: Caption -> relative path of a figure to link, in display order.
        diagnosis: The findings to show (default: those the records carry).
        header: The run header of the log (`gradwatch.io.loggers.Run.header`): its options and
            thresholds are listed under "Settings".

    Raises:
        ValueError: ``records`` is empty.
    """
    recs, s = _summarized(records)
    header = _check_header(header)
    images = _check_images(images, (str, PurePath), "a relative path (str) of a figure")
    lines = [f"# {title}", "", "## Diagnosis", ""]
    lines += _md_diagnosis(diagnosis_lines(recs, s.findings if diagnosis is None else diagnosis,
                                           s.notes))
    lines += ["", "## Layer statuses over the run", ""]
    lines += [f"- {f}" for f in _findings(recs, s)]
    lines += ["", "## Run overview", ""]
    lines += _md_table(["quantity", "value"], _overview(s))
    if settings(header):
        lines += ["", "## Settings (from the run header)", ""]
        lines += _md_table(["setting", "value"], settings(header))
    if images:
        lines += ["", "## Figures", ""]
        for caption, path in images.items():
            lines += [f"### {caption}", "", f"![{caption}]({Path(path).as_posix()})", ""]
    lines += ["", "## Layers (forward order, input first)", ""]
    lines += _md_table(*_table(s, header))
    note = _table_note(s)
    lines += ["", note] if note else []
    return "\n".join(lines) + "\n"


def html_report(records: Iterable[StepRecord], *, title: str = "gradwatch report",
                images: Mapping[str, bytes] | None = None,
                diagnosis: Sequence[Finding] | None = None,
                header: Mapping[str, Any] | None = None) -> str:
    """A self-contained HTML report (figures embedded as base64 PNG): same content as Markdown.

    Args:
        records: Recorded steps, e.g. ``watch.history`` or ``list(read_jsonl(path))``.
        title: The page title and heading.
        images: Caption -> PNG bytes, in display order.
        diagnosis: The findings to show (default: those the records carry).
        header: The run header of the log; its options and thresholds are listed.

    Raises:
        ValueError: ``records`` is empty.
    """
    recs, s = _summarized(records)
    header = _check_header(header)
    images = _check_images(images, bytes, "PNG bytes")
    statuses = "".join(f"<li>{inline(f)}</li>" for f in _findings(recs, s))
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
             f"</title><style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>",
             "<h2>Diagnosis</h2>" + html_diagnosis(diagnosis_lines(
                 recs, s.findings if diagnosis is None else diagnosis, s.notes)),
             f"<h2>Layer statuses over the run</h2><ul>{statuses}</ul>", "<h2>Run overview</h2>",
             html_table(["quantity", "value"], _overview(s))]
    if settings(header):
        parts += ["<h2>Settings (from the run header)</h2>",
                  html_table(["setting", "value"], settings(header))]
    if images:
        parts.append("<h2>Figures</h2>")
        for caption, png in images.items():
            data = base64.b64encode(png).decode("ascii")
            parts.append(f"<h3>{html.escape(caption)}</h3><img alt='{html.escape(caption)}' "
                         f"src='data:image/png;base64,{data}'>")
    note = _table_note(s)
    parts += ["<h2>Layers (forward order, input first)</h2>", html_table(*_table(s, header)),
              f"<p><small>{html.escape(note)}</small></p>" if note else "", "</body></html>"]
    return "\n".join(parts) + "\n"
