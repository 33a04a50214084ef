"""state_dict round trip, bad input, loggers, thresholds."""

from __future__ import annotations

import copy
import csv
import json
import math
import random
import re

import pytest
import torch
from torch import nn

from conftest import batch, loss_of, mlp
from gradwatch import (CsvLogger, GradWatch, JsonlLogger, LayerStat, Status, StepRecord,
                       Thresholds, read_jsonl)
from gradwatch.verdict.spikes import RunningStats


def _train(model, opt, watch, steps):
    for step in steps:
        opt.zero_grad()
        x, y = batch(seed=step)
        scale = 30.0 if step == 32 else 1.0  # one spike, after warm-up
        (scale * loss_of(model, x, y)).backward()
        opt.step()


def test_state_dict_resume_behaves_as_if_never_interrupted():
    torch.manual_seed(0)
    base = mlp()
    th = Thresholds(spike_warmup=5)
    full = copy.deepcopy(base)
    opt = torch.optim.SGD(full.parameters(), lr=0.05)
    with GradWatch(full, optimizer=opt, clip="auto", thresholds=th) as watch:
        _train(full, opt, watch, range(40))
    uninterrupted = watch.history[20:]

    first = copy.deepcopy(base)
    opt1 = torch.optim.SGD(first.parameters(), lr=0.05)
    with GradWatch(first, optimizer=opt1, clip="auto", thresholds=th) as w1:
        _train(first, opt1, w1, range(20))
        saved = json.loads(json.dumps(w1.state_dict()))  # must survive JSON too
    second = copy.deepcopy(first)
    opt2 = torch.optim.SGD(second.parameters(), lr=0.05)
    opt2.load_state_dict(opt1.state_dict())
    with GradWatch(second, optimizer=opt2, clip="auto", thresholds=th) as w2:
        w2.load_state_dict(saved)
        _train(second, opt2, w2, range(20, 40))
    assert w2.history == uninterrupted
    assert any(r.clipped for r in uninterrupted) and any(r.spike for r in uninterrupted)
    assert w2.summary().splitlines()[:2] == watch.summary().splitlines()[:2]


def test_load_state_dict_rejects_another_model():
    saved = GradWatch(mlp()).state_dict()
    other = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2),
                          nn.Linear(2, 2), nn.Linear(2, 2))
    with pytest.raises(ValueError, match="layers this model lacks"):
        GradWatch(other).load_state_dict({**saved, "stats": {"nope": saved["stats"]["0"]}})


@pytest.mark.parametrize("state, error, match", [
    ([1, 2], TypeError, "the dict GradWatch.state_dict\\(\\) returned, but got list"),
    ({"model": {}}, ValueError, "lacks \\['step', 'stats'.*checkpoint\\['gradwatch'\\]"),
    ("step", ValueError, "state\\['step'\\] to be an int >= 0, but got -1"),
])
def test_load_state_dict_says_what_to_pass_instead_of_a_foreign_dict(state, error, match):
    saved = GradWatch(mlp()).state_dict()
    if state == "step":
        state = {**saved, "step": -1}
    watch = GradWatch(mlp())
    before = watch.state_dict()
    with pytest.raises(error, match=match):
        watch.load_state_dict(state)
    assert watch.state_dict() == before  # refused before anything was restored


class _Callable:
    def __call__(self, record):
        pass


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(model=[nn.Linear(2, 2)]), TypeError, "`model` to be a torch.nn.Module"),
    (dict(every=0), ValueError, "`every` to be an int >= 1"),
    (dict(every=1.5), ValueError, "`every`"),
    (dict(on_nonfinite="ignore"), ValueError, "`on_nonfinite` to be one of"),
    (dict(on_nonfinite="skip"), ValueError, "needs `optimizer=`"),
    (dict(clip="fast"), ValueError, "clip=\"auto\""),
    (dict(clip=-1.0), ValueError, "`clip`"),
    (dict(clip=float("nan")), ValueError, "`clip`"),
    (dict(loggers=None), TypeError, "`loggers`.*None.*list"),
    (dict(thresholds={"vanishing": 1}), TypeError, "gradwatch.Thresholds"),
    (dict(optimizer="adam"), TypeError, "`optimizer`"),
    (dict(history=0), ValueError, "`history`"),
    (dict(loggers="run.jsonl"), TypeError, "`loggers`"),
    (dict(scaler=object()), TypeError, "`scaler`"),
    (dict(loggers=[print, 1]), TypeError, r"loggers\[1\] is int 1, which is not callable"),
    (dict(sync_records="no"), TypeError, "`sync_records` to be None .*True or False.*'no'"),
    (dict(loggers=_Callable()), TypeError, "`loggers`.*list"),  # a callable, not in a list
    (dict(statistics=[object()]), TypeError, "Statistic"),
])
def test_bad_input_names_the_argument(kwargs, error, match):
    model = kwargs.pop("model", mlp())
    with pytest.raises(error, match=match):
        GradWatch(model, **kwargs)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_a_torchscript_module_is_refused_with_the_fix():
    inner = torch.jit.script(nn.Linear(2, 2))
    for model, where in ((inner, "(root)"), (nn.Sequential(nn.Linear(2, 2), inner), "1")):
        with pytest.raises(TypeError, match=f"`{re.escape(where)}` is a TorchScript module.*"
                                            f"before scripting it"):
            GradWatch(model)


def test_step_called_twice_for_one_backward_says_so():
    model = mlp()
    with GradWatch(model) as watch:
        loss_of(model, *batch()).backward()
        first = watch.step()
        with pytest.warns(UserWarning, match="watch.step\\(\\) was called again without a "
                                             "new forward and backward"):
            second = watch.step()
    assert second.total_norm == first.total_norm  # the same gradients, measured twice
    assert first.layers["0"].act_norm is not None and second.layers["0"].act_norm is None


def test_model_without_trainable_parameters():
    frozen = mlp().requires_grad_(False)
    with pytest.raises(ValueError, match="no.*trainable|none requires grad"):
        GradWatch(frozen)
    with pytest.raises(ValueError, match="trainable"):
        GradWatch(nn.ReLU())


def test_step_with_optimizer_given_and_without_gradients():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with GradWatch(model, optimizer=opt) as watch:
        with pytest.raises(RuntimeError, match="called for you"):
            watch.step()
    with GradWatch(model) as watch:
        with pytest.warns(RuntimeWarning, match="after loss.backward"):
            assert watch.step() is None


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(vanishing=1.0, exploding=0.5), ValueError, "vanishing.*exploding"),
    (dict(vanishing=-1e-3), ValueError, "vanishing"),
    (dict(exploding=math.nan), ValueError, "exploding"),
    (dict(relative_vanishing=2.0), ValueError, "relative_vanishing"),
    (dict(relative_exploding=0.5), ValueError, "relative_exploding"),
    (dict(spike=0), ValueError, "spike"),
    (dict(spike_momentum=1.0), ValueError, "spike_momentum"),
    (dict(spike_warmup=0), ValueError, "spike_warmup"),
    (dict(spike="6"), TypeError, "`Thresholds.spike` to be a number"),
    (dict(relative_vanishing="1e-3"), TypeError, "`Thresholds.relative_vanishing`"),
    (dict(window=3, persistence=4), ValueError, "persistence"),
])
def test_bad_thresholds_name_the_field(kwargs, error, match):
    with pytest.raises(error, match=match):
        Thresholds(**kwargs)


def test_numpy_scalars_are_taken_as_python_numbers():
    """np.int64(10000) was refused as "not a number"; the values equal the plain ones and the
    thresholds serialise as they would."""
    import numpy as np
    th = Thresholds(exploding=np.int64(10000), window=np.int64(6), dead_units=np.float32(0.5),
                    not_moving=np.int32(8))
    assert th == Thresholds(exploding=10000, window=6, dead_units=0.5, not_moving=8)
    assert type(th.window) is int and type(th.dead_units) is float
    with pytest.raises(ValueError, match="window"):
        Thresholds(window=np.int64(0))


def test_running_stats_flag_a_spike_only_after_warmup():
    th = Thresholds(spike=4.0, spike_warmup=10)
    stats = RunningStats()
    rng = random.Random(0)
    assert stats.observe(1000.0, th) == ""  # first observation: no history
    stats = RunningStats()
    flags = [stats.observe(10 ** rng.gauss(0, 0.05), th) for _ in range(100)]
    assert not any(flags)
    assert "running mean" in stats.observe(50.0, th)
    assert stats.observe(1.0, th) == ""  # the capped update did not blow up the variance
    assert RunningStats.from_state(stats.state_dict()).state_dict() == stats.state_dict()


def _record(step, norm=1.0):
    return StepRecord(step=step, total_norm=norm * 2, clip_coef=0.5, layers={
        "a": LayerStat(norm=norm, act_norm=None), "b": LayerStat(
            norm=math.inf, act_norm=3.0, status=Status.NONFINITE, reason="norm is inf")},
        first_nonfinite="b")


def test_jsonl_logger_round_trip_and_truncated_last_line(tmp_path):
    path = tmp_path / "run.jsonl"
    with JsonlLogger(path) as log:
        for step in range(3):
            log(_record(step, norm=0.1 * step))
    assert list(read_jsonl(path)) == [_record(s, norm=0.1 * s) for s in range(3)]
    with open(path, "a") as f:
        f.write('{"step": 3, "total_no')
    with pytest.warns(UserWarning, match="truncated"):
        assert len(list(read_jsonl(path))) == 3
    lines = path.read_text().splitlines()
    path.write_text("\n".join(["garbage"] + lines[:2]) + "\n")
    with pytest.warns(UserWarning, match=":1: skipped a truncated or unreadable line"):
        assert list(read_jsonl(path)) == [_record(0, norm=0.0), _record(1, norm=0.1)]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list(read_jsonl(tmp_path / "missing.jsonl"))


def test_watch_writes_every_record_to_loggers_and_closes_them(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    jsonl, csv_log = JsonlLogger(tmp_path / "r.jsonl"), CsvLogger(tmp_path / "r.csv")
    with GradWatch(model, optimizer=opt, loggers=[jsonl, csv_log], history=1) as watch:
        for step in range(4):
            opt.zero_grad()
            loss_of(model, *batch(seed=step)).backward()
            opt.step()
            assert list(read_jsonl(jsonl.path))[-1] == watch.history[-1]  # flushed per record
    assert jsonl._file is None and csv_log._file is None
    assert [r.step for r in read_jsonl(jsonl.path)] == [0, 1, 2, 3]
    rows = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert len(rows) == 4 * 3 and rows[0]["layer"] == "0" and rows[-1]["step"] == "3"
    assert float(rows[-1]["norm"]) == pytest.approx(watch.history[-1].layers["4"].norm)


def test_optimizer_of_another_model_is_refused_at_once():
    model, other = nn.Linear(3, 2), nn.Linear(3, 2)
    with pytest.raises(ValueError, match=r"`optimizer`.*none of its 2 parameter\(s\)"):
        GradWatch(model, optimizer=torch.optim.SGD(other.parameters(), lr=0.1))
    # an optimizer stepping part of the model (a frozen backbone) is fine
    whole = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    GradWatch(whole, optimizer=torch.optim.SGD(whole[1].parameters(), lr=0.1)).close()


def test_a_condition_building_up_when_saved_is_still_reported_after_resuming():
    """`exploding` holds on steps 10-11 (the loss scaled by 1e4), not yet persistent; at step
    12 a NaN comes in with the batch. The uninterrupted watch reports `exploding` as what led
    there; a watch saved at step 12 and resumed reports the same (it dropped it)."""
    import warnings

    torch.manual_seed(0)
    data = [(torch.randn(16, 8), torch.randint(0, 3, (16,))) for _ in range(16)]
    init = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)).state_dict()

    def make():
        m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        m.load_state_dict(init)
        return m, torch.optim.SGD(m.parameters(), lr=1e-6)

    def train(m, o, lo, hi):
        for s in range(lo, hi):
            x, y = data[s]
            if s == 12:
                x = x.clone()
                x[0, 0] = float("nan")
            o.zero_grad()
            (nn.functional.cross_entropy(m(x), y) * (1e4 if s in (10, 11) else 1)).backward()
            o.step()

    th = Thresholds(exploding=100.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m, o = make()
        whole = GradWatch(m, optimizer=o, thresholds=th, on_nonfinite="skip")
        train(m, o, 0, 16)
        m, o = make()
        first = GradWatch(m, optimizer=o, thresholds=th, on_nonfinite="skip")
        train(m, o, 0, 12)
        state = first.state_dict()
        m2, o2 = make()
        m2.load_state_dict(m.state_dict())
        o2.load_state_dict(o.state_dict())
        resumed = GradWatch(m2, optimizer=o2, thresholds=th, on_nonfinite="skip")
        resumed.load_state_dict(state)
        train(m2, o2, 12, 16)
    kinds = [(f.kind, f.first_step, f.steps) for f in whole.diagnose()]
    assert ("exploding", 11, 1) in kinds
    assert [(f.kind, f.first_step, f.steps) for f in resumed.diagnose()] == kinds


def test_the_first_step_after_resuming_reduces_as_the_uninterrupted_run_does():
    """Dead units give output-gradient norms of 0 (below float32's safe range), so the next
    step reduces those gradients in float64 at once. That choice is saved: the resumed run's
    records equal the uninterrupted run's to the last bit, its first step included."""
    import io

    def build():
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 2))
        with torch.no_grad():
            m[2].bias.fill_(-5.0)
        return m, torch.optim.SGD(m.parameters(), lr=0.01)

    torch.manual_seed(1)
    data = [(torch.randn(64, 16), torch.randint(0, 2, (64,))) for _ in range(12)]

    def train(m, o, lo, hi):
        for s in range(lo, hi):
            x, y = data[s]
            o.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            o.step()

    m, o = build()
    whole = GradWatch(m, optimizer=o)
    train(m, o, 0, 12)
    m, o = build()
    first = GradWatch(m, optimizer=o)
    train(m, o, 0, 10)
    buf = io.BytesIO()
    torch.save({"m": m.state_dict(), "o": o.state_dict(), "w": first.state_dict()}, buf)
    buf.seek(0)
    ck = torch.load(buf, weights_only=False)
    m2, o2 = build()
    m2.load_state_dict(ck["m"])
    o2.load_state_dict(ck["o"])
    resumed = GradWatch(m2, optimizer=o2)
    resumed.load_state_dict(ck["w"])
    train(m2, o2, 10, 12)
    done = {r.step: r for r in whole.history}
    assert [r.step for r in resumed.history] == [10, 11]
    for r in resumed.history:
        assert {n: l.act_norm for n, l in r.layers.items()} == {
            n: l.act_norm for n, l in done[r.step].layers.items()}
