"""Loggers and the reader at their edges: CSV columns for keys that appear after the first
record, appending to an older CSV header, a CSV handed to the JSON-lines reader, bad paths."""

from __future__ import annotations

import csv
import json
import warnings

import pytest
import torch
from torch import nn

from gradwatch import Finding, GradWatch, LayerStat, StepRecord
from gradwatch.io.loggers import CsvLogger, JsonlLogger, read_jsonl, read_runs
from gradwatch.io.runlog import LogFormatError

FINDING = Finding(kind="vanishing", layers=("fc1",), evidence="norm 1e-9", cause="depth",
                  remedy="residual connections", remedies=("residual",), first_step=1)


def _rec(step: int, **kw) -> StepRecord:
    return StepRecord(step=step, total_norm=1.5, layers={
        "fc1": LayerStat(norm=0.5, act_norm=0.25), "fc2": LayerStat(norm=1.0)}, **kw)


def _rows(path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------ CSV: every column up front
def test_csv_keeps_findings_that_appear_after_the_first_record(tmp_path):
    """r_csv_findings: the header came from step 0 (no findings), so later findings were lost."""
    path = tmp_path / "new.csv"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is dropped, so nothing is warned
        with CsvLogger(path) as log:
            log.start_run({"run_id": "r1", "statistics": []})
            log(_rec(0))
            log(_rec(1, findings=(FINDING,), loss=0.5))
    rows = _rows(path)
    assert [(r["step"], r["layer"]) for r in rows] == [("0", "fc1"), ("0", "fc2"),
                                                       ("1", "fc1"), ("1", "fc2")]
    assert [r["findings"] for r in rows[:2]] == ["", ""]
    assert [json.loads(r["findings"]) for r in rows[2:]] == [[FINDING.to_dict()]] * 2
    assert [r["loss"] for r in rows] == ["", "", "0.5", "0.5"]
    assert Finding.from_dict(json.loads(rows[2]["findings"])[0]) == FINDING


def test_csv_of_a_watch_keeps_its_findings(tmp_path):
    """The tester's run: a deep sigmoid MLP whose vanishing finding first holds at step 3."""
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Sequential(nn.Linear(16, 16), nn.Sigmoid()) for _ in range(12)],
                          nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    path = tmp_path / "run.csv"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with GradWatch(model, optimizer=opt, loggers=[CsvLogger(path)]) as watch:
            for _ in range(6):
                opt.zero_grad()
                model(torch.randn(8, 16)).pow(2).mean().backward()
                opt.step()
    assert not [w for w in caught if "no column" in str(w.message)]
    with_findings = [r for r in watch.history if r.findings]
    assert [r.step for r in with_findings] == [3]
    rows = [r for r in _rows(path) if r["step"] == "3"]
    want = [f.to_dict() for f in with_findings[0].findings]
    assert len(rows) == 13 and all(json.loads(r["findings"]) == want for r in rows)
    assert {r["findings"] for r in _rows(path) if r["step"] != "3"} == {""}


def test_csv_has_a_column_for_each_statistic_of_the_run_header(tmp_path):
    """A run statistic not measured at the first record still gets its column."""
    path = tmp_path / "s.csv"
    first = _rec(0)
    later = StepRecord(step=1, total_norm=1.5, layers={
        "fc1": LayerStat(norm=0.5, values={"grad_max": 0.125}), "fc2": LayerStat(norm=1.0)})
    with CsvLogger(path) as log:
        log.start_run({"run_id": "r1", "statistics": [{"name": "grad_max", "label": "max"}]})
        log(first)
        log(later)
    rows = _rows(path)
    assert [r["grad_max"] for r in rows] == ["", "", "0.125", ""]


def test_csv_appended_to_an_older_header_warns_once_and_says_why(tmp_path):
    """Resuming a file whose header an older gradwatch wrote: its columns are kept."""
    path = tmp_path / "old.csv"
    old = ["step", "layer", "norm", "act_norm", "status", "spike", "reason", "total_norm",
           "clip_coef", "first_nonfinite", "nonfinite_origin", "step_spike", "skipped",
           "amp_overflow", "loss", "run_id"]
    path.write_text(",".join(old) + "\r\n" + "0,fc1,0.5,,ok,0,,1.5,1.0,,,0,0,0,,r0\r\n",
                    encoding="utf-8")
    log = CsvLogger(path)
    log.start_run({"run_id": "r1"})
    with pytest.warns(UserWarning) as caught:
        log(_rec(1, findings=(FINDING,)))
        log(_rec(2, findings=(FINDING,)))  # warned once
    log.close()
    assert [str(w.message) for w in caught] == [
        f"CsvLogger({str(path)!r}): no column for ['findings'] in the header of the file it "
        f"appends to (written by an earlier run or an older gradwatch); those values are not "
        f"written. Log to a new file to keep them."]
    rows = _rows(path)
    assert list(rows[0]) == old
    assert [(r["step"], r["layer"], r["norm"], r["run_id"]) for r in rows] == [
        ("0", "fc1", "0.5", "r0"), ("1", "fc1", "0.5", "r1"), ("1", "fc2", "1.0", "r1"),
        ("2", "fc1", "0.5", "r1"), ("2", "fc2", "1.0", "r1")]


# ------------------------------------------------------------- the reader given a CSV log
def test_read_runs_of_a_csv_log_raises_one_clear_error(tmp_path):
    """r_read_csv: [] and one "a run killed mid-write?" warning per line."""
    path = tmp_path / "run.csv"
    with CsvLogger(path) as log:
        for step in range(5):
            log(_rec(step))
    want = (f"{path}: not a gradwatch log: it looks like the CSV written by CsvLogger, which "
            f"is for spreadsheets (and pandas.read_csv); read_runs, read_jsonl and `gradwatch "
            f"report` read the JSON-lines file written by JsonlLogger.")
    for read in (read_runs, read_jsonl):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(LogFormatError) as err:
                read(path)
        assert str(err.value) == want
    renamed = tmp_path / "run.txt"  # found by its header line, whatever its name
    renamed.write_bytes(path.read_bytes())
    with pytest.raises(LogFormatError, match="looks like the CSV written by CsvLogger"):
        read_runs(renamed)


def test_read_runs_of_another_text_file_raises_the_cli_message(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("# notes\n\nsome prose\n", encoding="utf-8")
    with pytest.raises(LogFormatError) as err:
        read_runs(path)
    assert str(err.value) == (
        f"{path}: not a gradwatch log (none of its 3 lines is a gradwatch record or run "
        f"header; line 1: not valid JSON: Expecting value: line 1 column 1 (char 0)); pass "
        f"the JSON-lines file written by JsonlLogger.")


def test_a_log_cut_in_its_only_line_still_reads_as_empty_with_a_warning(tmp_path):
    path = tmp_path / "cut.jsonl"
    with JsonlLogger(path) as log:
        log(_rec(0))
    path.write_bytes(path.read_bytes()[:30])
    with pytest.warns(UserWarning, match=r"cut\.jsonl:1: skipped a truncated"):
        assert read_runs(path) == []


# ---------------------------------------------------------------------------- bad paths
@pytest.mark.parametrize("cls, path, example", [
    (JsonlLogger, None, "run.jsonl"), (CsvLogger, None, "run.csv"), (CsvLogger, 3, "run.csv")])
def test_a_logger_refuses_a_path_that_is_not_path_like(cls, path, example):
    with pytest.raises(TypeError) as err:
        cls(path)
    assert str(err.value) == (
        f"Expected `path` to be a file path (str or os.PathLike), but got "
        f"{type(path).__name__}; pass e.g. {cls.__name__}({example!r}).")
