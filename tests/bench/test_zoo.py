"""The labelled zoo (benchmarks/zoo): its reduced set really trains or really fails as labelled.

These tests check the zoo's own sanity (healthy runs train, pathological runs fail the way their
label says, measured in plain torch), its split and its bookkeeping, and gradwatch's verdicts on
the reduced set with the default thresholds: no alarm on a healthy run, the right kind on a
broken one, the right NaN origin.
"""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch

from benchmarks.zoo import HEALTHY, KINDS, Label, split_of
from benchmarks.zoo.judge import Verdict, score
from benchmarks.zoo.run import all_runs, main, run_one, select
from gradwatch import StepRecord

QUICK = select(quick=True)


def test_zoo_covers_every_kind_with_enough_runs():
    runs = all_runs()
    healthy = [r for r in runs if r.label.kind == HEALTHY]
    broken = [r for r in runs if r.label.kind != HEALTHY]
    assert len(healthy) >= 20 and len(broken) >= 12
    assert {r.label.kind for r in broken} == set(KINDS)
    for r in broken:
        assert r.label.cite, r.name
        assert (r.label.birth is not None) == r.label.kind.startswith("nonfinite"), r.name
    # the reduced set has both sides too
    assert any(r.label.healthy for r in QUICK) and any(not r.label.healthy for r in QUICK)


def test_split_is_a_stable_third():
    names = [r.name for r in all_runs()]
    held = [n for n in names if split_of(n) == "held-out"]
    assert 0.2 * len(names) <= len(held) <= 0.45 * len(names)
    assert [split_of(n) for n in names] == [split_of(n) for n in list(names)]  # pure function
    assert split_of("vtt_lstm_long") == "tuning" and split_of("hf_t5_tiny") == "held-out"


def test_label_rejects_unknown_kind():
    with pytest.raises(ValueError, match="Expected `kind`"):
        Label("exploded")


def test_score_on_hand_made_verdicts():
    assert score(Label(HEALTHY), Verdict("diagnose"))["alarm"] is False
    assert score(Label(HEALTHY), Verdict("diagnose", flagged=["fc"]))["alarm"] is True
    nan = Label("nonfinite_forward", birth="3", cite="x")
    right = score(nan, Verdict("diagnose", kinds=["nonfinite_forward"], origin="3"))
    assert right == {"alarm": None, "found": True, "kind_right": True, "origin_right": True}
    wrong = score(nan, Verdict("statuses", kinds=["nonfinite"], origin="5"))
    assert wrong["kind_right"] is True and wrong["origin_right"] is False  # coarse kind, bad origin
    loss = Label("nonfinite_loss", birth="loss", head="3", cite="x")
    assert score(loss, Verdict("statuses", kinds=["nonfinite"], origin="3"))["origin_right"]
    assert not score(loss, Verdict("diagnose", kinds=["nonfinite_forward"], origin="3"))[
        "origin_right"]
    assert not score(Label("divergence", cite="x"), Verdict("statuses", kinds=["vanishing"]))[
        "kind_right"]


@pytest.mark.parametrize("run", QUICK, ids=[r.name for r in QUICK])
def test_quick_run_is_sane(run):
    for module in run.requires:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"needs {module}")
    torch.set_num_threads(1)
    result = run_one(run)
    failed = [c for c, ok in result["checks"].items() if not ok]
    trace = result["trace"]
    assert not failed, (f"{run.name} fails its own checks {failed}: losses "
                        f"{trace['losses'][:3]}..{trace['losses'][-3:]}, evidence {trace['evidence']}")
    # the records the lead tunes on survive JSON
    records = json.loads(json.dumps(result["records"]))
    assert len(records) >= 1
    back = StepRecord.from_dict(records[0])
    assert back.step == 0 and set(back.layers) == set(records[0]["layers"])
    first = trace["grad_norms"][0]
    assert math.isnan(back.total_norm) == math.isnan(first) or run.label.kind == "amp_overflow"
    # gradwatch's verdict with the default thresholds (the zoo's targets)
    got, said = result["score"], result["verdict"]
    if run.label.healthy:
        assert got["alarm"] is False, f"{run.name}: false alarm {said}"
    else:
        assert got["found"] and got["kind_right"], f"{run.name}: expected {run.label.kind}, {said}"
        if run.label.birth is not None:
            assert got["origin_right"], f"{run.name}: NaN born at {run.label.birth}, {said}"


def test_cli_only_writes_jsonl(tmp_path, capsys):
    assert main(["--only", "mlp_relu_he", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| mlp_relu_he |" in out and "tuning: healthy runs" in out
    lines = (tmp_path / "zoo.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["name"] == "mlp_relu_he"
    with pytest.raises(SystemExit) as stop:  # a usage error, not a traceback
        main(["--only", "no_such_run", "--out", str(tmp_path)])
    assert stop.value.code == 2
