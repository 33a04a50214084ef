"""A report folder already holding a bench report is kept: a second bench run into the same
``--out`` (the default ``gradwatch-report/`` included), or a log's report into a bench folder,
stops with one line and exit 2 unless ``--force``."""

from __future__ import annotations

import json

import pytest

import gradwatch.bench.__main__ as cli
from gradwatch import LayerStat, StepRecord
from gradwatch.bench import EXPERIMENTS
from gradwatch.bench.common import Claim, ExperimentResult
from gradwatch.io.cli import main as report_main
from gradwatch.io.loggers import JsonlLogger


def _ok(name: str):
    def run(ctx):
        return ExperimentResult(name, name.title(), claims=[Claim("c", "s", "m", True, "v")])
    return run


@pytest.fixture(autouse=True)
def fakes(monkeypatch):
    """Two instant experiments that need no data."""
    monkeypatch.setitem(EXPERIMENTS, "fake_a", ("a", _ok("fake_a")))
    monkeypatch.setitem(EXPERIMENTS, "fake_b", ("b", _ok("fake_b")))
    monkeypatch.setattr(cli, "NO_DATA", frozenset({"fake_a", "fake_b"}))


def _bench(*argv: str) -> int:
    return cli.main([*argv, "--threads", "1", "--no-progress"])


def _experiments(out) -> list[str]:
    return list(json.loads((out / "results.json").read_text())["experiments"])


def _error_line(err: str) -> str:
    lines = [ln for ln in err.strip().split("\n") if not ln.startswith("[gradwatch.bench] ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_a_second_run_into_the_same_out_stops_and_keeps_the_first_report(tmp_path, capsys):
    out = tmp_path / "r"
    assert _bench("fake_a", "--out", str(out)) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert _bench("fake_b", "--out", str(out)) == 2
    line = _error_line(capsys.readouterr().err)
    assert line == (
        f"error: --out {str(out)!r} already holds the report of an earlier bench run "
        f"(results.json: 1 experiment (fake_a), budget default, written "
        f"{line.split('written ')[1].split(')')[0]}), which this run would replace; pass --force "
        f"to replace it, or keep it and write this run elsewhere with --out {out}-2.")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert _experiments(out) == ["fake_a"]


def test_force_replaces_the_earlier_report_and_says_so(tmp_path, capsys):
    out = tmp_path / "r"
    assert _bench("fake_a", "--out", str(out)) == 0
    capsys.readouterr()
    assert _bench("fake_b", "--out", str(out), "--force") == 0
    err = capsys.readouterr().err
    assert f"replacing the report of an earlier bench run (results.json: 1 experiment (fake_a)" \
           in err and f"in {out} (--force)" in err
    assert _experiments(out) == ["fake_b"]


def test_the_readme_command_run_twice_names_force_and_a_fresh_out(tmp_path, capsys,
                                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _bench("fake_a") == 0  # the default --out: gradwatch-report/
    (tmp_path / "gradwatch-report-2").mkdir()  # taken: the next free name is offered
    capsys.readouterr()
    assert _bench("fake_a") == 2
    line = _error_line(capsys.readouterr().err)
    assert line.startswith("error: --out 'gradwatch-report' already holds the report of an "
                           "earlier bench run")
    assert line.endswith("pass --force to replace it, or keep it and write this run elsewhere "
                         "with --out gradwatch-report-3.")
    assert _experiments(tmp_path / "gradwatch-report") == ["fake_a"]


def test_a_folder_without_results_json_is_used_as_before(tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert _bench("fake_a", "--out", str(out)) == 0
    assert _experiments(out) == ["fake_a"] and (out / "notes.txt").read_text() == "mine"


def test_an_unreadable_results_json_is_still_kept(tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    (out / "results.json").write_text("{cut")
    assert _bench("fake_a", "--out", str(out)) == 2
    assert "already holds the report of an earlier bench run (results.json: written " in \
        _error_line(capsys.readouterr().err)
    assert (out / "results.json").read_text() == "{cut"


# --------------------------------------------------------------- the log report CLI
def _log(path):
    with JsonlLogger(path) as log:
        log.start_run({"run_id": "abc"})
        for step in range(3):
            log(StepRecord(step=step, total_norm=1.0 + step,
                           layers={"fc1": LayerStat(norm=0.5), "fc2": LayerStat(norm=0.7)}))
    return path


def test_a_log_report_into_a_bench_folder_is_refused_unless_forced(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "bench"
    assert _bench("fake_a", "--out", str(out)) == 0
    bench_md = (out / "report.md").read_bytes()
    log = _log(tmp_path / "run.jsonl")
    capsys.readouterr()
    assert report_main(["report", str(log), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"gradwatch: error: --out {str(out)!r} holds a bench report (results.json), "
                   f"whose report.md this report would replace; pass another --out (or leave "
                   f"it out: gradwatch-report/run), or --force to write there anyway.")
    assert (out / "report.md").read_bytes() == bench_md
    assert report_main(["report", str(log), "--out", str(out), "--list"]) == 0  # writes nothing
    assert report_main(["report", str(log), "--out", str(out), "--no-progress", "--force"]) == 0
    assert (out / "report.md").read_text().startswith("# gradwatch report: run.jsonl")
