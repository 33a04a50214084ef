"""JsonlLogger/CsvLogger writing and the log reader: runs, resumes, kills and bad lines."""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gradwatch import GradWatch, LayerStat, Status, StepRecord
from gradwatch.io.loggers import CsvLogger, JsonlLogger, read_jsonl, read_runs
from gradwatch.io.runlog import HEADER_KEY, LogFormatError, Run, check_record_dict, select_run


def _rec(step: int, norm: float = 1.0, **kw) -> StepRecord:
    return StepRecord(step=step, total_norm=norm, layers={
        "fc1": LayerStat(norm=norm / 2, act_norm=0.5), "fc2": LayerStat(norm=norm, act_norm=None)},
        **kw)


def _header(run_id: str, *, resumed: bool = False, resume_step: int | None = None, **kw):
    return {"run_id": run_id, "started": "2026-01-01T00:00:00+00:00", "gradwatch": "0.1.0",
            "thresholds": {"vanishing": 1e-7, "exploding": 1e4}, "layers": ["fc1", "fc2"],
            "options": {"every": 1}, "statistics": [], "resumed": resumed,
            "resume_step": resume_step, **kw}


def _write(path, records, header=None):
    with JsonlLogger(path) as log:
        if header is not None:
            log.start_run(header)
        for r in records:
            log(r)


def _cut_last_line(path: Path, keep: float = 0.5) -> None:
    """A kill mid-write: the last line loses its end (and its newline)."""
    data = path.read_bytes()
    start = data.rindex(b"\n", 0, len(data) - 1) + 1
    path.write_bytes(data[: start + int((len(data) - 1 - start) * keep)])


def _steps(records) -> list[int]:
    return [r.step for r in records]


# ------------------------------------------------------------------------- kills and resumes
def test_kill_mid_record_then_append_keeps_every_complete_record(tmp_path):
    """Issue 12.1: the first new record was glued to the cut line, and the reader raised."""
    path = tmp_path / "r.jsonl"
    _write(path, [_rec(s) for s in range(5)])
    _cut_last_line(path)
    _write(path, [_rec(s) for s in range(5, 8)])
    assert path.read_bytes().count(b"\n") == 8  # the cut line was ended before appending
    with pytest.warns(UserWarning, match=r"r\.jsonl:5: skipped a truncated or unreadable line"):
        records = list(read_jsonl(path))
    assert records == [_rec(s) for s in (0, 1, 2, 3, 5, 6, 7)]


def test_resume_replaces_the_steps_after_the_checkpoint(tmp_path):
    path = tmp_path / "r.jsonl"
    _write(path, [_rec(s, norm=1.0) for s in range(6)], _header("a1"))
    _cut_last_line(path)  # killed while writing step 5; the checkpoint was at step 3
    new = [_rec(s, norm=2.0) for s in range(3, 9)]
    _write(path, new, _header("a1", resumed=True, resume_step=3))
    with pytest.warns(UserWarning, match=":7: skipped a truncated"):
        (run,) = read_runs(path)
    assert run.run_id == "a1" and run.header == _header("a1")
    assert list(run.records) == [_rec(s, norm=1.0) for s in range(3)] + new
    assert list(run.superseded) == [_rec(s, norm=1.0) for s in (3, 4)]
    assert run.resumes == (_header("a1", resumed=True, resume_step=3),)
    assert "resumed 1x (at step 3; 2 records replaced)" in run.describe()


def test_resume_without_resume_step_cuts_at_its_first_record(tmp_path):
    path = tmp_path / "r.jsonl"
    _write(path, [_rec(s) for s in range(5)], _header("a1"))
    _write(path, [_rec(s, norm=3.0) for s in (2, 3)], _header("a1", resumed=True))
    (run,) = read_runs(path)
    assert list(run.records) == [_rec(0), _rec(1), _rec(2, norm=3.0), _rec(3, norm=3.0)]


def test_resume_of_a_run_whose_header_was_lost_is_its_own_run(tmp_path):
    path = tmp_path / "r.jsonl"
    _write(path, [_rec(s) for s in range(2)], _header("old"))
    path.write_bytes(path.read_bytes()[:10])  # killed while writing the header
    _write(path, [_rec(s) for s in (4, 5)], _header("x", resumed=True, resume_step=4))
    with pytest.warns(UserWarning, match=":1: skipped a truncated"):
        runs = read_runs(path)
    assert [r.run_id for r in runs] == ["x"] and _steps(runs[0].records) == [4, 5]


def test_logger_ends_a_cut_line_without_start_run_and_on_reopen(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"step": 0, "total_no', encoding="utf-8")
    log = JsonlLogger(path)
    log(_rec(1))
    log.close()
    log(_rec(2))  # reopened after close: the file ends in a newline, nothing is added
    log.close()
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[0] == '{"step": 0, "total_no' and lines[3] == ""
    assert [json.loads(x)["step"] for x in lines[1:3]] == [1, 2]


def test_header_is_written_as_given_and_checked(tmp_path):
    import numpy as np

    path = tmp_path / "r.jsonl"
    header = _header("b2", custom={"nested": [1, 2]}, lr=np.float32(0.5))
    _write(path, [_rec(0)], header)
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert first == {HEADER_KEY: {**header, "lr": 0.5}}
    with pytest.raises(TypeError, match="Expected `header` to be a dict"):
        JsonlLogger(path).start_run(["run"])


# ---------------------------------------------------------------------------- several runs
def test_two_runs_in_one_file_stay_apart(tmp_path):
    """Issue 12.2: a script run twice appended a second run that was read as one."""
    path = tmp_path / "r.jsonl"
    _write(path, [_rec(s, norm=1.0) for s in range(4)], _header("aaaa1111"))
    _write(path, [_rec(s, norm=2.0) for s in range(3)], _header("bbbb2222"))
    runs = read_runs(path)
    assert [r.run_id for r in runs] == ["aaaa1111", "bbbb2222"]
    assert [r.index for r in runs] == [0, 1] and [r.line for r in runs] == [1, 6]
    assert list(runs[0].records) == [_rec(s, norm=1.0) for s in range(4)]
    with pytest.warns(UserWarning, match=r"holds 2 runs; read the last \(run 1 · id bbbb2222"):
        assert list(read_jsonl(path)) == [_rec(s, norm=2.0) for s in range(3)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # choosing a run explicitly does not warn
        assert list(read_jsonl(path, run=0)) == list(runs[0].records)
        assert list(read_jsonl(path, run="bbbb")) == list(runs[1].records)
        assert len(list(read_jsonl(path, run="all"))) == 7
    with pytest.raises(ValueError, match=r"between -2 and 1, but got 2"):
        read_jsonl(path, run=2)
    with pytest.raises(ValueError, match="'cc' matches no run id"):
        read_jsonl(path, run="cc")


def test_runs_without_headers_split_where_the_step_goes_back(tmp_path):
    path = tmp_path / "legacy.jsonl"
    _write(path, [_rec(s) for s in range(3)])
    _write(path, [_rec(s, norm=5.0) for s in range(2)])
    with pytest.warns(UserWarning, match=r"legacy\.jsonl:4: step 0 follows step 2 without a run"):
        runs = read_runs(path)
    assert [r.header for r in runs] == [None, None]
    assert [_steps(r.records) for r in runs] == [[0, 1, 2], [0, 1]]
    assert "no header" in runs[0].describe()


def test_select_run_by_prefix_and_errors():
    runs = [Run(0, {"run_id": "ab12"}, ()), Run(1, {"run_id": "ab34"}, ()), Run(2, None, ())]
    assert select_run(runs, -1).index == 2 and select_run(runs, "ab3").index == 1
    with pytest.raises(ValueError, match="'ab' matches several runs"):
        select_run(runs, "ab")
    with pytest.raises(TypeError, match="an index \\(int\\) or a run id"):
        select_run(runs, 1.0)


# ------------------------------------------------------------------------------- bad lines
def test_corrupt_line_in_the_middle_is_skipped_with_its_line_number(tmp_path):
    path = tmp_path / "r.jsonl"
    _write(path, [_rec(s) for s in range(4)], _header("c"))
    lines = path.read_text(encoding="utf-8").splitlines()
    lines.insert(3, "garbage{")
    lines.insert(5, '{"step": 9}')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (run,) = read_runs(path)
    assert list(run.records) == [_rec(s) for s in range(4)]
    assert [str(w.message).split(": skipped")[0] for w in caught] == [f"{path}:4", f"{path}:6"]
    assert "key `total_norm` is missing (keys present: step)" in str(caught[1].message)


GOOD = _rec(0).to_dict()


@pytest.mark.parametrize("change, message", [
    ({"step": math.inf}, "`step` must be a whole number >= 0, but got Infinity"),
    ({"step": True}, "`step` must be a whole number >= 0, but got true"),
    ({"step": 2.5}, "`step` must be a whole number >= 0, but got 2.5"),
    ({"step": "3"}, "`step` must be a whole number >= 0, but got a string \"3\""),
    ({"first_nonfinite": ["fc1"]},
     "`first_nonfinite` must be a layer name (string) or null, but got a list [\"fc1\"]"),
    ({"total_norm": None}, "`total_norm` must be a number, but got null"),
    ({"skipped": "no"}, "`skipped` must be true or false, but got a string \"no\""),
    ({"layers": []}, "`layers` must be an object of layer statistics, but got a list []"),
    ({"layers": {"a.0": {"act_norm": 1.0}}}, "`layers[\"a.0\"]` has no key `norm`"),
    ({"layers": {"a": {"norm": 1.0, "status": "bad"}}},
     f"`layers[\"a\"].status` must be one of {sorted(s.value for s in Status)}, "
     "but got a string \"bad\""),
    ({"layers": {"a": {"norm": 1.0, "update_ratio": "x"}}},
     "`layers[\"a\"].update_ratio` must be a number or null, but got a string \"x\""),
])
def test_schema_errors_name_the_key(change, message):
    assert check_record_dict({**GOOD, **change}) == message


def test_schema_accepts_what_to_dict_writes_and_extra_statistics():
    assert check_record_dict(GOOD) is None
    extra = {**GOOD, "layers": {"a": {"norm": math.nan, "update_ratio": 1e-3, "dead": None}},
             "future_key": [1]}
    assert check_record_dict(extra) is None
    assert check_record_dict([1, 2]) == "expected one JSON object per line, but got a list [1, 2]"
    missing = dict(GOOD)
    del missing["step"]
    assert check_record_dict(missing).startswith("key `step` is missing")


def test_not_utf8_directory_and_missing_file(tmp_path):
    binary = tmp_path / "b.jsonl"
    binary.write_bytes(b"\xff\xfe\x00\x81garbage\n\xc3\x28")
    with pytest.raises(LogFormatError, match="not a UTF-8 text file"):
        read_runs(binary)
    mixed = tmp_path / "m.jsonl"
    _write(mixed, [_rec(0), _rec(1)])
    mixed.write_bytes(mixed.read_bytes() + b"\xff\xfe\n")
    with pytest.warns(UserWarning, match=r"m\.jsonl:3: .*not UTF-8 text"):
        assert _steps(read_jsonl(mixed)) == [0, 1]
    with pytest.raises(IsADirectoryError, match="is a directory; pass the .jsonl file"):
        read_runs(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_jsonl(tmp_path / "missing.jsonl")
    empty = tmp_path / "e.jsonl"
    empty.write_text("", encoding="utf-8")
    assert read_runs(empty) == [] and list(read_jsonl(empty)) == []


# ---------------------------------------------------------------- property: kill and resume
# a norm: >= 0, inf or NaN (the reader refuses a negative norm as corrupt); abs() keeps the
# derandomized examples those of the plain float strategy
_float = st.floats(allow_nan=True, allow_infinity=True, width=64).map(abs)
_record = st.builds(
    lambda gap, total, n1, st1, fnf, skip: (gap, StepRecord(
        step=0, total_norm=total, clip_coef=1.0, first_nonfinite=fnf, skipped=skip,
        layers={"fc1": LayerStat(norm=n1, act_norm=None, status=st1), "fc2": LayerStat(norm=1.0)})),
    st.integers(1, 3), _float, _float, st.sampled_from(list(Status)),
    st.sampled_from([None, "fc1"]), st.booleans())
_cycle = st.tuples(st.floats(0, 1), st.integers(0, 12), st.lists(_record, max_size=4))


def _key(r: StepRecord) -> str:
    return json.dumps(r.to_dict())  # NaN-safe equality


def _steps_from(start: int, items) -> list[StepRecord]:
    out, step = [], start
    for i, (gap, r) in enumerate(items):
        step += gap if i else 0
        out.append(StepRecord(**{**r.__dict__, "step": step}))
    return out


def _unreadable_lines(path: Path) -> int:
    count = 0
    for line in path.read_bytes().split(b"\n"):
        try:
            json.loads(line) if line.strip() else None
        except ValueError:
            count += 1
    return count


@settings(max_examples=50, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(prior=st.booleans(), first=st.lists(_record, min_size=1, max_size=6),
       cycles=st.lists(_cycle, min_size=1, max_size=3))
@example(prior=True, first=[(1, _rec(0))] * 4, cycles=[(1.0, 2, [])])  # resumed, died at once
@example(prior=False, first=[(2, _rec(0))] * 3, cycles=[(0.9, 3, [(1, _rec(0))]), (0.5, 0, [])])
def test_property_any_cut_then_resume_reads_every_complete_record_once(prior, first, cycles):
    """Whatever byte a kill stops at and wherever the checkpoint was, a resume loses nothing.

    Model: a record survives a cut when its whole line (but not necessarily its newline) is
    before the cut; a resume from a checkpoint at step k keeps the surviving steps < k.
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.jsonl"
        kept: dict[str, list[tuple[int, StepRecord]]] = {"prior": [], "main": []}
        header_end: dict[str, int] = {}

        def end() -> int:  # offset of the newline just written
            return os.path.getsize(path) - 1

        if prior:
            with JsonlLogger(path) as log:
                log.start_run(_header("prior"))
                header_end["prior"] = end()
                for s in range(2):
                    log(_rec(s, norm=9.0))
                    kept["prior"].append((end(), _rec(s, norm=9.0)))
        with JsonlLogger(path) as log:
            log.start_run(_header("main"))
            for r in _steps_from(0, first):
                log(r)
                kept["main"].append((end(), r))
        for frac, k, new in cycles:
            cut = int(frac * os.path.getsize(path))
            with open(path, "r+b") as f:
                f.truncate(cut)
            kept = {name: [(e, r) for e, r in recs if e <= cut and (name == "prior" or r.step < k)]
                    for name, recs in kept.items()}
            header_end = {name: e for name, e in header_end.items() if e <= cut}
            with JsonlLogger(path) as log:
                log.start_run(_header("main", resumed=True, resume_step=k))
                for r in _steps_from(k, new):
                    log(r)
                    kept["main"].append((end(), r))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            runs = read_runs(path)
        assert len(caught) == _unreadable_lines(path)
        assert all("skipped a truncated" in str(w.message) for w in caught)
        assert [r.run_id for r in runs] == ["prior"] * ("prior" in header_end) + ["main"]
        if "prior" in header_end:
            assert [_key(r) for r in runs[0].records] == [_key(r) for _, r in kept["prior"]]
        assert [_key(r) for r in runs[-1].records] == [_key(r) for _, r in kept["main"]]


# -------------------------------------------------------------------------------------- CSV
class _Extra:
    """A record whose to_dict carries per-layer statistics the CSV logger was not told about."""

    def __init__(self, step: int, extra: dict | None = None) -> None:
        self.step, self.extra = step, extra or {}

    def to_dict(self):
        layer = {"norm": 0.5, "act_norm": None, "update_ratio": 1e-3 * (self.step + 1),
                 "weight_norm": 2.0, "status": "vanishing", "spike": True, "reason": "a, b"}
        return {"step": self.step, "total_norm": 1.5, "clip_coef": 1.0,
                "first_nonfinite": None, "spike": False, "skipped": False,
                "amp_overflow": False, "layers": {"fc1": layer, "fc2": dict(layer, norm=1.0)},
                **self.extra}


def test_csv_writes_every_key_of_the_records(tmp_path):
    path = tmp_path / "r.csv"
    log = CsvLogger(path)
    log.start_run({"run_id": "r1"})
    log(_Extra(0))
    log(_Extra(1))
    log.close()
    rows = list(csv.reader(open(path, newline="", encoding="utf-8")))
    # every column a record can have: the hooks' statistics and the step-level keys the first
    # record lacks (nonfinite_origin, findings, loss) included
    assert rows[0] == ["step", "layer", "norm", "act_norm", "update_ratio", "dead_frac",
                       "sat_frac", "time_ratio", "weight_norm", "status", "spike", "reason",
                       "total_norm", "clip_coef", "first_nonfinite", "step_spike", "skipped",
                       "amp_overflow", "nonfinite_origin", "findings", "loss", "held", "run_id"]
    assert rows[1] == ["0", "fc1", "0.5", "", "0.001", "", "", "", "2.0", "vanishing", "1",
                       "a, b", "1.5", "1.0", "", "0", "0", "0", "", "", "", "", "r1"]
    assert rows[4][:5] == ["1", "fc2", "1.0", "", "0.002"] and len(rows) == 5


_OLD_COLUMNS = ["step", "layer", "norm", "act_norm", "update_ratio", "weight_norm", "status",
                "spike", "reason", "total_norm", "clip_coef", "first_nonfinite", "step_spike",
                "skipped", "amp_overflow"]
"""The header gradwatch 0.2 wrote for `_Extra` records: columns from the first record only."""


def _old_csv(path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(_OLD_COLUMNS)
        for layer, norm in (("fc1", "0.5"), ("fc2", "1.0")):
            writer.writerow(["0", layer, norm, "", "0.001", "2.0", "vanishing", "1", "a, b",
                             "1.5", "1.0", "", "0", "0", "0"])


def test_csv_append_keeps_the_file_columns_and_warns_on_new_keys(tmp_path):
    path = tmp_path / "r.csv"
    _old_csv(path)  # written by an older gradwatch: no `loss` column
    data = path.read_bytes()
    path.write_bytes(data[:-9])  # killed mid-row
    with CsvLogger(path) as log, pytest.warns(UserWarning, match=r"no column for \['loss'\]"):
        log(_Extra(1, {"loss": 0.25}))
    rows = list(csv.DictReader(open(path, newline="", encoding="utf-8")))
    assert [r["step"] for r in rows] == ["0", "0", "1", "1"]
    assert rows[2]["update_ratio"] == "0.002" and "loss" not in rows[2]
    assert rows[3]["amp_overflow"] == "0"  # the appended rows line up with the header


def test_csv_of_a_real_watch_matches_its_history(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with GradWatch(model, optimizer=opt, loggers=[CsvLogger(tmp_path / "r.csv")]) as watch:
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(16, 4)).square().mean().backward()
            opt.step()
    rows = list(csv.DictReader(open(tmp_path / "r.csv", newline="", encoding="utf-8")))
    assert len(rows) == 3 * 2
    for row in rows:
        rec = watch.history[int(row["step"])]
        stat = rec.layers[row["layer"]]
        assert float(row["norm"]) == stat.norm and float(row["total_norm"]) == rec.total_norm
        for key, value in stat.to_dict().items():  # every statistic has its column
            assert key in row
