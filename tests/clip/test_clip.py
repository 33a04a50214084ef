"""Clipping policies against torch.nn.utils, the authors' packages and hand-written references."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from gradwatch import GradWatch
from gradwatch.clip import (AGC, AutoClip, ClipPolicy, GlobalNorm, PerTensorNorm, Value, ZClip,
                            clip_with_norm_, make_policy)
from gradwatch.measure.norms import per_tensor_norms

PROPERTY = settings(max_examples=50, deadline=None, derandomize=True)
NO = [False] * 4


def _grads(seed: int = 0, scale: float = 1.0, dtype=torch.float32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(s, generator=g, dtype=torch.float64) * scale).to(dtype)
            for s in [(8, 4), (8,), (3, 8), (3,)]]


def _params_with(grads):
    params = [nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    return params


def _total(grads) -> float:
    """The global norm as gradwatch logs it on a healthy step (as clip_grad_norm_ forms it)."""
    return torch.linalg.vector_norm(per_tensor_norms(grads)).item()


def _bits_equal(ours, ref) -> None:
    for a, p in zip(ours, ref):
        b = p.grad if isinstance(p, nn.Parameter) else p
        assert a.dtype == b.dtype and torch.equal(a, b)


# ----------------------------------------------------------------------------- GlobalNorm, Value


@pytest.mark.parametrize("scale", [0.01, 1.0, 50.0])
def test_global_norm_equals_clip_grad_norm(scale):
    grads = _grads(scale=scale)
    ref = _params_with(grads)
    ref_total = torch.nn.utils.clip_grad_norm_(ref, 1.0)
    ours = [g.clone() for g in grads]
    total = _total(ours)
    coef = GlobalNorm(1.0).clip_(ours, total, params=ours, is_output=NO)
    assert total == ref_total.item()
    _bits_equal(ours, ref)
    assert coef == torch.clamp(1.0 / (ref_total + 1e-6), max=1.0).item()


@pytest.mark.parametrize("dtypes", [[torch.float32] * 4, [torch.float64] * 4,
                                    [torch.float64, torch.float32, torch.float32, torch.float64],
                                    [torch.bfloat16] * 4])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_global_norm_is_bit_identical_to_clip_grad_norm_in_every_dtype(dtypes, as_tensor):
    """Issue 12.6: the factor is formed in the gradients' (promoted) dtype, as torch does: a
    float64 factor for float64 and for mixed float32/float64 gradients (torch's total is float64
    there and multiplies float32 gradients by the factor rounded to float32), bfloat16 for
    bfloat16 gradients."""
    for seed, scale in [(0, 3.0), (1, 0.7), (2, 1e4)]:
        grads = [g.to(d) for g, d in zip(_grads(seed, scale, torch.float64), dtypes)]
        ref = _params_with(grads)
        torch_total = torch.nn.utils.get_total_norm(grads)
        torch.nn.utils.clip_grad_norm_(ref, 0.5)
        ours = [g.clone() for g in grads]
        coef = clip_with_norm_(ours, 0.5, torch_total if as_tensor else torch_total.item())
        _bits_equal(ours, ref)
        expected = torch.clamp(0.5 / (torch_total + 1e-6), max=1.0)
        assert float(coef) == expected.item() < 1
        if as_tensor:
            assert coef.dtype == torch_total.dtype
        if dtypes[0] == torch.float64 and dtypes[1] == torch.float32:  # mixed: how torch does it
            assert torch.equal(ours[1], grads[1] * expected.float())


def test_float64_model_trains_bit_identically_to_clip_grad_norm():
    """A float64 run clipped by the watch equals a plain clip_grad_norm_ loop bit for bit."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    ref, ours = copy.deepcopy(base), copy.deepcopy(base)
    opt_r = torch.optim.SGD(ref.parameters(), lr=0.1)
    opt_o = torch.optim.SGD(ours.parameters(), lr=0.1)
    x, y = torch.randn(32, 6, dtype=torch.float64), torch.randn(32, 3, dtype=torch.float64)
    with GradWatch(ours, optimizer=opt_o, clip=0.05) as watch:
        for _ in range(5):
            for model, opt in ((ref, opt_r), (ours, opt_o)):
                opt.zero_grad()
                nn.functional.mse_loss(model(x), y).backward()
                if model is ref:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)
                opt.step()
    assert all(r.clip_coef < 1 for r in watch.history)
    for a, b in zip(ours.parameters(), ref.parameters()):
        assert a.dtype == torch.float64 and torch.equal(a, b)


def test_a_gradient_of_exact_zeros_keeps_clipping_bit_identical_at_the_next_step():
    """A zero-initialised output layer gives the hidden layers gradients of exact zeros at the
    first step. Zeros are no float32 underflow: the next step's total is still torch's float32
    one, so the clipped run equals a ``clip_grad_norm_`` loop bit for bit."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                         nn.Linear(64, 4))
    nn.init.zeros_(base[4].weight)
    ref, ours = copy.deepcopy(base), copy.deepcopy(base)
    opt_r = torch.optim.SGD(ref.parameters(), lr=0.1)
    opt_o = torch.optim.SGD(ours.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(4)
    totals = []
    with GradWatch(ours, optimizer=opt_o, clip=1.0) as watch:
        for _ in range(10):
            x, y = torch.randn(16, 32, generator=g) * 20, torch.randint(0, 4, (16,), generator=g)
            for model, opt in ((ref, opt_r), (ours, opt_o)):
                opt.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                if model is ref:
                    totals.append(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0).item())
                opt.step()
    assert watch.history[0].layers["0"].norm == 0.0  # the first step's exact zeros
    assert [r.total_norm for r in watch.history] == totals
    for a, b in zip(ours.parameters(), ref.parameters()):
        assert torch.equal(a, b)


def test_global_norm_with_device_tensor_total_matches_too():
    grads = _grads(scale=10.0)
    ref = _params_with(grads)
    torch.nn.utils.clip_grad_norm_(ref, 0.5)
    ours = [g.clone() for g in grads]
    total = torch.linalg.vector_norm(per_tensor_norms(ours).double())
    coef = clip_with_norm_(ours, 0.5, total)
    assert isinstance(coef, torch.Tensor) and coef.dtype == torch.float32
    _bits_equal(ours, ref)


def test_documented_clip_gradient_norm_reference_agrees():
    """The reference `clip_gradient_norm(grads, max_norm=0.25)` of the experiments' source."""
    grads = _grads(scale=3.0)
    norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))
    factor = 0.25 / (norm + 1e-6)
    expected = [g * factor for g in grads] if factor < 1 else grads
    ours = [g.clone() for g in grads]
    GlobalNorm(0.25).clip_(ours, _total(ours), params=ours, is_output=NO)
    for a, e in zip(ours, expected):
        torch.testing.assert_close(a, e)


def test_value_equals_clip_grad_value():
    grads = _grads(scale=2.0)
    ref = _params_with(grads)
    torch.nn.utils.clip_grad_value_(ref, 0.7)
    ours = [g.clone() for g in grads]
    assert Value(0.7).clip_(ours, 0.0, params=ours, is_output=NO) is None
    _bits_equal(ours, ref)


# ----------------------------------------------------------------------------- PerTensorNorm


def _keras_clipnorm(g: torch.Tensor, c: float) -> torch.Tensor:
    """keras.ops.clip_by_norm's formula g·c / max(‖g‖, c), evaluated in float64 by plain torch."""
    g64 = g.double()
    return (g64 * c / torch.clamp(torch.linalg.vector_norm(g64), min=c)).to(g.dtype)


_RTOL = {torch.float32: 2e-7, torch.float64: 1e-15, torch.bfloat16: 2 ** -7}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_per_tensor_norm_equals_keras_clipnorm_on_plain_torch(dtype):
    """Issue 12.13: each tensor by its own norm, zero tensors and 1e30 entries included."""
    gen = torch.Generator().manual_seed(3)
    shapes_scales = [((5, 4), 10.0), ((7,), 0.01), ((3, 3), 0.0), ((6,), 1e30), ((2, 5), 1e-30),
                     ((4, 2), 0.3)]
    grads = [(torch.randn(s, generator=gen, dtype=torch.float64) * k).to(dtype)
             for s, k in shapes_scales]
    ours = [g.clone() for g in grads]
    policy = PerTensorNorm(1.0)
    assert not policy.needs_host_norm
    assert policy.clip_(ours, math.nan, params=ours, is_output=[False] * 6) is None
    for a, g in zip(ours, grads):
        torch.testing.assert_close(a, _keras_clipnorm(g, 1.0), rtol=_RTOL[dtype], atol=0)
        norm = torch.linalg.vector_norm(g.double()).item()
        if norm <= 1.0:
            assert torch.equal(a, g)  # unclipped tensors (the zero one too) keep every bit
        else:
            assert torch.linalg.vector_norm(a.double()).item() == pytest.approx(
                1.0, rel=4 * _RTOL[dtype])
    assert torch.linalg.vector_norm(grads[3].double()) > 1e30  # the fp32 norm would be inf


def test_per_tensor_norm_nonfinite_sparse_and_empty_tensors():
    bad = torch.tensor([3.0, math.inf, -2.0])
    nan = torch.tensor([1.0, math.nan])
    sparse = torch.sparse_coo_tensor([[0, 3, 3]], [3.0, 4.0, 0.0], (5,),  # norm 5 (coalesced)
                                     check_invariants=True)
    empty = torch.zeros(0, 3)
    grads = [bad, nan, sparse, empty]
    PerTensorNorm(2.0).clip_(grads, 0.0, params=grads, is_output=NO)
    assert torch.equal(bad.isnan(), torch.tensor([False, True, False])) and bad[0] == bad[2] == 0
    assert nan.isnan().all()  # as Keras: g * c / max(nan, c) is NaN
    torch.testing.assert_close(sparse.to_dense(), torch.tensor([1.2, 0.0, 0.0, 1.6, 0.0]))
    assert empty.shape == (0, 3)


def test_per_tensor_norm_in_a_watched_training_loop_equals_plain_torch():
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    ref, ours = copy.deepcopy(base), copy.deepcopy(base)
    x, y = torch.randn(16, 6) * 30, torch.randn(16, 3)
    opt_r, opt_o = (torch.optim.SGD(m.parameters(), lr=0.01) for m in (ref, ours))
    with GradWatch(ours, optimizer=opt_o, clip=PerTensorNorm(0.5), every=2) as watch:
        for _ in range(4):
            for model, opt in ((ref, opt_r), (ours, opt_o)):
                opt.zero_grad()
                nn.functional.mse_loss(model(x), y).backward()
                if model is ref:
                    for p in model.parameters():
                        p.grad.copy_(_keras_clipnorm(p.grad, 0.5))
                opt.step()
    assert any(r.clip_coef < 1 for r in watch.history)
    for a, b in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- AGC, AutoClip


def test_agc_matches_unitwise_formula_and_skips_output_layer():
    torch.manual_seed(1)
    weights = [torch.randn(6, 5), torch.randn(6), torch.randn(2, 6)]
    grads = [torch.randn(6, 5) * 0.5, torch.randn(6) * 0.001, torch.randn(2, 6) * 9]
    expected = []
    for w, g, out in zip(weights, grads, [False, False, True]):
        e = g.clone()
        if not out:
            rows = [(w, g)] if w.ndim == 1 else list(zip(w, g))
            for i, (wi, gi) in enumerate(rows):
                max_norm = 0.01 * max(wi.norm().item(), 1e-3)
                if gi.norm().item() > max_norm:
                    scaled = gi * (max_norm / gi.norm().item())
                    if w.ndim == 1:
                        e = scaled
                    else:
                        e[i] = scaled
        expected.append(e)
    ours = [g.clone() for g in grads]
    AGC(0.01).clip_(ours, 0.0, params=weights, is_output=[False, False, True])
    for a, e in zip(ours, expected):
        torch.testing.assert_close(a, e)
    assert torch.equal(ours[2], grads[2])  # the output layer is left alone
    both = [g.clone() for g in grads]
    AGC(0.01, skip_output=False).clip_(both, 0.0, params=weights, is_output=[False, False, True])
    assert not torch.equal(both[2], grads[2])


def test_autoclip_clips_at_numpy_percentile_of_history():
    policy = AutoClip(percentile=10)
    history = []
    for step, scale in enumerate([1.0, 2.0, 0.5, 4.0, 1.5, 100.0]):
        grads = _grads(seed=step, scale=scale)
        ref = _params_with(grads)
        total = _total(grads)
        history.append(total)
        threshold = float(np.percentile(history, 10))
        torch.nn.utils.clip_grad_norm_(ref, threshold)
        policy.clip_(grads, total, params=grads, is_output=NO)
        for a, p in zip(grads, ref):
            torch.testing.assert_close(a, p.grad)
    policy.clip_(_grads(), math.nan, params=[], is_output=[])
    assert len(policy.norms) == len(history)  # non-finite norms stay out of the history
    clone = AutoClip(percentile=10)
    clone.load_state_dict(copy.deepcopy(policy.state_dict()))
    assert list(clone.norms) == list(policy.norms)


# ----------------------------------------------------------------------------- ZClip


def _spiky_norms(n: int = 300, seed: int = 0) -> list[float]:
    """A decaying, noisy (log-normal, σ=0.3) global-norm sequence with 12 spikes from 1.3x to
    15x after warm-up; noise alone puts some steps near ZClip's z = 2.5."""
    rng = np.random.default_rng(seed)
    norms = 2.0 * np.exp(-np.arange(n) / 400) * np.exp(0.3 * rng.standard_normal(n))
    for i in rng.choice(np.arange(30, n), 12, replace=False):
        norms[i] *= rng.uniform(1.3, 15.0)
    return [float(x) for x in norms]


def _zclip_paper(norms, alpha=0.97, z_thr=2.5, warmup=25, around="new"):
    """The paper's formulas, restated: the norm each step is clipped to (its own when none).
    ``around="old"`` is the variance rule gradwatch used before (around the previous mean)."""
    out, mean, var, warm = [], None, 0.0, []
    for g in norms:
        if mean is None:
            warm.append(g)
            if len(warm) == warmup:
                mean, var = float(np.mean(warm)), float(np.var(warm))
            out.append(g)
            continue
        std = math.sqrt(var)
        z = (g - mean) / (std + 1e-6)
        kept = mean + (z_thr ** 2 / z) * std if z > z_thr else g
        out.append(kept)
        new_mean = alpha * mean + (1 - alpha) * kept
        var = alpha * var + (1 - alpha) * (kept - (new_mean if around == "new" else mean)) ** 2
        mean = new_mean
    return out


def test_zclip_follows_the_paper_and_clips_spikes():
    rng = np.random.default_rng(0)
    scales = list(1.0 + 0.05 * rng.standard_normal(40))
    scales[30] = 20.0  # a spike after warm-up
    policy = ZClip()
    kept_norms, totals = [], []
    for step, s in enumerate(scales):
        grads = _grads(seed=step, scale=float(s))
        total = _total(grads)
        totals.append(total)
        policy.clip_(grads, total, params=grads, is_output=NO)
        kept_norms.append(_total(grads))
    np.testing.assert_allclose(kept_norms, _zclip_paper(totals), rtol=1e-5)
    assert kept_norms[30] < totals[30] / 5  # the spike was clipped hard
    restored = ZClip()
    restored.load_state_dict(json.loads(json.dumps(policy.state_dict())))
    assert (restored.mean, restored.var) == (policy.mean, policy.var)


def _run_ours(norms, **options) -> list[dict]:
    """Feeds ``norms`` to gradwatch's ZClip as one float64 gradient entry each."""
    policy, out = ZClip(**options), []
    for g in norms:
        threshold = policy.threshold(g)
        grads = [torch.tensor([g], dtype=torch.float64)]
        policy.clip_(grads, g, params=grads, is_output=[False])
        out.append({"threshold": threshold, "after": grads[0].item(), "mean": policy.mean,
                    "var": policy.var if policy.mean is not None else None})
    return out


def test_zclip_matches_the_paper_on_300_spiky_steps_and_the_old_rule_does_not():
    norms = _spiky_norms()
    paper = _zclip_paper(norms)
    ours = _run_ours(norms)
    kept = [g if r["threshold"] is None else r["threshold"] for g, r in zip(norms, ours)]
    np.testing.assert_allclose(kept, paper, rtol=1e-12)
    np.testing.assert_allclose([r["after"] for r in ours], paper, rtol=1e-5)
    clipped = [r["threshold"] is not None for r in ours]
    assert clipped == [k < g for k, g in zip(paper, norms)] and sum(clipped) >= 12
    old = [k < g for k, g in zip(_zclip_paper(norms, around="old"), norms)]
    assert sum(new and not was for new, was in zip(clipped, old)) >= 3  # the old rule misses them


@pytest.fixture(scope="module")
def official_zclip():
    """The authors' package, imported without its optional Lightning callback (that import
    alone takes 10-20 s here); skips when it is not installed."""
    if importlib.util.find_spec("zclip") is None:
        pytest.skip("the official `zclip` package is not installed (pip install --no-deps zclip)")
    with pytest.MonkeyPatch.context() as patch:
        if "lightning" not in sys.modules:
            patch.setitem(sys.modules, "lightning", None)  # its callback import then fails quietly
        return importlib.import_module("zclip")


_OFFICIAL_CONFIGS = [dict(), dict(max_grad_norm=1.5), dict(mode="percentile"),
                     dict(clip_option="mean"), dict(clip_factor=0.7, z_thresh=2.0, alpha=0.9),
                     dict(skip_update_on_spike=True), dict(warmup_steps=10, eps=1e-3),
                     dict(mode="percentile", max_grad_norm=1.2, skip_update_on_spike=True)]


@pytest.mark.parametrize("config", _OFFICIAL_CONFIGS, ids=lambda c: ",".join(c) or "defaults")
def test_zclip_matches_the_official_zclip_package_step_by_step(config, official_zclip):
    """The authors' `zclip` package (pip install --no-deps zclip) on the same 300 norms:
    identical thresholds, statistics and decisions; clipped values to float64 rounding."""
    official_cfg = {"max_grad_norm": None, **config}  # gradwatch's default is no cap
    names = {"z_thresh": "z_threshold", "warmup_steps": "warmup"}
    ours = _run_ours(_spiky_norms(), **{names.get(k, k): v for k, v in official_cfg.items()})
    ref = official_zclip.ZClip(**official_cfg)
    model = nn.Linear(1, 1, bias=False).double()
    clips = 0
    for g, mine in zip(_spiky_norms(), ours):
        threshold = ref._compute_clip_val(g) if ref.initialized else None
        model.weight.grad = torch.tensor([[g]], dtype=torch.float64)
        assert ref.step(model) == g  # it measured the norm we fed it, exactly
        after = model.weight.grad.item()
        assert mine["threshold"] == threshold
        assert (mine["mean"], mine["var"]) == (ref.mean, ref.var)
        assert (mine["after"] < g) == (after < g)
        assert mine["after"] == pytest.approx(after, rel=1e-15)
        clips += after < g
    assert clips >= 5


def test_zclip_warmup_cap_nonfinite_norms_and_auto():
    policy = ZClip(warmup=3, max_grad_norm=0.5)
    for seed in range(3):  # warm-up with a cap: clip_grad_norm_(params, 0.5), bit for bit
        grads = _grads(seed, scale=2.0)
        ref = _params_with(grads)
        torch.nn.utils.clip_grad_norm_(ref, 0.5)
        policy.clip_(grads, _total(grads), params=grads, is_output=NO)
        _bits_equal(grads, ref)
    state = policy.state_dict()
    grads = _grads(9)
    grads[1][0] = math.inf
    assert policy.clip_(grads, math.inf, params=grads, is_output=NO) == 0.0
    assert grads[0].eq(0).all() and grads[1][0].isnan()  # as clip_grad_norm_ with an inf norm
    assert policy.state_dict() == state  # the statistics never see a non-finite norm
    auto = make_policy("auto")
    assert isinstance(auto, ZClip) and auto.max_grad_norm is None and auto.mode == "zscore"
    assert (auto.alpha, auto.z_threshold, auto.warmup, auto.eps) == (0.97, 2.5, 25, 1e-6)


# ----------------------------------------------------------------------------- state, errors


_POLICIES = {"global": lambda: GlobalNorm(1.0), "value": lambda: Value(0.5),
             "per-tensor": lambda: PerTensorNorm(1.0), "agc": lambda: AGC(0.05),
             "autoclip": lambda: AutoClip(10, history=8), "zclip": lambda: ZClip(warmup=5),
             "zclip-percentile-cap": lambda: ZClip(warmup=5, mode="percentile", max_grad_norm=3.0)}


@pytest.mark.parametrize("make", _POLICIES.values(), ids=_POLICIES.keys())
def test_every_policy_state_dict_round_trip_continues_identically(make):
    """Save at step 12 (through JSON), load into a fresh policy: the next steps are identical."""
    scales = [1.0 + 0.1 * math.sin(i) for i in range(24)]
    scales[15] = scales[20] = 30.0
    weights = [torch.ones_like(g) for g in _grads()]
    first, second = make(), None
    outputs: dict[str, list] = {"first": [], "second": []}
    for step, scale in enumerate(scales):
        if step == 12:
            second = make()
            second.load_state_dict(json.loads(json.dumps(first.state_dict())))
        for name, policy in (("first", first), ("second", second)):
            if policy is None:
                continue
            grads = _grads(step, scale)
            coef = policy.clip_(grads, _total(grads), params=weights, is_output=NO)
            outputs[name].append((coef, [g.tolist() for g in grads]))
    assert outputs["second"] == outputs["first"][12:]
    assert isinstance(first, ClipPolicy) and repr(first).startswith(type(first).__name__)


def test_make_policy_and_errors():
    assert make_policy(None) is None
    assert isinstance(make_policy(1.0), GlobalNorm)
    policy = PerTensorNorm(2.0)
    assert make_policy(policy) is policy
    assert GlobalNorm(np.float32(0.5)).max_norm == 0.5 and Value(np.int64(2)).limit == 2.0
    with pytest.raises(ValueError, match="auto"):
        make_policy("global")
    with pytest.raises(TypeError, match="clip"):
        make_policy([1.0])
    for bad in (0, -1.0, math.inf, math.nan, "1", True):
        for cls in (GlobalNorm, PerTensorNorm):
            with pytest.raises(ValueError, match="Expected `max_norm` to be a finite number > 0"):
                cls(bad)
    with pytest.raises(ValueError, match="limit"):
        Value(-1)
    with pytest.raises(ValueError, match="percentile"):
        AutoClip(percentile=0)
    with pytest.raises(ValueError, match="clipping"):
        AGC(clipping=-0.1)
    for kwargs, name in [(dict(alpha=1.5), "alpha"), (dict(warmup=0), "warmup"),
                         (dict(z_threshold=-1), "z_threshold"), (dict(eps=0.0), "eps"),
                         (dict(max_grad_norm=0), "max_grad_norm"), (dict(mode="zcore"), "mode"),
                         (dict(clip_option="median"), "clip_option"),
                         (dict(clip_factor=math.nan), "clip_factor")]:
        with pytest.raises(ValueError, match=f"`{name}`"):
            ZClip(**kwargs)
    with pytest.raises(ValueError, match="'percentile'"):
        ZClip(mode="zcore")
    with pytest.raises(ValueError, match="missing"):
        ZClip().load_state_dict({"mean": 1.0})


# ----------------------------------------------------------------------------- properties


@st.composite
def _grad_lists(draw, dtypes=(torch.float32, torch.float64)):
    """1-4 random tensors, each of its own dtype and magnitude from 1e-35 to 1e35 (or zero)."""
    grads = []
    for _ in range(draw(st.integers(1, 4))):
        shape = tuple(draw(st.lists(st.integers(1, 6), max_size=3)))
        scale = 0.0 if draw(st.integers(0, 7)) == 0 else 10.0 ** draw(st.floats(-35, 35))
        gen = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 31 - 1)))
        grads.append((torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(
            draw(st.sampled_from(dtypes))))
    return grads


_MAX_NORM = st.floats(-3, 3).map(lambda e: 10.0 ** e)


@PROPERTY
@given(_grad_lists((torch.float32, torch.float64, torch.bfloat16)), _MAX_NORM, st.booleans())
def test_property_global_norm_is_clip_grad_norm_bit_for_bit(grads, max_norm, as_tensor):
    ref = _params_with(grads)
    total = torch.nn.utils.clip_grad_norm_(ref, max_norm)
    ours = [g.clone() for g in grads]
    GlobalNorm(max_norm).clip_(ours, total if as_tensor else total.item(), params=ours,
                               is_output=[False] * len(ours))
    _bits_equal(ours, ref)


@PROPERTY
@given(_grad_lists(), _MAX_NORM)
def test_property_global_norm_with_the_exact_total_never_exceeds_max_norm(grads, max_norm):
    """With the exact (float64) total that gradwatch measures where fp32 squares over- or
    underflow, the clipped global norm is at most max_norm, for every magnitude."""
    exact = torch.linalg.vector_norm(torch.cat([g.double().flatten() for g in grads])).item()
    ours = [g.clone() for g in grads]
    coef = GlobalNorm(max_norm).clip_(ours, exact, params=ours, is_output=[False] * len(ours))
    after = torch.linalg.vector_norm(torch.cat([g.double().flatten() for g in ours])).item()
    assert math.isfinite(after) and after <= max_norm * (1 + 1e-6)
    assert coef == 1.0 or after == pytest.approx(max_norm * exact / (exact + 1e-6), rel=1e-6)


@PROPERTY
@given(_grad_lists((torch.float32, torch.float64, torch.bfloat16)), st.floats(-30, 30))
def test_property_value_is_clip_grad_value(grads, exponent):
    ref = _params_with(grads)
    torch.nn.utils.clip_grad_value_(ref, 10.0 ** exponent)
    ours = [g.clone() for g in grads]
    Value(10.0 ** exponent).clip_(ours, 0.0, params=ours, is_output=[False] * len(ours))
    _bits_equal(ours, ref)


@PROPERTY
@given(_grad_lists((torch.float32, torch.float64, torch.bfloat16)), _MAX_NORM)
def test_property_per_tensor_norm_is_keras_clipnorm(grads, max_norm):
    ours = [g.clone() for g in grads]
    PerTensorNorm(max_norm).clip_(ours, 0.0, params=ours, is_output=[False] * len(ours))
    for a, g in zip(ours, grads):
        torch.testing.assert_close(a, _keras_clipnorm(g, max_norm), rtol=_RTOL[g.dtype], atol=0)
        if torch.linalg.vector_norm(g.double()) <= max_norm:
            assert torch.equal(a, g)


@pytest.mark.parametrize("clip", [0.05, "auto"])
def test_clipping_is_no_graph_operation_under_create_graph(clip):
    """Gradients made with ``backward(create_graph=True)`` (Hessian-vector-product optimizers,
    Adahessian) carry a graph. ``clip_grad_norm_`` scales them outside it; so must gradwatch,
    or a later ``autograd.grad`` through ``p.grad`` differentiates the clip factor too."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    watch = GradWatch(model, optimizer=opt, clip=clip)
    x = torch.randn(16, 4)
    for _ in range(3):
        opt.zero_grad()
        model(x).square().sum().backward(create_graph=True)
        before = [p.grad.grad_fn for p in model.parameters()]
        opt.step()
        after = [p.grad.grad_fn for p in model.parameters()]
        assert [type(f).__name__ for f in after] == [type(f).__name__ for f in before]
    assert watch.history[-1].clip_coef < 1.0 or clip == "auto"
    watch.close()
