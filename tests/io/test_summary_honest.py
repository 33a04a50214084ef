"""summary() and the report: every statistic gets its column, and medians say what they skip."""

from __future__ import annotations

import math
import statistics

import torch
from torch import nn

from gradwatch import GradWatch, LayerStat, StepRecord
from gradwatch.io.report import layer_table, markdown_report, run_overview
from gradwatch.io.runsummary import summarize
from gradwatch.io.summary import format_summary


def _table_header(text: str) -> list[str]:
    return next(line for line in text.splitlines() if line.startswith("layer ")).split()


def _rows(text: str) -> dict[str, str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("-----")) + 1
    return {line.split()[0]: line for line in lines[start:] if line and not line.startswith("(")}


def _mixed_records() -> list[StepRecord]:
    """``dead_frac`` only on layer "b" and only at steps 1 and 2: neither the first layer nor
    the first or last record carries it."""
    out = []
    for step in range(4):
        extra = {"dead_frac": 0.25 * step} if step in (1, 2) else {}
        out.append(StepRecord(step=step, total_norm=1.0, layers={
            "a": LayerStat(norm=0.5), "b": LayerStat(norm=0.5, values=extra)}))
    return out


def test_a_statistic_of_a_later_layer_on_middle_records_gets_its_column():
    recs = _mixed_records()
    assert summarize(recs).statistics == ("norm", "act_norm", "dead_frac")
    text = format_summary(summarize(recs))
    assert "dead_frac" in _table_header(text)
    assert _rows(text)["b"].split()[4] == "0.5"  # latest measured value, from step 2
    header, rows = layer_table(recs)
    col = header.index("median dead-unit share")
    assert rows[1][col] == f"{statistics.median([0.25, 0.5]):.3g}" and rows[0][col] == "–"


def test_summary_keeps_sparse_statistics_after_the_history_wraps():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(4, 6), torch.randint(0, 2, (4,))
    with GradWatch(model, optimizer=opt, history=10) as watch:
        for _ in range(43):  # the unit statistics are measured on every 4th recorded step
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        kept = watch.history
        assert not kept[0].layers["0"].values and not kept[-1].layers["0"].values
        assert any(r.layers["0"].values for r in kept)
        header = _table_header(watch.summary())
    assert {"update_ratio", "dead_frac"} <= set(header)


def _nan_records() -> list[StepRecord]:
    norms = [0.1, 0.2, 0.3, math.nan, math.inf, math.nan]
    return [StepRecord(step=k, total_norm=v, layers={"a": LayerStat(norm=v)})
            for k, v in enumerate(norms)]


def test_summary_says_how_many_records_its_medians_left_out():
    text = format_summary(summarize(_nan_records()))
    assert "total norm: last NaN, median 0.2, max 0.3 (over the 3 finite of 6 records; " \
           "3 non-finite left out)" in text
    assert _rows(text)["a"].split()[2:4] == ["0.2", "(3/6)"]
    assert "over the k finite values of the n records" in text


def test_summary_of_all_nonfinite_totals_says_so():
    recs = [StepRecord(step=k, total_norm=math.nan, layers={"a": LayerStat(norm=math.nan)})
            for k in range(3)]
    text = format_summary(summarize(recs))
    assert "total norm: last NaN; non-finite in all 3 records, no median or max" in text
    assert dict(run_overview(recs))["total norm (finite steps)"] == "no finite value in 3 steps"


def test_report_marks_medians_and_max_over_finite_values_only():
    header, rows = layer_table(_nan_records())
    row = dict(zip(header, rows[0]))
    assert (row["median norm"], row["max norm"]) == ("0.2 (3/6)", "0.3 (3/6)")
    assert dict(run_overview(_nan_records()))["total norm (finite steps)"] == \
        "min 0.1 · median 0.2 · max 0.3 (3 of 6 steps finite)"
    assert "over the k finite values" in markdown_report(_nan_records())


def test_healthy_summary_text_is_unchanged():
    recs = [StepRecord(step=k, total_norm=1.0, layers={"a": LayerStat(norm=1.0)})
            for k in range(3)]
    text = format_summary(summarize(recs))
    assert "total norm: last 1, median 1, max 1\n" in text and "finite values" not in text
    assert "(1/" not in text and "left out" not in text


def test_report_names_a_declared_statistic_by_its_header_label():
    recs = [StepRecord(step=0, total_norm=1.0,
                       layers={"a": LayerStat(norm=1.0, values={"grad_max": 0.5})})]
    header = {"run_id": "x", "statistics": [{"name": "grad_max", "label": "max |gradient|"}]}
    cols, _rows_ = layer_table(recs, header=header)
    assert "median max |gradient|" in cols
    assert "| median max \\|gradient\\| |" in markdown_report(recs, header=header)
