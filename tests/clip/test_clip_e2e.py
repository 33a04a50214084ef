"""Clipping through `GradWatch` (``clip=`` policy, by hand and with ``optimizer=``) against plain
torch and hand formulas: global norm, AGC and its output layer, AutoClip, Value, per-tensor."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from conftest import batch, loss_of, mlp, regression_batch
from gradwatch import GradWatch
from gradwatch.clip import AGC, AutoClip, GlobalNorm, PerTensorNorm, Value, ZClip
from reference import AttentionNet, agc_, keras_clipnorm, train_step


def test_global_norm_through_watch_equals_clip_grad_norm_on_every_step():
    plain = mlp()
    watched = copy.deepcopy(plain)
    opt_a = torch.optim.SGD(plain.parameters(), lr=0.5)
    opt_b = torch.optim.SGD(watched.parameters(), lr=0.5)
    with GradWatch(watched, optimizer=opt_b, clip=0.05, every=2) as watch:
        for step in range(6):
            x, y = batch(seed=step)
            ref_total = train_step(plain, opt_a, lambda m: loss_of(m, x, y), max_norm=0.05)
            train_step(watched, opt_b, lambda m: loss_of(m, x, y))
            if step % 2 == 0:
                rec = watch.history[-1]
                assert rec.step == step
                assert rec.total_norm == ref_total.item()
                assert rec.clip_coef == pytest.approx(0.05 / (ref_total.item() + 1e-6), rel=1e-6)
                assert rec.clipped
    for a, b in zip(plain.parameters(), watched.parameters()):
        assert torch.equal(a, b)
    assert len(watch.history) == 3


# ----------------------------------------------------------------------------- AGC


class _HeadFirst(nn.Module):
    """The head is defined first and runs last; a conv unit is an output channel."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(8, 3)
        self.conv = nn.Conv2d(2, 4, 3)
        self.fc = nn.Linear(64, 8)

    def forward(self, x):
        return self.head(torch.tanh(self.fc(torch.tanh(self.conv(x)).flatten(1))))


_AGC_MODELS = {  # model, input, head, clipping (some units clipped, some kept)
    "sequential": (lambda: mlp(), lambda: batch()[0] * 4, "4", 0.05),
    "attention": (AttentionNet, lambda: torch.randn(2, 5, 8), "head", 0.1),
    "head-first": (_HeadFirst, lambda: torch.randn(2, 2, 6, 6) * 4, "head", 0.2)}


def _check_agc(name: str, skip_output: bool, steps: int = 3) -> None:
    """Every step: the head untouched (skip_output) and every other gradient as Brock et al.'s
    unit-wise formula by hand in float64; both branches (clipped and kept units) occur."""
    make, data, head, clipping = _AGC_MODELS[name]
    torch.manual_seed(0)
    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    watch = GradWatch(model, clip=AGC(clipping, skip_output=skip_output))
    units = {"clipped": 0, "kept": 0}
    for step in range(steps):
        opt.zero_grad()
        model(data()).pow(2).sum().backward()
        raw = {n: p.grad.clone() for n, p in model.named_parameters()}
        watch.step()
        assert watch.head == head
        for n, p in model.named_parameters():
            if skip_output and n.startswith(head + "."):
                assert torch.equal(p.grad, raw[n]), f"step {step}: head {n} was clipped"
                continue
            expected = agc_(raw[n], p.detach(), clipping)
            torch.testing.assert_close(p.grad.double(), expected, rtol=2e-6, atol=0,
                                       msg=lambda m: f"step {step}, {n}: {m}")
            rows = expected.reshape(len(expected), -1) if expected.ndim > 1 else expected[None]
            before = raw[n].double().reshape(rows.shape)
            for r, b in zip(rows, before):
                units["kept" if torch.equal(r, b) else "clipped"] += 1
        opt.step()
    assert units["clipped"] > 0 and units["kept"] > 0, units
    watch.close()


@pytest.mark.parametrize("skip_output", [True, False])
@pytest.mark.parametrize("name", ["sequential", "attention"])
def test_agc_is_the_unitwise_formula_and_skips_the_head(name, skip_output):
    """attention: out_proj is never called, yet it is clipped; the head is the Linear after."""
    _check_agc(name, skip_output)


def test_agc_spares_a_head_defined_first_from_the_first_step():
    """The forward order (and so the head) is learnt before the first step is clipped."""
    _check_agc("head-first", skip_output=True)


def test_agc_head_defined_first_is_right_once_the_order_is_known():
    """The same model from its second step on (documents the scope of the bug above)."""
    torch.manual_seed(0)
    model = _HeadFirst()
    with GradWatch(model, clip=AGC(0.05)) as watch:
        for step in range(3):
            model.zero_grad()
            model(torch.randn(2, 2, 6, 6) * 4).pow(2).sum().backward()
            raw = {n: p.grad.clone() for n, p in model.named_parameters()}
            watch.step()
            assert watch.head == "head"
            if step == 0:
                continue
            for n, p in model.named_parameters():
                expected = raw[n].double() if n.startswith("head.") else agc_(raw[n], p, 0.05)
                torch.testing.assert_close(p.grad.double(), expected, rtol=2e-6, atol=0)


def test_agc_with_optimizer_clips_before_the_update_as_the_hand_formula():
    """optimizer=: the gradients the optimizer steps with are the formula applied to the raw
    gradients and the weights before the step (read by a step pre-hook registered first)."""
    torch.manual_seed(0)
    model = AttentionNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    raw: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    first = opt.register_step_pre_hook(lambda *_: raw.update(
        {n: (p.grad.clone(), p.detach().clone()) for n, p in model.named_parameters()}))
    with GradWatch(model, optimizer=opt, clip=AGC(0.1)) as watch:
        for step in range(3):
            x = torch.randn(2, 5, 8)
            train_step(model, opt, lambda m: m(x).pow(2).sum())
            assert watch.head == "head"
            for n, p in model.named_parameters():
                g, w = raw[n]
                expected = g.double() if n.startswith("head.") else agc_(g, w, 0.1)
                torch.testing.assert_close(p.grad.double(), expected, rtol=2e-6, atol=0)
                assert torch.equal(p.detach(), w.add(p.grad, alpha=-0.1))  # SGD stepped with them
    first.remove()


# ----------------------------------------------------------------------------- AutoClip


@pytest.mark.parametrize("path", ["manual", "optimizer"])
def test_autoclip_clips_at_the_percentile_of_the_norm_history(path):
    """20 steps with a varying loss scale: the threshold is numpy's percentile of every global
    norm so far, the current one included, and the gradients equal clip_grad_norm_'s."""
    torch.manual_seed(0)
    model = mlp()
    twin = copy.deepcopy(model)
    opt, opt_twin = (torch.optim.SGD(m.parameters(), lr=0.05) for m in (model, twin))
    watch = GradWatch(model, clip=AutoClip(percentile=25),
                      **({"optimizer": opt} if path == "optimizer" else {}))
    history: list[float] = []
    clipped = 0
    for step in range(20):
        x, y = batch(seed=step)
        scale = 1.0 + 0.5 * np.sin(step) + (8.0 if step in (7, 15) else 0.0)
        opt.zero_grad()
        (scale * loss_of(model, x, y)).backward()
        rec = watch.step() if path == "manual" else None
        opt.step()
        rec = rec or watch.history[-1]
        opt_twin.zero_grad()
        (scale * loss_of(twin, x, y)).backward()
        total = torch.nn.utils.get_total_norm([p.grad for p in twin.parameters()]).item()
        history.append(total)
        threshold = float(np.percentile(history, 25))
        torch.nn.utils.clip_grad_norm_(twin.parameters(), threshold)
        grads = {n: p.grad for n, p in twin.named_parameters()}
        opt_twin.step()
        assert rec.step == step and rec.total_norm == total
        assert rec.clip_coef == pytest.approx(min(1.0, threshold / (total + 1e-6)), rel=1e-6)
        clipped += rec.clipped
        for n, p in model.named_parameters():
            assert torch.equal(p.grad, grads[n]), (step, n)
            assert torch.equal(p, twin.get_parameter(n)), (step, n)
    assert list(watch.policy.norms) == history
    assert 0 < clipped < 20
    watch.close()


# ----------------------------------------------------------------------------- Value, per-tensor


@pytest.mark.parametrize("path", ["manual", "optimizer"])
def test_value_equals_clip_grad_value_bit_for_bit(path):
    model = mlp()
    twin = copy.deepcopy(model)
    opt, opt_twin = (torch.optim.SGD(m.parameters(), lr=0.1) for m in (model, twin))
    watch = GradWatch(model, clip=Value(0.05), **({"optimizer": opt} if path == "optimizer"
                                                  else {}))
    for step in range(4):
        x, y = batch(seed=step)
        opt.zero_grad()
        (10 * loss_of(model, x, y)).backward()
        if path == "manual":
            watch.step()
        opt.step()
        train_step(twin, opt_twin, lambda m: 10 * loss_of(m, x, y),
                   clip=lambda ps: torch.nn.utils.clip_grad_value_(ps, 0.05))
        rec = watch.history[-1]
        after = torch.nn.utils.get_total_norm([p.grad for p in twin.parameters()]).item()
        assert rec.clip_coef == pytest.approx(after / rec.total_norm, rel=1e-6)
        assert rec.clip_coef < 1
        for p, q in zip(model.parameters(), twin.parameters()):
            assert p.grad.abs().max() <= 0.05
            assert torch.equal(p.grad, q.grad) and torch.equal(p, q)
    watch.close()


def test_per_tensor_norm_equals_keras_clipnorm_through_the_watch():
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with GradWatch(model, optimizer=opt, clip=PerTensorNorm(0.3)):
        kept = 0
        for step in range(3):
            x, y = batch(seed=step)
            opt.zero_grad()
            loss_of(model, x, y).backward()
            raw = [p.grad.clone() for p in model.parameters()]
            opt.step()
            for g, p in zip(raw, model.parameters()):
                torch.testing.assert_close(p.grad.double(), keras_clipnorm(g, 0.3),
                                           rtol=2e-7, atol=0)
                if g.norm() <= 0.3:
                    kept += 1
                    assert torch.equal(p.grad, g)
        assert kept > 0


# ----------------------------------------------------------------------------- recorded or not


_POLICIES = {"global": lambda: GlobalNorm(0.3), "value": lambda: Value(0.02),
             "per-tensor": lambda: PerTensorNorm(0.2), "agc": lambda: AGC(0.02),
             "autoclip": lambda: AutoClip(20), "zclip": lambda: ZClip(warmup=2)}


@pytest.mark.parametrize("path", ["manual", "optimizer"])
@pytest.mark.parametrize("make", _POLICIES.values(), ids=_POLICIES.keys())
def test_clipping_is_the_same_on_recorded_and_unrecorded_steps(make, path):
    """every=3 against every=1 on twin models: identical gradients and weights at every step."""
    models = [mlp(), mlp()]
    models[1].load_state_dict(models[0].state_dict())
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in models]
    watches = [GradWatch(m, clip=make(), every=every,
                         **({"optimizer": o} if path == "optimizer" else {}))
               for m, o, every in zip(models, opts, (1, 3))]
    for step in range(7):
        x, y = regression_batch(step, features=6, targets=3)
        scale = 3.0 if step == 4 else 1.0
        for model, opt, watch in zip(models, opts, watches):
            opt.zero_grad()
            (scale * nn.functional.mse_loss(model(x)[:, :3], y)).backward()
            if path == "manual":
                watch.step()
            opt.step()
        for p, q in zip(*(m.parameters() for m in models)):
            assert torch.equal(p.grad, q.grad), step
            assert torch.equal(p, q), step
    assert [r.step for r in watches[1].history] == [0, 3, 6]
    assert any(r.clipped for r in watches[0].history)
    for w in watches:
        w.close()
