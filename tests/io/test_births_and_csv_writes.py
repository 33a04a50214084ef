"""Where a NaN was born is the earliest birth, named first; a CSV step reaches the file whole."""

from __future__ import annotations

import builtins
import csv
import io
import math

import pytest

from gradwatch import CsvLogger, JsonlLogger, LayerStat, StepRecord
from gradwatch.io import loggers
from gradwatch.io.report import markdown_report, run_overview
from gradwatch.io.runsummary import summarize


def _nan_run() -> list[StepRecord]:
    """Healthy to step 4; the backward pass makes a NaN at layer "c" on step 5; from step 6
    the weights are NaN and every step names layer "a" (the first in forward order)."""
    out = []
    for step in range(12):
        bad = step >= 5
        first = None if not bad else ("c" if step == 5 else "a")
        out.append(StepRecord(step=step, total_norm=math.nan if bad else 1.0,
                              first_nonfinite=first,
                              nonfinite_origin=None if not bad else (
                                  "backward" if step == 5 else "forward"),
                              layers={n: LayerStat(norm=math.nan if bad else 0.5)
                                      for n in "abc"}))
    return out


def test_the_first_birth_is_named_first_and_the_rest_as_what_followed():
    s = summarize(_nan_run())
    assert s.births == (("c", 1, 5), ("a", 6, 6))
    row = dict(run_overview(_nan_run()))["where NaN/Inf was born (first_nonfinite)"]
    assert row == "`c` ×1 (first at step 5); followed by: `a` ×6 (first at step 6)"
    assert row in markdown_report(_nan_run())


def test_one_birth_reads_as_before():
    recs = _nan_run()[:6]
    row = dict(run_overview(recs))["where NaN/Inf was born (first_nonfinite)"]
    assert row == "`c` ×1 (first at step 5)"


class _Recorded(io.FileIO):
    """A file that remembers where each write to the OS ended."""

    ends: list[int] = []

    def write(self, data):
        n = super().write(data)
        type(self).ends.append(self.tell())
        return n


def _recording_open(file, mode="r", *args, encoding=None, newline=None, **kw):
    if mode != "a":
        return builtins.open(file, mode, *args, encoding=encoding, newline=newline, **kw)
    return io.TextIOWrapper(io.BufferedWriter(_Recorded(file, "a")), encoding=encoding,
                            newline=newline)


def _record(step: int, width: int) -> StepRecord:
    return StepRecord(step=step, total_norm=1.0, layers={
        f"block.{k}.linear": LayerStat(norm=0.1 * k, act_norm=0.2, reason="x" * 40)
        for k in range(width)})


@pytest.mark.parametrize("logger", [CsvLogger, JsonlLogger])
def test_a_kill_between_two_writes_leaves_whole_steps(tmp_path, monkeypatch, logger):
    """A 400-layer step is ~60 KB of CSV; each write to the OS must end at a step's end, so a
    kill (which lands between two writes) cannot leave part of a step's rows."""
    monkeypatch.setattr(loggers, "open", _recording_open, raising=False)
    _Recorded.ends = []
    path = tmp_path / ("run.csv" if logger is CsvLogger else "run.jsonl")
    log = logger(path)
    sizes = []
    for step in range(3):
        log(_record(step, 400))
        sizes.append(path.stat().st_size)
    log.close()
    assert _Recorded.ends == sizes, "a write ended inside a step"
    if logger is CsvLogger:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        assert [sum(r["step"] == str(s) for r in rows) for s in range(3)] == [400] * 3
