"""Plain-text summary of a run: a per-layer table a person can read in a terminal."""

from __future__ import annotations

import math
import statistics
from typing import Mapping, Sequence

from .records import StepRecord

__all__ = ["format_summary"]

_FLAGS = ("vanishing", "exploding", "nonfinite", "spike")


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3g}" if math.isfinite(x) else str(x)


def format_summary(history: Sequence[StepRecord], counts: Mapping[tuple[str, str], int],
                   run: Mapping[str, int], steps: int) -> str:
    """Formats the run overview and one row per layer.

    Args:
        history: The records still in memory (medians and last values come from them).
        counts: Steps each layer was flagged, keyed by (layer, status or "spike"), over the run.
        run: Run-wide counters: recorded, clipped, skipped, nonfinite, spikes, amp_overflow.
        steps: Optimizer steps seen, recorded or not.
    """
    recorded = run.get("recorded", 0)
    lines = [f"GradWatch: {steps} steps, {recorded} recorded"]
    if not history:
        return lines[0] + " (nothing recorded yet)"
    clipped = run.get("clipped", 0)
    totals = [r.total_norm for r in history if math.isfinite(r.total_norm)]
    lines.append(f"clipped {clipped}/{recorded} ({100 * clipped / max(recorded, 1):.1f}%), "
                 f"non-finite {run.get('nonfinite', 0)}, skipped {run.get('skipped', 0)}, "
                 f"AMP overflows {run.get('amp_overflow', 0)}, "
                 f"total-norm spikes {run.get('spikes', 0)}")
    if totals:
        lines.append(f"total norm: last {_num(history[-1].total_norm)}, median "
                     f"{_num(statistics.median(totals))}, max {_num(max(totals))}")
    last = history[-1]
    names = list(last.layers) + sorted({n for r in history for n in r.layers} - set(last.layers))
    rows = [("layer", "norm", "median", "act_norm", "status", *_FLAGS)]
    for name in names:
        seen = [r.layers[name].norm for r in history if name in r.layers]
        finite = [n for n in seen if math.isfinite(n)]
        stat = last.layers.get(name)
        rows.append((name, _num(stat.norm if stat else None),
                     _num(statistics.median(finite) if finite else None),
                     _num(stat.act_norm if stat else None),
                     stat.status.value if stat else "-",
                     *(str(counts.get((name, flag), 0)) for flag in _FLAGS)))
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    for k, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append(f"(norm/act_norm/status: step {last.step}; median over the last {len(history)} "
                 f"records; flag columns count recorded steps over the whole run)")
    return "\n".join(lines)
