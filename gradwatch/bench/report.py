"""Writes the bench report: ``report.md`` (headline table, calibration), ``results.json``, figures."""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Any, Sequence

import torch

from .common import Budget, ExperimentResult

__all__ = ["calibration", "write_report"]


def calibration(results: Sequence[ExperimentResult]) -> dict[str, Any]:
    """Pathological runs flagged / total and healthy runs flagged / total, with the misses."""
    runs = [r for res in results for r in res.runs]
    patho = [r for r in runs if r.label == "pathological"]
    healthy = [r for r in runs if r.label == "healthy"]
    return {"pathological_flagged": sum(r.flagged for r in patho), "pathological_total": len(patho),
            "healthy_flagged": sum(r.flagged for r in healthy), "healthy_total": len(healthy),
            "missed": [r.name for r in patho if not r.flagged],
            "false_alarms": [f"{r.name}: {r.detail}" for r in healthy if r.flagged]}


def _clean(x: Any) -> Any:
    """JSON-safe: non-finite floats become strings ("nan", "inf")."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def write_report(out: Path, results: Sequence[ExperimentResult], *, budget: Budget,
                 seconds: float, device: str, threads: int) -> tuple[Path, Path]:
    """Writes ``out/report.md`` and ``out/results.json``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    cal = calibration(results)
    meta = {"budget": budget.__dict__ | {"xor_depths": list(budget.xor_depths)},
            "seconds": seconds, "device": device, "threads": threads,
            "torch": torch.__version__, "python": platform.python_version()}
    payload = {"meta": meta, "calibration": cal,
               "experiments": {r.name: r.to_dict() for r in results}}
    json_path = out / "results.json"
    json_path.write_text(json.dumps(_clean(payload), indent=1, allow_nan=False), encoding="utf-8")

    lines = ["# gradwatch bench report", "",
             f"Budget `{budget.name}` on {device} ({threads} threads), torch {torch.__version__}; "
             f"wall time {seconds / 60:.1f} min. Every number below is in `results.json`.", "",
             _budget_text(budget), "",
             "## Documented claims", "",
             "| experiment | claim | source | measured | reproduced | gradwatch verdict |",
             "| --- | --- | --- | --- | --- | --- |"]
    for res in results:
        for c in res.claims:
            rep = {True: "yes", False: "**no**", None: "undecided (budget)"}[c.reproduced]
            lines.append(f"| {res.name} | {_cell(c.claim)} | {_cell(c.source)} | "
                         f"{_cell(c.measured)} | {rep} | {_cell(c.verdict)} |")
    lines += ["", "## Threshold calibration (default `Thresholds()`)", "",
              "Runs are labelled pathological or healthy from the literature before the verdicts "
              "are read; a run counts as flagged when gradwatch flagged any layer at any recorded "
              "step.", "",
              f"- pathological runs flagged: **{cal['pathological_flagged']} / "
              f"{cal['pathological_total']}**",
              f"- healthy runs flagged: **{cal['healthy_flagged']} / {cal['healthy_total']}**"]
    if cal["missed"]:
        lines.append(f"- missed: {', '.join(cal['missed'])}")
    if cal["false_alarms"]:
        lines.append("- false alarms:")
        lines += [f"  - {_cell(x)}" for x in cal["false_alarms"]]
    for res in results:
        lines += ["", f"## {res.title}", "", f"`{res.name}` took {res.seconds:.0f} s.", ""]
        lines += [f"- {n}" for n in res.notes]
        if res.name == "grid":
            lines += ["", _grid_table(res.data["cells"])]
        lines += [""] + [f"![{Path(f).stem}]({f})" for f in res.figures]
    md_path = out / "report.md"
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return md_path, json_path


def _budget_text(b: Budget) -> str:
    train = "all 60,000" if b.mnist_train is None else f"the first {b.mnist_train:,}"
    test = "all 10,000" if b.mnist_test is None else f"the first {b.mnist_test:,}"
    return (f"Budget: MNIST uses {train} training and {test} test images; epochs per run: "
            f"sigmoid MLP {b.sigmoid_epochs}, fixed models {b.fixed_epochs} (ResNet on "
            f"{'all' if b.resnet_train is None else f'{b.resnet_train:,}'} images), deep linear "
            f"{b.linear_epochs}; grid {b.grid_steps} steps per cell; XOR at most "
            f"{b.xor_epochs:,} epochs, depths {', '.join(map(str, b.xor_depths))}, {b.seeds} seeds; "
            f"{b.mnist_seeds} seed(s) per MNIST run. The sources used 10 full MNIST epochs and "
            f"100,000 XOR epochs (`--full`); claims a smaller budget cannot decide say so.")


def _grid_table(cells: dict[str, dict[str, Any]]) -> str:
    rows = ["| cell | label (prior) | first/last grad ratio | test acc | gradwatch verdict |",
            "| --- | --- | --- | --- | --- |"]
    for name, c in cells.items():
        rows.append(f"| {name} | {c['label'] or '–'} | {c['first_last_ratio']:.2g} | "
                    f"{c['test_acc']:.1%} | {_cell(c['verdict'])} |")
    return "\n".join(rows)
