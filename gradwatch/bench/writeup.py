"""Writes the bench report: ``report.md`` and ``report.html`` (claims, calibration), ``results.json``."""

from __future__ import annotations

import dataclasses
import json
import math
import platform
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from .common import Budget, Claim, ExperimentResult
from .webpage import html_page
from .wording import (budget_text, cell, claim_columns, duration, get_field, plural, quant_cell,
                      reproduced_text, seeds_cell, value_text)

__all__ = ["calibration", "write_report", "mark_partial", "PARTIAL_BANNER"]

PARTIAL_BANNER = "> **Partial report.**"
_TABLE_FIELDS = ("claim", "source", "measured", "reproduced", "verdict", "seeds", "behaved",
                 "spread", "quantitative", "quantitative_measured", "quantitative_reproduced")
_MAX_TABLE_ROWS = 60


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


def _extra_fields(claim: Claim) -> dict[str, Any]:
    """Claim fields beyond the table's columns (spread, seed fractions, ...), in declared order."""
    if not dataclasses.is_dataclass(claim):
        return {}
    return {f.name: getattr(claim, f.name) for f in dataclasses.fields(claim)
            if f.name not in _TABLE_FIELDS and getattr(claim, f.name) not in (None, "", (), [], {})}


def _words(name: str) -> str:
    return name.replace("_", " ")


def _flat_tables(data: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Entries of ``data`` that are lists of flat records with the same keys: shown as tables."""
    out = []
    for key, rows in data.items():
        if (isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows)
                and all(set(r) == set(rows[0]) for r in rows)
                and all(isinstance(v, (int, float, str, bool)) or v is None
                        for r in rows for v in r.values())):
            out.append((key, rows))
    return out


def _experiment_section(res: ExperimentResult) -> list[str]:
    lines = ["", f'<a id="{res.name}"></a>', "", f"## {res.title}", "",
             f"`{res.name}` took {duration(res.seconds)}."]
    if res.claims:
        lines += ["", "Claims:", ""]
        for c in res.claims:
            lines.append(f"- **{c.claim}** — reproduced: {reproduced_text(c.reproduced)}.")
            lines.append(f"  - source: {c.source}")
            lines.append(f"  - measured: {c.measured}")
            if get_field(c, "spread"):
                lines.append(f"  - spread over seeds: {get_field(c, 'spread')}")
            if get_field(c, "seeds", 0):
                lines.append(f"  - seeds that behaved as claimed: {seeds_cell(c)}")
            if get_field(c, "quantitative"):
                lines.append(f"  - quantitative part: {quant_cell(c)}")
            lines += [f"  - {_words(k)}: {value_text(v)}" for k, v in _extra_fields(c).items()]
            lines.append(f"  - gradwatch: {c.verdict}")
    if res.notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in res.notes]
    if res.runs:
        lines += ["", _runs_text(res)]
    for table in res.tables.values():
        lines += ["", _declared_table(table)]
    for key, rows in _flat_tables(res.data):
        lines += ["", f"<details><summary>{_words(key)}: {plural(len(rows), 'row')}</summary>",
                  "", _table(rows[:_MAX_TABLE_ROWS]), "", "</details>"]
    if res.figures:
        lines += [""] + [f"![{_words(Path(f).stem)}]({f})" for f in res.figures]
    if not (res.claims or res.notes or res.runs or res.figures):
        lines += ["", "This experiment returned no claims, notes, runs or figures."]
    return lines


def _runs_text(res: ExperimentResult) -> str:
    by = {"pathological": [r for r in res.runs if r.label == "pathological"],
          "healthy": [r for r in res.runs if r.label == "healthy"]}
    head = "; ".join(f"{sum(r.flagged for r in runs)} of {len(runs)} {label} runs flagged"
                     for label, runs in by.items() if runs)
    extra = [(h, k) for h, k in (("findings", "findings"), ("evidence for the label", "evidence"))
             if any(get_field(r, k, None) for r in res.runs)]
    rows = [f"| {cell(r.name)} | {r.label} | {'yes' if r.flagged else 'no'} | "
            f"{cell(r.detail) or '–'} |"
            + "".join(f" {cell(value_text(get_field(r, k, None) or '–'))} |" for _, k in extra)
            for r in res.runs]
    head_row = "| run | label | flagged | gradwatch |" + "".join(f" {h} |" for h, _ in extra)
    return "\n".join([f"Labelled runs (for the calibration): {head}.", "",
                      f"<details><summary>{plural(len(res.runs), 'run')}</summary>", "",
                      head_row, "|" + " --- |" * (4 + len(extra)), *rows, "", "</details>"])


def _declared_table(table: Mapping[str, Any]) -> str:
    """An experiment's own table: ``{"title", "columns", "rows", "note"}``, rows as lists or dicts."""
    columns = list(table.get("columns") or [])
    rows = [[r.get(c, "") for c in columns] if isinstance(r, Mapping) else list(r)
            for r in table.get("rows", [])]
    out = [f"**{table['title']}**", ""] if table.get("title") else []
    out += ["| " + " | ".join(cell(c) for c in columns) + " |", "|" + " --- |" * len(columns)]
    out += ["| " + " | ".join(cell(value_text(v)) for v in r) + " |" for r in rows]
    if table.get("note"):
        out += ["", str(table["note"])]
    return "\n".join(out)


def _table(rows: list[dict[str, Any]]) -> str:
    keys = list(rows[0])
    out = ["| " + " | ".join(_words(k) for k in keys) + " |", "|" + " --- |" * len(keys)]
    out += ["| " + " | ".join(cell(value_text(r[k])) for k in keys) + " |" for r in rows]
    return "\n".join(out)


def write_report(out: Path, results: Sequence[ExperimentResult], *, budget: Budget,
                 seconds: float, device: str, threads: int,
                 planned: Sequence[str] | None = None) -> tuple[Path, Path]:
    """Writes ``out/report.md`` and ``out/results.json``; returns their paths.

    Args:
        planned: Every experiment the run was asked for; when some have not finished, the
            report opens with a partial-report banner and ``meta.partial`` names the missing.
    """
    out.mkdir(parents=True, exist_ok=True)
    for res in results:  # drawn once: the report is rewritten after every experiment
        hist = res.data.get("histograms")
        if isinstance(hist, Mapping) and not any("_hist.png" in f for f in res.figures):
            from .figures import histogram_figures

            res.figures.extend(histogram_figures(res.name, hist, out / "figures"))
    cal = calibration(results)
    done = [r.name for r in results]
    missing = [n for n in planned or () if n not in done]
    partial = (f"{len(done)} of {len(done) + len(missing)} experiments finished; not run: "
               f"{', '.join(missing)}.") if missing else None
    meta = {"budget": budget.__dict__ | {"xor_depths": list(budget.xor_depths)},
            "seconds": seconds, "device": device, "threads": threads,
            "torch": torch.__version__, "python": platform.python_version(), "partial": partial}
    payload = {"meta": meta, "calibration": cal,
               "experiments": {r.name: r.to_dict() for r in results}}
    json_path = out / "results.json"
    _write(json_path, json.dumps(_clean(payload), indent=1, allow_nan=False))

    lines = ["# gradwatch bench report", ""]
    if partial:
        lines += [f"{PARTIAL_BANNER} {partial}", ""]
    lines += [f"Budget `{budget.name}` on {device} ({plural(threads, 'thread')}), torch "
              f"{torch.__version__}; wall time {duration(seconds)}. Every number below is in "
              f"`results.json`.", "", budget_text(budget), "",
              "## Documented claims", "",
              "One row per claim; each experiment's section below has the details, notes, runs "
              "and figures.", "",
              ]
    columns = claim_columns([c for res in results for c in res.claims])
    lines += ["| experiment | " + " | ".join(h for h, _ in columns) + " |",
              "| --- |" + " --- |" * len(columns)]
    for res in results:
        for c in res.claims:
            lines.append(f"| [{res.name}](#{res.name}) | "
                         + " | ".join(cell(fill(c)) for _, fill in columns) + " |")
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
        lines += [f"  - {cell(x)}" for x in cal["false_alarms"]]
    for res in results:
        lines += _experiment_section(res)
    md_path = out / "report.md"
    _write(md_path, "\n".join(lines) + "\n")
    _write(out / "report.html", html_page(lines, out, title=_TITLE))
    return md_path, json_path


_TITLE = "gradwatch bench report"


def _write(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` whole or not at all (a stop mid-write keeps the old file)."""
    part = path.with_name(path.name + ".part")
    part.write_text(text, encoding="utf-8")
    part.replace(path)


def mark_partial(out: Path, reason: str) -> bool:
    """Marks an existing report in ``out`` as partial: a banner in report.md and report.html,
    and ``meta.partial`` in results.json (the reason, then the experiments not run).

    For runs stopped by an error, Ctrl-C or SIGTERM after some experiments finished. Returns
    whether a report was there to mark.
    """
    md, js = out / "report.md", out / "results.json"
    if not md.is_file():
        return False
    lines = md.read_text(encoding="utf-8").split("\n")
    head, body = lines[:2], lines[2:]
    stopped = f"{PARTIAL_BANNER} The run stopped early:"
    if body and body[0].startswith(stopped):  # replace an earlier stop, keep "not run: ..."
        body = body[2:]
    banner = [f"{stopped} {reason}", ""]
    lines = head + banner + body
    _write(md, "\n".join(lines))
    _write(out / "report.html", html_page(lines, out, title=_TITLE))
    if js.is_file():
        payload = json.loads(js.read_text(encoding="utf-8"))
        not_run = [ln[len(PARTIAL_BANNER) + 1:] for ln in body
                   if ln.startswith(PARTIAL_BANNER) and "experiments finished; not run:" in ln]
        payload.setdefault("meta", {})["partial"] = "; ".join([f"stopped early: {reason}",
                                                               *not_run])
        _write(js, json.dumps(payload, indent=1))
    return True
