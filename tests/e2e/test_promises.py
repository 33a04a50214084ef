"""The README's promises, each tested as stated, with property-based inputs where they apply:
monitor-only training is bit-identical; "skip" leaves parameters and optimizer state untouched
for every optimizer in torch.optim; norms are exact for entries from 1e-35 to 1e35; nothing is
lost on kill -9 and resume; hooks are gone on close, on an exception and on garbage collection."""

from __future__ import annotations

import copy
import gc
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from conftest import batch, loss_of, mlp
from gradwatch import GradWatch
from gradwatch.io.loggers import read_runs

SETTINGS = dict(max_examples=25, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])

OPTIMIZERS = {  # every optimizer class torch.optim exports that steps without a closure
    "SGD": dict(lr=0.1, momentum=0.9), "Adam": {}, "AdamW": {}, "Adamax": {}, "Adagrad": {},
    "Adadelta": {}, "RMSprop": {}, "Rprop": {}, "NAdam": {}, "RAdam": {}, "ASGD": {},
    "Adafactor": {}, "Muon": {},  # Muon steps 2-d parameters only: it gets the weights
}


def _optimizer_classes() -> list[str]:
    names = [n for n in OPTIMIZERS if hasattr(torch.optim, n) and OPTIMIZERS[n] is not None]
    unknown = {n for n in dir(torch.optim) if isinstance(getattr(torch.optim, n), type)
               and issubclass(getattr(torch.optim, n), torch.optim.Optimizer)
               and n not in OPTIMIZERS and n not in ("Optimizer", "LBFGS", "SparseAdam")}
    assert not unknown, f"new optimizers in torch.optim to cover: {sorted(unknown)}"
    return names


def _state(opt: torch.optim.Optimizer) -> list:
    return [{k: (v.clone() if torch.is_tensor(v) else copy.deepcopy(v)) for k, v in s.items()}
            for s in opt.state.values()]


@pytest.mark.parametrize("name", _optimizer_classes())
def test_skip_leaves_parameters_and_optimizer_state_untouched(name):
    model = mlp()
    params = [p for p in model.parameters() if p.ndim == 2 or name != "Muon"]
    opt = getattr(torch.optim, name)(params, **OPTIMIZERS[name])
    with GradWatch(model, optimizer=opt, on_nonfinite="skip") as watch:
        for step in range(3):
            opt.zero_grad()
            loss_of(model, *batch(seed=step)).backward()
            opt.step()  # healthy steps build up optimizer state first
        opt.zero_grad()
        loss_of(model, *batch(seed=9)).backward()
        model[2].weight.grad[1, 1] = math.nan
        params = [p.detach().clone() for p in model.parameters()]
        state = _state(opt)
        with pytest.warns(RuntimeWarning, match="skipped"):
            opt.step()
        for p, q in zip(model.parameters(), params):
            assert torch.equal(p, q)
        after = _state(opt)
        assert len(after) == len(state)
        for a, b in zip(after, state):
            assert a.keys() == b.keys()
            for k in a:
                assert torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k]
        rec = watch.history[-1]
        assert rec.skipped and rec.first_nonfinite == "2"
        assert math.isnan(model[2].weight.grad[1, 1])  # the user's gradient is left as it was
        opt.zero_grad()
        loss_of(model, *batch(seed=10)).backward()
        opt.step()  # and the next healthy step goes through
        assert not watch.history[-1].skipped


@settings(**SETTINGS)
@given(widths=st.lists(st.integers(1, 9), min_size=2, max_size=5),
       optimizer=st.sampled_from(["SGD", "Adam", "RMSprop"]),
       activations=st.booleans(), every=st.integers(1, 3), seed=st.integers(0, 2 ** 16))
def test_monitor_only_training_is_bit_identical(widths, optimizer, activations, every, seed):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Linear(a, b), nn.Tanh()]
    model = nn.Sequential(*layers[:-1])
    twin = copy.deepcopy(model)
    opts = [getattr(torch.optim, optimizer)(m.parameters(), lr=0.05) for m in (model, twin)]
    x = torch.randn(4, widths[0])
    with GradWatch(model, optimizer=opts[0], activations=activations, every=every):
        for _ in range(4):
            for m, opt in zip((model, twin), opts):
                opt.zero_grad()
                m(x).pow(2).mean().backward()
                opt.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


@settings(**SETTINGS)
@given(exponents=st.lists(st.floats(-35, 35), min_size=1, max_size=6),
       sizes=st.lists(st.integers(1, 40), min_size=6, max_size=6),
       dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2 ** 16))
def test_norms_are_exact_for_entries_from_1e_minus35_to_1e35(exponents, sizes, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    model = nn.ModuleList(nn.Linear(n, 1, bias=False) for n in sizes[:len(exponents)]).to(dtype)
    with GradWatch(model, activations=False) as watch:
        for layer, e in zip(model, exponents):
            g = torch.randn(layer.weight.shape, generator=gen, dtype=torch.float64) * 10.0 ** e
            layer.weight.grad = g.to(dtype)
        rec = watch.step()
    exact = [torch.linalg.vector_norm(layer.weight.grad.double()).item() for layer in model]
    for k, layer_norm in enumerate(exact):
        assert rec.layers[str(k)].norm == pytest.approx(layer_norm, rel=1e-6)
    assert rec.total_norm == pytest.approx(math.hypot(*exact), rel=1e-6)
    assert math.isfinite(rec.total_norm) and rec.first_nonfinite is None


_TRAINER = textwrap.dedent("""
    import sys, torch, gradwatch
    from torch import nn
    log, ckpt, start, stop = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    watch = gradwatch.GradWatch(model, optimizer=opt, loggers=[gradwatch.JsonlLogger(log)])
    if start:
        saved = torch.load(ckpt, weights_only=False)
        model.load_state_dict(saved["model"]); opt.load_state_dict(saved["opt"])
        watch.load_state_dict(saved["watch"])
    for step in range(start, stop):
        g = torch.Generator().manual_seed(step)
        x, y = torch.randn(5, 6, generator=g), torch.randint(0, 3, (5,), generator=g)
        opt.zero_grad(); nn.functional.cross_entropy(model(x), y).backward(); opt.step()
        if step == 4:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                        "watch": watch.state_dict()}, ckpt)
            print("checkpoint", flush=True)
        if step == 7:
            print("ready", flush=True)
            sys.stdin.readline()  # killed here, mid-run, with records written
""")


def test_nothing_lost_on_kill_minus_9_and_resume(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(_TRAINER)
    log, ckpt = tmp_path / "run.jsonl", tmp_path / "ckpt.pt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, str(script), str(log), str(ckpt), "0", "20"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        for line in proc.stdout:
            if line.strip() == "ready":
                break
        with open(log, "a", encoding="utf-8") as f:  # as if killed in the middle of a write
            f.write('{"step": 8, "total_no')
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    subprocess.run([sys.executable, str(script), str(log), str(ckpt), "5", "12"], check=True,
                   env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, timeout=120)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        runs = read_runs(log)
    assert len(runs) == 1  # one run, resumed: steps 5..7 re-done after the checkpoint
    assert [r.step for r in runs[0].records] == list(range(12))
    # the resumed run's records equal an uninterrupted run's
    clean = tmp_path / "clean.jsonl"
    subprocess.run([sys.executable, str(script), str(clean), str(tmp_path / "c.pt"), "0", "7"],
                   check=True, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   timeout=120)
    uninterrupted = read_runs(clean)[0].records
    for a, b in zip(runs[0].records[:7], uninterrupted):
        assert json.dumps(a.to_dict()) == json.dumps(b.to_dict())


def _hooked(model: nn.Module, opt: torch.optim.Optimizer) -> bool:
    return (any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
            or bool(opt._optimizer_step_pre_hooks or opt._optimizer_step_post_hooks)
            or any(getattr(p, "_post_accumulate_grad_hooks", None) for p in model.parameters()))


@pytest.mark.parametrize("how", ["close", "exception", "gc"])
def test_hooks_gone_on_close_exception_and_gc(how):
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.LSTM(4, 4, batch_first=True))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    if how == "close":
        watch = GradWatch(model, optimizer=opt)
        assert _hooked(model, opt)
        watch.close()
        watch.close()  # twice is fine
    elif how == "exception":
        with pytest.raises(KeyError):
            with GradWatch(model, optimizer=opt):
                assert _hooked(model, opt)
                raise KeyError("user code failed")
    else:
        watch = GradWatch(model, optimizer=opt)
        assert _hooked(model, opt)
        del watch
        gc.collect()
    assert not _hooked(model, opt)
