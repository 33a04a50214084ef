"""Text summaries of a run from its records: Markdown, or self-contained HTML with figures."""

from __future__ import annotations

import base64
import html
import math
import statistics
from collections import Counter
from typing import Iterable, Mapping, Sequence

from .records import Status, StepRecord

__all__ = ["findings", "run_overview", "layer_table", "markdown_report", "html_report"]

_FLAGS = (Status.VANISHING, Status.EXPLODING, Status.NONFINITE)


def _num(x: float | None) -> str:
    if x is None:
        return "–"
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.3g}"


def _steps(steps: Sequence[int], most: int = 8) -> str:
    """"step 3" or "steps 3, 5, … (12 in all)"."""
    shown = ", ".join(str(s) for s in steps[:most])
    more = f", … ({len(steps)} in all)" if len(steps) > most else ""
    return ("step " if len(steps) == 1 else "steps ") + shown + more


def _median(values: Iterable[float | None]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(finite) if finite else None


def _check(records: Iterable[StepRecord]) -> list[StepRecord]:
    recs = list(records)
    if not recs:
        raise ValueError("Expected `records` to hold at least one StepRecord, but got none; "
                         "record a step first or check that the log is not empty.")
    return recs


def _nonfinite_steps(recs: Sequence[StepRecord]) -> list[StepRecord]:
    return [r for r in recs if not math.isfinite(r.total_norm) or r.first_nonfinite is not None]


def run_overview(records: Iterable[StepRecord]) -> list[tuple[str, str]]:
    """(label, value) rows describing the whole run.

    Raises:
        ValueError: ``records`` is empty.
    """
    recs = _check(records)
    n = len(recs)
    totals = [r.total_norm for r in recs if math.isfinite(r.total_norm)]
    clipped = [r for r in recs if r.clipped]
    bad = _nonfinite_steps(recs)
    born = Counter(r.first_nonfinite for r in recs if r.first_nonfinite is not None)
    first_born = {}
    for r in recs:
        if r.first_nonfinite is not None:
            first_born.setdefault(r.first_nonfinite, r.step)
    spikes = [r.step for r in recs if r.spike]
    layers = list(dict.fromkeys(name for r in recs for name in r.layers))
    rows = [
        ("recorded steps", f"{n} (steps {recs[0].step} .. {recs[-1].step})"),
        ("layers watched", str(len(layers))),
        ("total norm (finite steps)",
         f"min {_num(min(totals))} · median {_num(statistics.median(totals))} · "
         f"max {_num(max(totals))}" if totals else "no finite value"),
        ("clipped steps", f"{len(clipped)} of {n} ({100 * len(clipped) / n:.1f}%)"
         + (f", median coefficient {_num(_median(r.clip_coef for r in clipped))}"
            if clipped else "")),
        ("steps with non-finite gradients",
         f"{len(bad)}" + (f" ({_steps([r.step for r in bad])})" if bad else "")),
        ("of which AMP loss-scale overflows", str(sum(r.amp_overflow for r in bad))),
        ("skipped optimizer steps", str(sum(r.skipped for r in recs))),
        ("where NaN/Inf was born (first_nonfinite)",
         "; ".join(f"`{name}` ×{k} (first at step {first_born[name]})"
                   for name, k in born.most_common()) or "–"),
        ("spikes in total norm", f"{len(spikes)}" + (f" ({_steps(spikes)})" if spikes else "")),
        ("layer spikes", str(sum(len(r.spikes) for r in recs))),
    ]
    return rows


def layer_table(records: Iterable[StepRecord]) -> tuple[list[str], list[list[str]]]:
    """Header and one row per layer (forward order): norms and how often each verdict fired.

    Raises:
        ValueError: ``records`` is empty.
    """
    recs = _check(records)
    names = list(dict.fromkeys(name for r in recs for name in r.layers))
    header = ["#", "layer", "last norm", "median norm", "max norm", "median act norm",
              "vanishing", "exploding", "non-finite", "spikes"]
    rows = []
    for i, name in enumerate(names):
        stats = [r.layers[name] for r in recs if name in r.layers]
        finite = [s.norm for s in stats if math.isfinite(s.norm)]
        counts = Counter(s.status for s in stats)
        rows.append([str(i), name, _num(stats[-1].norm), _num(_median(s.norm for s in stats)),
                     _num(max(finite)) if finite else "–",
                     _num(_median(s.act_norm for s in stats)),
                     *(str(counts[f]) for f in _FLAGS), str(sum(s.spike for s in stats))])
    return header, rows


def findings(records: Iterable[StepRecord], *, most: int = 3) -> list[str]:
    """A few plain-language sentences on what went wrong, worst first; one line when nothing did.

    Raises:
        ValueError: ``records`` is empty.
    """
    recs = _check(records)
    n, out = len(recs), []
    bad = [r for r in _nonfinite_steps(recs) if not r.amp_overflow]
    if bad:
        where = f", born in `{bad[0].first_nonfinite}`" if bad[0].first_nonfinite else ""
        out.append(f"Non-finite gradients at {len(bad)} of {n} steps; first at step "
                   f"{bad[0].step}{where}.")
    for status in _FLAGS:
        hits = Counter(name for r in recs for name, s in r.layers.items() if s.status is status)
        if hits:
            worst = ", ".join(f"`{name}` ({k}/{n} steps)" for name, k in hits.most_common(most))
            label = "non-finite" if status is Status.NONFINITE else status.value
            out.append(f"{len(hits)} layer(s) flagged {label} at least once; "
                       f"most often {worst}.")
    spikes = [r.step for r in recs if r.spike]
    if spikes:
        out.append(f"{len(spikes)} spike(s) of the total norm, at {_steps(spikes)}.")
    clipped = sum(r.clipped for r in recs)
    if clipped:
        out.append(f"Clipping acted at {clipped} of {n} steps ({100 * clipped / n:.0f}%).")
    return out or ["No layer was flagged, no gradient went non-finite, no spike, no clipping."]


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return lines


def markdown_report(records: Iterable[StepRecord], *, title: str = "gradwatch report",
                    images: Mapping[str, str] | None = None) -> str:
    """A Markdown report: findings, run overview, figures (linked), per-layer table.

    Args:
        records: Recorded steps, e.g. ``watch.history`` or ``list(read_jsonl(path))``.
        title: The report's heading.
        images: Caption -> relative path of a figure to link, in display order.

    Raises:
        ValueError: ``records`` is empty.
    """
    recs = _check(records)
    lines = [f"# {title}", "", "## Findings", ""]
    lines += [f"- {f}" for f in findings(recs)]
    lines += ["", "## Run overview", ""]
    lines += _md_table(["", ""], run_overview(recs))
    if images:
        lines += ["", "## Figures", ""]
        for caption, path in images.items():
            lines += [f"### {caption}", "", f"![{caption}]({path})", ""]
    header, rows = layer_table(recs)
    lines += ["", "## Layers (forward order, input first)", ""]
    lines += _md_table(header, rows)
    return "\n".join(lines) + "\n"


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;font-size:0.9em}td,th{border:1px solid #ccc;"
        "padding:2px 8px;text-align:left}th{background:#f3f3f3}img{max-width:100%}"
        "code{background:#f3f3f3}")


def _inline(text: str) -> str:
    """Escapes text and renders Markdown-style `code` spans."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _html_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_report(records: Iterable[StepRecord], *, title: str = "gradwatch report",
                images: Mapping[str, bytes] | None = None) -> str:
    """A self-contained HTML report (figures embedded as base64 PNG): same content as Markdown.

    Args:
        records: Recorded steps, e.g. ``watch.history`` or ``list(read_jsonl(path))``.
        title: The page title and heading.
        images: Caption -> PNG bytes, in display order.

    Raises:
        ValueError: ``records`` is empty.
    """
    recs = _check(records)
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
             f"</title><style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
             "<h2>Findings</h2><ul>" + "".join(f"<li>{_inline(f)}</li>" for f in findings(recs))
             + "</ul>", "<h2>Run overview</h2>", _html_table(["", ""], run_overview(recs))]
    if images:
        parts.append("<h2>Figures</h2>")
        for caption, png in images.items():
            data = base64.b64encode(png).decode("ascii")
            parts.append(f"<h3>{html.escape(caption)}</h3><img alt='{html.escape(caption)}' "
                         f"src='data:image/png;base64,{data}'>")
    parts += ["<h2>Layers (forward order, input first)</h2>", _html_table(*layer_table(recs)),
              "</body></html>"]
    return "\n".join(parts) + "\n"
