"""Loggers that cannot write, or would write into the wrong place: two loggers on one file (two
watches logging to one run.jsonl at the same time), a logger listed twice, a logger pointed at
a log of the other kind, and paths that can never be written."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from gradwatch import GradWatch, LayerStat, StepRecord
from gradwatch.integrations.tensorboard import TensorBoardLogger
from gradwatch.io.cli import main as cli_main
from gradwatch.io.loggers import CsvLogger, JsonlLogger, read_jsonl, read_runs


def _rec(step: int, norm: float = 1.5) -> StepRecord:
    return StepRecord(step=step, total_norm=norm, layers={"fc1": LayerStat(norm=norm / 2)})


def _gan(path: Path, steps: int = 4):
    """A generator and a discriminator watch, each with its own JsonlLogger on ``path``, their
    steps interleaved (D, G, D, G, ...)."""
    torch.manual_seed(0)
    g = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))
    d = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    og, od = torch.optim.SGD(g.parameters(), lr=0.1), torch.optim.SGD(d.parameters(), lr=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with GradWatch(g, optimizer=og, loggers=[JsonlLogger(path)]) as wg, \
                GradWatch(d, optimizer=od, loggers=[JsonlLogger(path)]) as wd:
            for _ in range(steps):
                od.zero_grad()
                d(g(torch.randn(5, 4)).detach()).mean().backward()
                od.step()
                og.zero_grad()
                (-d(g(torch.randn(5, 4)))).mean().backward()
                og.step()
    return wg, wd, [str(w.message) for w in caught]


# ------------------------------------------------------------ two watches writing one file
def test_two_watches_on_one_jsonl_read_back_as_their_own_runs(tmp_path):
    path = tmp_path / "run.jsonl"
    wg, wd, caught = _gan(path)
    shared = [m for m in caught if "interleave in one file" in m]
    assert len(shared) == 1 and repr(str(path)) in shared[0] and "run id" in shared[0]
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    headers = [x["gradwatch_run"]["run_id"] for x in lines if "gradwatch_run" in x]
    records = [x for x in lines if "step" in x]
    assert len(headers) == 2 and len(records) == 8
    assert all(r["run_id"] in headers for r in records)
    assert [r["run_id"] for r in records[:2]] == [headers[0], headers[1]]  # interleaved
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing split, nothing skipped
        runs = read_runs(path)
    assert len(runs) == 2
    by_id = {r.run_id: r for r in runs}
    for watch in (wg, wd):
        run = by_id[watch._ledger.run_id]
        assert [r.step for r in run.records] == [0, 1, 2, 3]
        assert [r.total_norm for r in run.records] == [r.total_norm for r in watch.history]
        assert [r.layers["0"].norm for r in run.records] == [
            r.layers["0"].norm for r in watch.history]
    assert [r.total_norm for r in read_jsonl(path, run=wg._ledger.run_id)] == [
        r.total_norm for r in wg.history]


def test_the_report_cli_reports_each_interleaved_run_with_its_own_records(tmp_path, capsys):
    path = tmp_path / "gan.jsonl"
    wg, wd, _ = _gan(path, steps=3)
    assert cli_main(["report", str(path), "--list"]) == 0
    out = capsys.readouterr().out
    assert "2 runs" in out and out.count("3 records, steps 0..2") == 2
    assert cli_main(["report", str(path), "--run", wg._ledger.run_id[:12], "--out",
                     str(tmp_path / "g"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"3 records from {path} (run ")
    report = (tmp_path / "g" / "report.md").read_text()
    assert wg._ledger.run_id[:8] in report


def test_an_interleaved_resume_cuts_only_its_own_run(tmp_path):
    path = tmp_path / "r.jsonl"
    a, b = JsonlLogger(path), JsonlLogger(path)
    a.start_run({"run_id": "A"})
    a(_rec(0, 1.0))
    a(_rec(1, 1.0))
    b.start_run({"run_id": "B"})
    b(_rec(0, 2.0))
    a.start_run({"run_id": "A", "resumed": True, "resume_step": 1})  # back to step 1
    b(_rec(1, 2.0))
    a(_rec(1, 3.0))
    a(_rec(2, 3.0))
    a.close(), b.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ra, rb = read_runs(path)
    assert (ra.run_id, rb.run_id) == ("A", "B")
    assert [(r.step, r.total_norm) for r in ra.records] == [(0, 1.0), (1, 3.0), (2, 3.0)]
    assert [(r.step, r.total_norm) for r in ra.superseded] == [(1, 1.0)]
    assert [(r.step, r.total_norm) for r in rb.records] == [(0, 2.0), (1, 2.0)]


def test_records_without_a_run_id_read_as_before(tmp_path):
    """A log of an older gradwatch: runs by header and position, split where the step goes
    back (the records carry no run id)."""
    path = tmp_path / "old.jsonl"
    lines = [{"gradwatch_run": {"run_id": "r0"}}, _rec(0).to_dict(), _rec(1).to_dict(),
             _rec(0, 4.0).to_dict(), {"gradwatch_run": {"run_id": "r1"}}, _rec(0, 5.0).to_dict()]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.warns(UserWarning, match=r"old\.jsonl:4: step 0 follows step 1"):
        runs = read_runs(path)
    assert [(r.run_id, [x.total_norm for x in r.records]) for r in runs] == [
        ("r0", [1.5, 1.5]), (None, [4.0]), ("r1", [5.0])]


def test_a_record_of_a_run_whose_header_is_missing_forms_its_own_run(tmp_path):
    path = tmp_path / "r.jsonl"
    lines = [{"gradwatch_run": {"run_id": "A"}}, {**_rec(0).to_dict(), "run_id": "A"},
             {**_rec(0, 7.0).to_dict(), "run_id": "lost"}, {**_rec(1).to_dict(), "run_id": "A"},
             {**_rec(1, 7.0).to_dict(), "run_id": "lost"}]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    a, lost = read_runs(path)
    assert a.run_id == "A" and [r.step for r in a.records] == [0, 1]
    assert lost.header is None and [r.total_norm for r in lost.records] == [7.0, 7.0]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**_rec(0).to_dict(), "run_id": 3}) + "\n"
                   + json.dumps(_rec(1).to_dict()) + "\n")
    with pytest.warns(UserWarning, match=r"bad\.jsonl:1: .*`run_id` must be a non-empty string"):
        assert [r.step for r in read_runs(bad)[0].records] == [1]


def test_a_logger_called_directly_writes_no_run_id(tmp_path):
    path = tmp_path / "r.jsonl"
    with JsonlLogger(path) as log:
        log(_rec(0))
    assert "run_id" not in json.loads(path.read_text())


# ------------------------------------------------------------------ one logger, one file
def _model():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def _train(model, opt, steps=2):
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(5, 4)).sum().backward()
        opt.step()


def test_a_logger_listed_twice_is_refused_naming_it(tmp_path):
    path = tmp_path / "dup.jsonl"
    log = JsonlLogger(path)
    model, opt = _model()
    with pytest.raises(ValueError) as err:
        GradWatch(model, optimizer=opt, loggers=[log, log])
    assert str(err.value) == (
        f"Expected `loggers` to hold each logger once, but loggers[0] and loggers[1] are the "
        f"same JsonlLogger({str(path)!r}): it would get every record twice; list it once.")
    assert not path.exists()
    with GradWatch(model, optimizer=opt, loggers=[log]) as watch:  # the model is not left hooked
        _train(model, opt)
    assert len(watch.history) == 2 and [r.step for r in read_jsonl(path)] == [0, 1]


@pytest.mark.parametrize("second", [JsonlLogger, CsvLogger])
def test_two_loggers_on_one_path_in_one_watch_are_refused(tmp_path, monkeypatch, second):
    monkeypatch.chdir(tmp_path)
    first = JsonlLogger("run.jsonl")
    other = second(tmp_path / "sub" / ".." / "run.jsonl")  # the same file, spelt otherwise
    model, opt = _model()
    with pytest.raises(ValueError, match=r"Expected `loggers` to write each file once, but "
                                         r"loggers\[0\] JsonlLogger\('run.jsonl'\) and "
                                         r"loggers\[1\] .* both write '.*run.jsonl'"):
        GradWatch(model, optimizer=opt, loggers=[first, other])


def test_one_logger_object_in_two_open_watches_warns(tmp_path):
    log = JsonlLogger(tmp_path / "r.jsonl")
    (m1, o1), (m2, o2) = _model(), _model()
    with GradWatch(m1, optimizer=o1, loggers=[log]):
        with pytest.warns(UserWarning, match=r"loggers\[0\] JsonlLogger\(.*r\.jsonl'\) is also a "
                                             r"logger of another open GradWatch"):
            GradWatch(m2, optimizer=o2, loggers=[log]).close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the first watch is closed: one after the other is fine
        GradWatch(m2, optimizer=o2, loggers=[log]).close()


def test_a_plain_function_shared_by_two_watches_is_fine(tmp_path):
    seen = []
    (m1, o1), (m2, o2) = _model(), _model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with GradWatch(m1, optimizer=o1, loggers=[seen.append]) as w1, \
                GradWatch(m2, optimizer=o2, loggers=[seen.append]):
            _train(m1, o1)
    assert len(seen) == 2 and len(w1.history) == 2


# ------------------------------------------------------------ a log of the other kind
def _logs(d: Path) -> tuple[Path, Path]:
    model, opt = _model()
    jsonl, csv_path = d / "run.jsonl", d / "run.csv"
    with GradWatch(model, optimizer=opt, loggers=[JsonlLogger(jsonl), CsvLogger(csv_path)]):
        _train(model, opt)
    return jsonl, csv_path


def test_a_logger_on_a_log_of_the_other_kind_is_refused(tmp_path):
    jsonl, csv_path = _logs(tmp_path)
    before = jsonl.read_bytes(), csv_path.read_bytes()
    with pytest.raises(ValueError) as err:
        CsvLogger(jsonl)
    assert str(err.value) == (
        f"CsvLogger({str(jsonl)!r}) would append to a file of another kind: {str(jsonl)!r} holds "
        f"a JSON-lines log written by JsonlLogger; log CSV rows to a .csv file, e.g. "
        f"CsvLogger({str(csv_path)!r}).")
    with pytest.raises(ValueError) as err:
        JsonlLogger(csv_path)
    assert str(err.value).startswith(
        f"JsonlLogger({str(csv_path)!r}) would append to a file of another kind: "
        f"{str(csv_path)!r} holds a CSV log written by CsvLogger (its first line is the header "
        f"'step,layer,norm,")
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    for cls, what in ((JsonlLogger, "something other than JSON lines"),
                      (CsvLogger, "something other than a CsvLogger CSV")):
        with pytest.raises(ValueError, match=what):
            cls(notes)
    assert (jsonl.read_bytes(), csv_path.read_bytes()) == before
    assert notes.read_text() == "my notes\n"


def test_appending_to_a_log_of_its_own_kind_stays_as_it_was(tmp_path):
    jsonl, csv_path = _logs(tmp_path)
    _logs(tmp_path)  # a second run appends to both
    assert len(read_runs(jsonl)) == 2
    rows = list(csv.DictReader(open(csv_path, newline="", encoding="utf-8")))
    assert len({r["run_id"] for r in rows}) == 2 and len(rows) == 2 * 2 * 2


def test_a_file_of_the_other_kind_made_after_construction_is_not_written(tmp_path):
    path = tmp_path / "run.log"
    log = JsonlLogger(path)  # nothing there yet
    with CsvLogger(path) as other:
        other(_rec(0))
    before = path.read_bytes()
    model, opt = _model()
    with pytest.warns(RuntimeWarning, match=r"raised ValueError: JsonlLogger\(.*\) would append "
                                            r"to a file of another kind"):
        with GradWatch(model, optimizer=opt, loggers=[log]):
            _train(model, opt)
    assert path.read_bytes() == before


# --------------------------------------------------------------- paths that cannot be written
@pytest.mark.parametrize("cls", [JsonlLogger, CsvLogger])
def test_paths_that_can_never_be_written_are_refused_at_construction(tmp_path, cls):
    example = "run.jsonl" if cls is JsonlLogger else "run.csv"
    with pytest.raises(ValueError) as err:
        cls("")
    assert str(err.value) == (
        f"Expected `path` to be the file to write the log to, but got '', which names no file; "
        f"pass a file path in a folder you can write, e.g. {cls.__name__}({example!r}).")
    with pytest.raises(ValueError) as err:
        cls(tmp_path)
    assert str(err.value) == (
        f"Expected `path` to be the file to write the log to, but {str(tmp_path)!r} is a "
        f"directory; pass a file inside it, e.g. {cls.__name__}({str(tmp_path / example)!r}).")
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ValueError, match=rf"lies under {str(afile)!r}, which is a file, not a "
                                         rf"folder; pass a file path"):
        cls(afile / "sub" / example)
    with pytest.raises(ValueError, match=r"the folder '/proc/gw' of '/proc/gw/run\.log' cannot be "
                                         r"created \(.*\); pass a file path in a folder"):
        cls("/proc/gw/run.log")
    assert afile.read_text() == "x"


def test_a_missing_folder_is_created_with_the_logger(tmp_path):
    log = JsonlLogger(tmp_path / "a" / "b" / "run.jsonl")
    assert (tmp_path / "a" / "b").is_dir() and not log.path.exists()


class _Writer:
    def __init__(self):
        self.scalars = []

    def add_scalar(self, tag, value, step):
        self.scalars.append(tag)

    def flush(self):
        pass


@pytest.mark.parametrize("kwargs, error, message", [
    ({"prefix": None}, ValueError, "Expected `prefix` to be a non-empty string, but got None"),
    ({"prefix": ""}, ValueError, "Expected `prefix` to be a non-empty string, but got ''"),
    ({"layers": "no"}, TypeError, "Expected `layers` to be True or False, but got 'no'"),
])
def test_tensorboard_logger_checks_prefix_and_layers(kwargs, error, message):
    with pytest.raises(error) as err:
        TensorBoardLogger(_Writer(), **kwargs)
    assert str(err.value).startswith(message)
    writer = _Writer()
    TensorBoardLogger(writer, prefix="gw", layers=False)(_rec(0))
    assert writer.scalars == ["gw/total_norm", "gw/clip_coef", "gw/flagged_layers", "gw/findings"]


# ------------------------------------------------------- deferred records at the process' end
def test_the_exit_hook_writes_the_deferred_record_of_an_open_watch(tmp_path):
    """The watch is never closed; its last record is held (deferred) when the script ends."""
    from gradwatch.record import recorder

    path = tmp_path / "run.jsonl"
    torch.manual_seed(0)
    model, opt = _model()
    watch = GradWatch(model, optimizer=opt, loggers=[JsonlLogger(path)], sync_records=False)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 4)).sum().backward()
        norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item()
        opt.step()
    assert [r.step for r in read_jsonl(path)] == [0, 1]  # step 2's record is held
    recorder._flush_at_exit()  # what atexit runs
    records = list(read_jsonl(path))
    assert [r.step for r in records] == [0, 1, 2]
    assert records[-1].total_norm == pytest.approx(norm, rel=1e-6)
    watch.close()  # nothing is written twice
    assert [r.step for r in read_jsonl(path)] == [0, 1, 2] and len(watch.history) == 3


_DEFERRED_SCRIPT = """
import sys, torch
from torch import nn
torch.set_num_threads(1)
from gradwatch import GradWatch, JsonlLogger
model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
watch = GradWatch(model, optimizer=opt, loggers=[JsonlLogger(sys.argv[1])], sync_records=False)
for step in range(3):
    opt.zero_grad()
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
"""


def test_a_script_ending_with_its_watch_open_keeps_the_last_record(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "run.jsonl"
    proc = subprocess.run([sys.executable, "-c", _DEFERRED_SCRIPT, str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert [r.step for r in read_jsonl(path)] == [0, 1, 2]
