"""Plain-text summary of a run: the diagnosis and a per-layer table a person can read."""

from __future__ import annotations

from ..verdict.diagnosis import format_findings
from ..record.records import STATUSES, Status
from .runsummary import RunSummary, fmt

__all__ = ["format_summary", "of_finite", "total_norm_line", "FINITE_NOTE"]

FINITE_NOTE = ("a median or max written 'm (k/n)' is over the k finite values of the n records "
               "holding that layer (NaN/Inf left out)")
"""The footnote of a per-layer table with some non-finite norms (`of_finite`)."""


def of_finite(value: float | None, finite: int, kept: int) -> str:
    """``value`` formatted, followed by ``(finite/kept)`` when some of the ``kept`` values were
    non-finite and left out: a median over 5 finite of 20 records must not read as over 20."""
    return fmt(value) + (f" ({finite}/{kept})" if finite < kept else "")


def total_norm_line(s: RunSummary) -> str:
    """The total norm's last, median and max, saying how many records were non-finite (they
    are left out of the median and max, so an Inf total does not become the max)."""
    if s.total_median is None:
        return (f"total norm: last {fmt(s.total_last)}; non-finite in all {s.kept} "
                f"records, no median or max")
    left_out = s.kept - s.total_finite
    over = (f" (over the {s.total_finite} finite of {s.kept} records; {left_out} non-finite "
            f"left out)" if left_out else "")
    return (f"total norm: last {fmt(s.total_last)}, median {fmt(s.total_median)}, "
            f"max {fmt(s.total_max)}{over}")


def format_summary(s: RunSummary) -> str:
    """Formats the run overview, the diagnosis and one row per layer."""
    lines = [f"GradWatch: {s.steps} steps, {s.recorded} recorded"]
    if not s.kept:
        return lines[0] + " (nothing recorded yet)"
    lines.append(f"clipped {s.clipped}/{s.recorded} ({100 * s.clipped / max(s.recorded, 1):.1f}%), "
                 f"non-finite {len(s.nonfinite_steps) if s.kept else 0}, skipped {s.skipped}, "
                 f"AMP overflows {s.amp_overflow}, total-norm spikes {len(s.spike_steps)}")
    lines.append(total_norm_line(s))
    lines.append(format_findings(s.findings, s.notes))
    fired = {k for layer in s.layers for k, n in layer.statuses.items() if n}
    core = (Status.VANISHING, Status.EXPLODING, Status.NONFINITE)
    flags = [st for st in STATUSES if st in core or (st is not Status.OK and st.value in fired)]
    extra = [k for k in s.statistics if k not in ("norm", "act_norm")]
    rows = [("layer", "norm", "median", "act_norm", *extra, "status",
             *(STATUSES[f].label for f in flags), "spike")]
    for layer in s.layers:
        last = layer.last
        nums = last.numbers() if last else {}
        rows.append((layer.name, fmt(last.norm if last else None),
                     of_finite(layer.median_norm, layer.finite, layer.kept),
                     fmt(last.act_norm if last else None),
                     *(fmt(nums.get(k) if nums.get(k) is not None else layer.latest.get(k))
                       for k in extra),
                     last.status.value if last else "-",
                     *(str(layer.statuses.get(f.value, 0)) for f in flags), str(layer.spikes)))
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines.append("")
    for k, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append(f"(statistics and status: step {s.last_step}, or the last step a statistic was "
                 f"measured on; median over the last {s.kept} records; status columns count "
                 f"recorded steps over the whole run"
                 + ("; " + FINITE_NOTE if any(x.finite < x.kept for x in s.layers) else "")
                 + ")")
    return "\n".join(lines)
