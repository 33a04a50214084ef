"""The verdict core's shortcuts give the same numbers as the plain computations they replace:
the array spike tracker against one `RunningStats` per layer, the loss curve's median against
`statistics.median`, the depth trend remembered per layout against a fresh view, and a finding's
named layers against a rebuilt set."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from gradwatch.verdict.curve import LossCurve
from gradwatch.verdict.judge import Judge
from gradwatch.verdict.spikes import RunningStats, SpikeTracker
from gradwatch.verdict.thresholds import Thresholds
from gradwatch.verdict.depth import depth_trend, entering
from gradwatch.verdict.view import StepView


def _stream(rng: np.random.Generator, n: int, steps: int) -> list[np.ndarray]:
    """Log-normal norms with spikes, zeros, an inf and a NaN now and then."""
    out = []
    for t in range(steps):
        norms = rng.lognormal(0.0, 0.3, size=n)
        if t % 17 == 16:
            norms[rng.integers(n)] *= 1e4  # a spike
        if t % 23 == 22:
            norms[rng.integers(n)] = 0.0
        if t == 41:
            norms[0], norms[-1] = math.inf, math.nan
        out.append(norms)
    return out


def _reference_observe(state: dict, cols: np.ndarray, norms: np.ndarray, th: Thresholds):
    """The tracker's update written out once, entry by entry gathered and scattered (the
    general path, with no shortcut): the exact numbers the shortcuts must give."""
    ok = (norms > 0) & (norms < math.inf)
    c, x = cols[ok], np.log10(norms[ok])
    mean, count, var = state["mean"][c], state["count"][c], state["var"][c]
    std = np.sqrt(var)
    warm = count >= th.spike_warmup
    some = std > 0
    z = np.where(some, (x - mean) / np.where(some, std, 1.0), np.where(x > mean, math.inf, 0.0))
    r = np.power(10.0, np.minimum(x - mean, 308.0))
    spike = warm & (z > th.spike) & (r >= th.spike_min_ratio)
    x = np.where(spike, mean + th.spike * std, x)
    beta = np.where(warm, th.spike_momentum, count / (count + 1))
    delta = x - mean
    first = count == 0
    state["mean"][c] = np.where(first, x, mean + (1 - beta) * delta)
    state["var"][c] = np.where(first, var, beta * (var + (1 - beta) * delta * delta))
    state["count"][c] = count + 1
    ratio = np.zeros(len(norms))
    ratio[np.flatnonzero(ok)[spike]] = r[spike]
    return ratio


@pytest.mark.parametrize("warmup", [1, 5, 20])
def test_spike_tracker_shortcuts_match_the_general_update(warmup):
    th = Thresholds(spike_warmup=warmup)
    rng = np.random.default_rng(warmup)
    n = 12
    fast, ref = SpikeTracker(), {k: np.zeros(n) for k in ("mean", "var", "count")}
    plain = [RunningStats() for _ in range(n)]  # the scalar statistics, for the spikes
    spikes = 0
    for t, norms in enumerate(_stream(rng, n, 120)):
        whole = t % 5 != 3  # some steps name their columns out of order
        cols = np.arange(n) if whole else rng.permutation(n)
        ratio, _, _ = fast.observe(cols, norms, 1.0, th, whole=whole)
        assert ratio.tolist() == _reference_observe(ref, cols, norms, th).tolist()
        for k in ("mean", "var", "count"):
            assert getattr(fast, k).tolist() == ref[k].tolist()
        for k in range(n):
            evidence = plain[cols[k]].observe(float(norms[k]), th)
            assert (ratio[k] > 0) == bool(evidence)
            spikes += bool(evidence)
        assert fast.mean == pytest.approx([s.mean for s in plain], rel=1e-12, abs=1e-15)
    assert spikes >= 3  # the injected spikes were seen


def test_loss_curve_median_is_statistics_median():
    rng = np.random.default_rng(0)
    curve = LossCurve(window=7)
    recent = []
    for t in range(200):
        loss = float(rng.choice([1.0, 2.0, 0.5, rng.random() + 0.1]))  # repeats included
        if t == 50:
            loss = math.nan  # left out
        curve.add(loss)
        if math.isfinite(loss):
            recent = (recent + [loss])[-7:]
        if len(recent) == 7:
            assert curve.now == statistics.median(recent)
        if t == 120:  # a restored curve goes on the same
            state = curve.state_dict()
            curve = LossCurve(window=7)
            curve.load_state_dict(state)
    assert curve.best == min(curve.best, curve.now)


def _view(norms, act, memo=None, shared=()):
    n = len(norms)
    return StepView(step=0, names=[f"l{i}" for i in range(n)], roles=["weight"] * (n - 1) + ["bias"],
                    norms=np.asarray(norms, dtype=float), act=np.asarray(act, dtype=float),
                    values={}, head=n - 1, total=1.0, shared=shared,
                    **({} if memo is None else {"memo": memo}))


def test_depth_trend_remembered_per_layout_equals_a_fresh_one():
    rng = np.random.default_rng(1)
    memo: dict = {}
    shared = [False, True] + [False] * 8
    for _ in range(30):
        norms = rng.lognormal(0, 2, size=10)
        act = rng.lognormal(0, 2, size=10)
        act[rng.integers(10)] = np.nan if rng.random() < 0.3 else act[0]
        kept, fresh = _view(norms, act, memo, shared), _view(norms, act, None, shared)
        a, b = depth_trend(kept), depth_trend(fresh)
        assert [(t.what, t.starved, t.median, t.layers.tolist(), t.rel.tolist()) for t in a] \
            == [(t.what, t.starved, t.median, t.layers.tolist(), t.rel.tolist()) for t in b]
        # the entering ratio as first defined: first measured output gradient over the output
        # side's median output gradient
        trend = next((t for t in b if t.what == "output-gradient"), None)
        want = None
        if trend is not None:
            k = max(1, len(trend.layers) // 3)
            on = np.flatnonzero(~np.isnan(act))
            ref = statistics.median(act[trend.layers[-k:]].tolist())
            first = act[on[0]]
            want = first / ref if math.isfinite(first) else None
        assert entering(kept) == want
    assert "trend" in memo


def test_a_kept_finding_names_each_layer_once_in_order():
    judge = Judge(Thresholds(persistence=1, window=1))
    names = [f"l{i}" for i in range(6)]
    judge.uids(names)

    def view(norms):
        return StepView(step=0, names=names, roles=["weight"] * 6, norms=np.asarray(norms),
                        act=[None] * 6, values={}, head=5, total=float(np.linalg.norm(norms)),
                        uid=judge.uids(names))

    judge.judge(view([1e3, 1e3, 1.0, 1.0, 1e-3, 1e-3]))  # the input side explodes
    first = judge.findings["exploding"].layers
    judge.judge(view([1e3, 1e3, 1e3, 1.0, 1e-3, 1e-3]))  # one layer more joins
    judge.judge(view([1e3, 1e3, 1e3, 1.0, 1e-3, 1e-3]))
    layers = judge.findings["exploding"].layers
    assert layers[:len(first)] == first and len(set(layers)) == len(layers)
    assert "l2" in layers and judge._steps["exploding"] == 3
