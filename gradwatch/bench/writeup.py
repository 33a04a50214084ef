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

__all__ = ["calibration", "write_report", "mark_partial", "reproduced_text", "duration",
           "budget_text", "claim_columns", "html_page", "CLAIM_COLUMNS", "PARTIAL_BANNER"]

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


def reproduced_text(value: Any) -> str:
    """``yes`` / ``**no**`` / ``undecided (budget)`` for True / False / None; strings as given."""
    if value is None:
        return "undecided (budget)"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    return str(value)


def duration(seconds: float) -> str:
    """``< 1 s``, ``12 s``, ``3.4 min``: a wall time a reader takes in at a glance."""
    if seconds < 1:
        return "< 1 s"
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def _get(claim: Any, key: str, default: Any = "") -> Any:
    return claim.get(key, default) if isinstance(claim, Mapping) else getattr(claim, key, default)


def _seeds_cell(c: Any) -> str:
    seeds, behaved = _get(c, "seeds", 0), _get(c, "behaved", None)
    if not seeds:
        return "–"
    return f"{behaved}/{seeds}" if behaved is not None else f"? of {seeds}"


def _quant_cell(c: Any) -> str:
    if not _get(c, "quantitative"):
        return "–"
    measured = _get(c, "quantitative_measured") or "not measured"
    return (f"{_get(c, 'quantitative')} → {measured}: "
            f"{reproduced_text(_get(c, 'quantitative_reproduced', None))}")


CLAIM_COLUMNS: tuple[tuple[str, Any, str | None], ...] = (
    ("claim", lambda c: _get(c, "claim"), None),
    ("source", lambda c: _get(c, "source"), None),
    ("measured", lambda c: _get(c, "measured"), None),
    ("spread over seeds", lambda c: _get(c, "spread") or "–", "spread"),
    ("seeds as claimed", _seeds_cell, "seeds"),
    ("reproduced", lambda c: reproduced_text(_get(c, "reproduced", None)), None),
    ("quantitative part (source → measured)", _quant_cell, "quantitative"),
    ("gradwatch verdict", lambda c: _get(c, "verdict"), None),
)
"""(header, cell of a `Claim` or its JSON dict, field that must be set in some claim for the
column to appear); the report and ``scripts/readme_table.py`` both read this."""


def claim_columns(claims: Sequence[Any]) -> list[tuple[str, Any]]:
    """The `CLAIM_COLUMNS` that some of ``claims`` fill (older results lack the newer fields)."""
    return [(head, cell) for head, cell, needs in CLAIM_COLUMNS
            if needs is None or any(_get(c, needs, None) for c in claims)]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _clean(x: Any) -> Any:
    """JSON-safe: non-finite floats become strings ("nan", "inf")."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _extra_fields(claim: Claim) -> dict[str, Any]:
    """Claim fields beyond the table's columns (spread, seed fractions, ...), in declared order."""
    if not dataclasses.is_dataclass(claim):
        return {}
    return {f.name: getattr(claim, f.name) for f in dataclasses.fields(claim)
            if f.name not in _TABLE_FIELDS and getattr(claim, f.name) not in (None, "", (), [], {})}


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, dict):
        return "; ".join(f"{k}: {_value(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return ", ".join(_value(x) for x in v)
    return str(v)


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
            if _get(c, "spread"):
                lines.append(f"  - spread over seeds: {_get(c, 'spread')}")
            if _get(c, "seeds", 0):
                lines.append(f"  - seeds that behaved as claimed: {_seeds_cell(c)}")
            if _get(c, "quantitative"):
                lines.append(f"  - quantitative part: {_quant_cell(c)}")
            lines += [f"  - {_words(k)}: {_value(v)}" for k, v in _extra_fields(c).items()]
            lines.append(f"  - gradwatch: {c.verdict}")
    if res.notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in res.notes]
    if res.runs:
        lines += ["", _runs_text(res)]
    for table in getattr(res, "tables", {}).values():
        lines += ["", _declared_table(table)]
    if res.name == "grid" and "cells" in res.data and "closed_loop" not in getattr(
            res, "tables", {}):
        lines += ["", _grid_table(res.data["cells"])]
    for key, rows in _flat_tables(res.data):
        lines += ["", f"<details><summary>{_words(key)}: {_plural(len(rows), 'row')}</summary>",
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
             if any(_get(r, k, None) for r in res.runs)]
    rows = [f"| {_cell(r.name)} | {r.label} | {'yes' if r.flagged else 'no'} | "
            f"{_cell(r.detail) or '–'} |"
            + "".join(f" {_cell(_value(_get(r, k, None) or '–'))} |" for _, k in extra)
            for r in res.runs]
    head_row = "| run | label | flagged | gradwatch |" + "".join(f" {h} |" for h, _ in extra)
    return "\n".join([f"Labelled runs (for the calibration): {head}.", "",
                      f"<details><summary>{_plural(len(res.runs), 'run')}</summary>", "",
                      head_row, "|" + " --- |" * (4 + len(extra)), *rows, "", "</details>"])


def _declared_table(table: Mapping[str, Any]) -> str:
    """An experiment's own table: ``{"title", "columns", "rows", "note"}``, rows as lists or dicts."""
    columns = list(table.get("columns") or [])
    rows = [[r.get(c, "") for c in columns] if isinstance(r, Mapping) else list(r)
            for r in table.get("rows", [])]
    out = [f"**{table['title']}**", ""] if table.get("title") else []
    out += ["| " + " | ".join(_cell(c) for c in columns) + " |", "|" + " --- |" * len(columns)]
    out += ["| " + " | ".join(_cell(_value(v)) for v in r) + " |" for r in rows]
    if table.get("note"):
        out += ["", str(table["note"])]
    return "\n".join(out)


def _table(rows: list[dict[str, Any]]) -> str:
    keys = list(rows[0])
    out = ["| " + " | ".join(_words(k) for k in keys) + " |", "|" + " --- |" * len(keys)]
    out += ["| " + " | ".join(_cell(_value(r[k])) for k in keys) + " |" for r in rows]
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
    json_path.write_text(json.dumps(_clean(payload), indent=1, allow_nan=False), encoding="utf-8")

    lines = ["# gradwatch bench report", ""]
    if partial:
        lines += [f"{PARTIAL_BANNER} {partial}", ""]
    lines += [f"Budget `{budget.name}` on {device} ({_plural(threads, 'thread')}), torch "
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
                         + " | ".join(_cell(cell(c)) for _, cell in columns) + " |")
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
        lines += _experiment_section(res)
    md_path = out / "report.md"
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "report.html").write_text(html_page(lines, out, title="gradwatch bench report"),
                                     encoding="utf-8")
    return md_path, json_path


_HTML_CSS = ("body{font-family:system-ui,sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;"
             "line-height:1.45}table{border-collapse:collapse;font-size:.88em;margin:.6em 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top;"
             "max-width:34em}th{background:#f3f3f3;position:sticky;top:0}img{max-width:100%}"
             "code{background:#f3f3f3;padding:0 .2em}blockquote{border-left:4px solid #e80;"
             "margin:0;padding:.3em 1em;background:#fff6e8}")


def _inline_html(text: str) -> str:
    """Escapes text and renders the report's inline Markdown: `code`, **bold**, [links](#x)."""
    import html
    import re

    parts = html.escape(text.replace("\\|", "|"), quote=False).split("`")
    out = []
    for i, part in enumerate(parts):
        if i % 2:
            out.append(f"<code>{part}</code>")
            continue
        part = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", part)
        out.append(re.sub(r"\[([^\]]+)\]\((#[\w-]+)\)", r"<a href='\2'>\1</a>", part))
    return "".join(out)


def html_page(lines: Sequence[str], out: Path, *, title: str) -> str:
    """The report's Markdown lines as one self-contained HTML page (figures embedded).

    Renders the subset the bench writes: headings, tables, bullet lists (two levels), block
    quotes, images (inlined as base64 PNG), raw HTML lines (anchors, ``<details>``), paragraphs.
    """
    import base64
    import html
    import re

    body: list[str] = []
    rows: list[list[str]] = []
    depth = 0

    def close_table() -> None:
        if rows:
            head, *rest = rows
            body.append("<table><thead><tr>" + "".join(f"<th>{_inline_html(c)}</th>" for c in head)
                        + "</tr></thead><tbody>" + "".join(
                            "<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in r) + "</tr>"
                            for r in rest) + "</tbody></table>")
            rows.clear()

    def close_lists(to: int = 0) -> None:
        nonlocal depth
        while depth > to:
            body.append("</ul>")
            depth -= 1

    for line in list(lines):
        for raw in str(line).split("\n"):
            if raw.startswith("|"):
                close_lists()
                cells = [c.strip() for c in re.split(r"(?<!\\)\|", raw.strip())[1:-1]]
                if not all(set(c) <= set("-: ") for c in cells):
                    rows.append(cells)
                continue
            close_table()
            bullet = re.match(r"^( *)- (.*)$", raw)
            if bullet:
                level = len(bullet.group(1)) // 2 + 1
                while depth < level:
                    body.append("<ul>")
                    depth += 1
                close_lists(level)
                body.append(f"<li>{_inline_html(bullet.group(2))}</li>")
                continue
            close_lists()
            image = re.match(r"^!\[(.*)\]\((.+)\)$", raw)
            if image:
                path = out / image.group(2)
                if path.is_file():
                    data = base64.b64encode(path.read_bytes()).decode("ascii")
                    body.append(f"<figure><img alt='{html.escape(image.group(1))}' "
                                f"src='data:image/png;base64,{data}'><figcaption>"
                                f"{html.escape(image.group(1))}</figcaption></figure>")
                continue
            heading = re.match(r"^(#{1,4}) (.*)$", raw)
            if heading:
                n = len(heading.group(1))
                body.append(f"<h{n}>{_inline_html(heading.group(2))}</h{n}>")
            elif raw.startswith("<"):
                body.append(raw)
            elif raw.startswith("> "):
                body.append(f"<blockquote>{_inline_html(raw[2:])}</blockquote>")
            elif raw.strip():
                body.append(f"<p>{_inline_html(raw)}</p>")
    close_table()
    close_lists()
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{_HTML_CSS}</style></head><body>\n" + "\n".join(body)
            + "\n</body></html>\n")


def mark_partial(out: Path, reason: str) -> bool:
    """Marks an existing report in ``out`` as partial (banner and ``meta.partial``).

    For runs stopped by an error or Ctrl-C after some experiments finished. Returns whether a
    report was there to mark.
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
    md.write_text("\n".join(head + banner + body), encoding="utf-8")
    if js.is_file():
        payload = json.loads(js.read_text(encoding="utf-8"))
        payload.setdefault("meta", {})["partial"] = f"stopped early: {reason}"
        js.write_text(json.dumps(payload, indent=1), encoding="utf-8")
    return True


def budget_text(budget: Budget | Mapping[str, Any]) -> str:
    """One paragraph on what the budget gives each experiment (a `Budget` or its JSON dict)."""
    b = dict(budget.__dict__ if isinstance(budget, Budget) else budget)
    train = "all 60,000" if b["mnist_train"] is None else f"the first {b['mnist_train']:,}"
    test = "all 10,000" if b["mnist_test"] is None else f"the first {b['mnist_test']:,}"
    resnet = "all" if b["resnet_train"] is None else f"{b['resnet_train']:,}"
    return (f"Budget: MNIST uses {train} training and {test} test images; epochs per run: "
            f"sigmoid MLP {b['sigmoid_epochs']}, fixed models {b['fixed_epochs']} (ResNet on "
            f"{resnet} images), deep linear {b['linear_epochs']}; grid {b['grid_steps']} steps "
            f"per cell; XOR at most {b['xor_epochs']:,} epochs, depths "
            f"{', '.join(map(str, b['xor_depths']))}, {_plural(b['seeds'], 'seed')}; "
            f"{_plural(b['mnist_seeds'], 'seed')} per MNIST run. The sources used 10 full MNIST "
            f"epochs and 100,000 XOR epochs (`--full`); claims a smaller budget cannot decide "
            f"say so.")


def _grid_table(cells: dict[str, dict[str, Any]]) -> str:
    rows = ["| cell | label (prior) | first/last grad ratio | test acc | gradwatch verdict |",
            "| --- | --- | --- | --- | --- |"]
    for name, c in cells.items():
        rows.append(f"| {name} | {c.get('label') or '–'} | {c['first_last_ratio']:.2g} | "
                    f"{c['test_acc']:.1%} | {_cell(c['verdict'])} |")
    return "\n".join(rows)
