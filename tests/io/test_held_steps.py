"""A log says on which steps each finding held, so a report read from it counts a finding's
steps as the live diagnosis does, also for the kinds that give no layer a status."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from gradwatch import GradWatch, JsonlLogger, StepRecord
from gradwatch.io.runlog import read_runs
from gradwatch.io.runsummary import findings_of


def _never_zeroed(log, steps: int = 16) -> GradWatch:
    """A model trained without ``zero_grad()``, its loss fed upward from the 5th step:
    ``not_zeroed`` (no status) holds from its first step on, ``loss_rising`` (no
    status) once the rising losses fill its window."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(16, 6), torch.randn(16, 2)
    with GradWatch(model, optimizer=opt, loggers=[JsonlLogger(log)]) as watch:
        for step in range(steps):
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            watch.note_loss(1.0 if step < 4 else 1.0 + step)  # a loss curve that rises
            opt.step()
    return watch


def test_a_log_counts_the_steps_of_findings_without_a_status(tmp_path):
    log = tmp_path / "run.jsonl"
    watch = _never_zeroed(log)
    live = {f.kind: f for f in watch.diagnose()}
    assert {"not_zeroed", "loss_rising"} <= live.keys()
    assert live["not_zeroed"].steps > 1 and live["loss_rising"].steps > 1
    (run,) = read_runs(log)
    logged = {f.kind: f for f in findings_of(run.records)}
    assert logged == live  # every field: steps, layers, first step, evidence
    # each record names the findings that held at it: not_zeroed from its first step on
    first = live["not_zeroed"].first_step
    held = [r.step for r in run.records if "not_zeroed" in r.held]
    assert held == [r.step for r in run.records if r.step >= first]
    assert len(held) == live["not_zeroed"].steps


def test_the_history_and_the_record_dicts_carry_what_held(tmp_path):
    watch = _never_zeroed(tmp_path / "run.jsonl")
    records = list(watch.history)
    assert findings_of(records) == watch.diagnose()
    back = [StepRecord.from_dict(json.loads(json.dumps(r.to_dict()))) for r in records]
    assert [r.held for r in back] == [r.held for r in records]
    assert any(r.held for r in records)
    # a record on which nothing held writes no key
    assert all(("held" in r.to_dict()) == bool(r.held) for r in records)


def test_a_log_without_held_keeps_the_recorded_counts(tmp_path):
    """A log written before records had ``held``: the kinds without a status keep the count
    recorded when they first held (what the report said before)."""
    log = tmp_path / "run.jsonl"
    _never_zeroed(log)
    old = tmp_path / "old.jsonl"
    with open(log) as src, open(old, "w") as dst:
        for line in src:
            obj = json.loads(line)
            obj.pop("held", None)
            dst.write(json.dumps(obj) + "\n")
    (run,) = read_runs(old)
    logged = {f.kind: f for f in findings_of(run.records)}
    assert logged["not_zeroed"].steps == 1 and logged["loss_rising"].steps == 1


@pytest.mark.parametrize("bad", ["not_zeroed", [1, 2], {"kind": "x"}])
def test_a_malformed_held_is_refused_with_its_key_named(bad):
    with pytest.raises(TypeError, match="`held`"):
        StepRecord.from_dict({"step": 0, "total_norm": 1.0, "held": bad})
