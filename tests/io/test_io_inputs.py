"""Odd input to the readers, the report and the command line: clear errors, nothing silent."""

from __future__ import annotations

import json
import math
import warnings

import pytest

from gradwatch import JsonlLogger, LayerStat, StepRecord
from gradwatch.io.cli import main
from gradwatch.io.loggers import read_jsonl, read_runs
from gradwatch.io.report import html_report, layer_table, markdown_report
from gradwatch.io.runlog import LogFormatError, scan_log


def _line(step=0, total=1.0, norm=0.5, **extra):
    return json.dumps({"step": step, "total_norm": total,
                       "layers": {"a": {"norm": norm}}, **extra})


def _write(path, lines, bom=False):
    path.write_text(("\ufeff" if bom else "") + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def _header(rid="abcdef12"):
    return json.dumps({"gradwatch_run": {"run_id": rid, "thresholds": {"vanishing": 1e-7}}})


# ---------------------------------------------------------------------------------- reader
def test_a_byte_order_mark_does_not_cost_the_header(tmp_path):
    log = _write(tmp_path / "bom.jsonl", [_header(), _line(0), _line(1)], bom=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "run killed mid-write?" warning
        runs = read_runs(log)
    assert len(runs) == 1 and runs[0].run_id == "abcdef12"
    assert runs[0].thresholds == {"vanishing": 1e-7} and len(runs[0].records) == 2


@pytest.mark.parametrize("line, message", [
    (_line(total=-3.0), "`total_norm` must be a norm >= 0 (or NaN/Infinity), but got -3.0"),
    (_line(norm=-1.0), '`layers["a"].norm` must be a norm >= 0 (or NaN/Infinity), but got -1.0'),
    (_line(findings=[{"layers": ["a"]}]), "`findings[0]` has no key `kind`"),
    (_line(findings="oops"), '`findings` must be a list of finding objects, but got a string '
                             '"oops"'),
    (_line(findings=[{"kind": "x", "layers": "a"}]),
     '`findings[0].layers` must be a list, but got a string "a"'),
])
def test_corrupt_lines_are_named_by_key(tmp_path, line, message):
    log = _write(tmp_path / "bad.jsonl", [_line(0), line.replace('"step": 0', '"step": 1')])
    scan = scan_log(log)
    assert [p.message for p in scan.problems] == [message]
    assert len(scan.runs[0].records) == 1


def test_nan_norms_are_still_read(tmp_path):
    log = _write(tmp_path / "nan.jsonl", [_line(0, total=math.nan, norm=math.nan)])
    rec, = read_jsonl(log)
    assert math.isnan(rec.total_norm) and math.isnan(rec.layers["a"].norm)


@pytest.mark.parametrize("text", ['{"foo": 1}', "[1, 2, 3]"])
def test_one_line_of_another_tools_json_is_not_a_log(tmp_path, text):
    log = _write(tmp_path / "foreign.jsonl", [text])
    with pytest.raises(LogFormatError, match="not a gradwatch log"):
        read_runs(log)


def test_one_cut_line_is_still_a_warning_not_an_error(tmp_path):
    log = _write(tmp_path / "cut.jsonl", ['{"step": 0, "total_no'])
    with pytest.warns(UserWarning, match="killed mid-write"):
        assert read_runs(log) == []


def test_a_backward_step_in_a_headered_run_is_described_as_such(tmp_path):
    log = _write(tmp_path / "dup.jsonl", [_header(), _line(0), _line(1), _line(1)])
    note, = scan_log(log).notes
    assert "step 1 follows step 1 in the run of line 1 (id abcdef12) without a run header" in note


@pytest.mark.parametrize("path", [None, 123])
def test_read_runs_names_a_bad_path(path):
    with pytest.raises(TypeError, match="Expected `path` to be a file path"):
        read_runs(path)


def test_jsonl_logger_names_a_record_that_is_a_dict(tmp_path):
    with JsonlLogger(tmp_path / "r.jsonl") as log:
        with pytest.raises(TypeError, match="`record` to be a gradwatch StepRecord.*"
                                            "StepRecord.from_dict"):
            log({"step": 0})


# ---------------------------------------------------------------------------------- report
def _recs():
    return [StepRecord(step=0, total_norm=1.0, layers={"a": LayerStat(norm=1.0)})]


@pytest.mark.parametrize("records", ["run.jsonl", None, [{"step": 0}], {"step": 0}])
def test_report_names_records_of_the_wrong_type(records):
    for fn in (markdown_report, html_report, layer_table):
        with pytest.raises(TypeError, match="`records`.*read_jsonl"):
            fn(records)


def test_report_names_a_bad_header_or_images():
    with pytest.raises(TypeError, match="`header` to be a run header"):
        markdown_report(_recs(), header=[1])
    with pytest.raises(TypeError, match=r"`images` to map caption -> PNG bytes, but 'cap' maps "
                                        r"to str; read the file's bytes"):
        html_report(_recs(), images={"cap": "a.png"})
    with pytest.raises(TypeError, match=r"`images` to map caption -> a relative path"):
        markdown_report(_recs(), images={"cap": b"\x89PNG"})


# ---------------------------------------------------------------------------------- CLI
def test_cli_says_why_loss_png_is_missing_when_every_loss_is_nan(tmp_path, capsys):
    lines = [json.dumps({"step": s, "total_norm": 1.0, "loss": math.nan,
                         "layers": {"a": {"norm": 0.5}, "b": {"norm": 0.2}}}) for s in range(3)]
    log = _write(tmp_path / "allnan.jsonl", lines)
    assert main(["report", str(log), "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "skipped loss.png: Expected a finite loss to draw, but the loss is non-finite " \
           "(NaN/Inf) at all 3 recorded step(s)" in err
    assert not (tmp_path / "o" / "loss.png").exists()


def test_cli_without_a_loss_says_nothing_about_it(tmp_path, capsys):
    log = _write(tmp_path / "noloss.jsonl", [_line(0), _line(1)])
    assert main(["report", str(log), "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    assert "loss" not in capsys.readouterr().err


def test_report_help_says_the_bounds_are_drawn_not_shaded(capsys):
    assert main(["report", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "shade norms" not in text and "absolute vanishing bound to draw" in text
