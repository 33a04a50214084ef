"""AMP (GradScaler, fp16/bf16 autocast on CPU), gradient accumulation and activation
checkpointing, each checked against a plain-torch reference run."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
import torch.utils.checkpoint as ckpt
from torch import nn

from conftest import regression_batch, tanh_net
from gradwatch import GradWatch
from reference import norm, output_grads, param_grad_norms

SCALE = 2.0 ** 10  # small enough that fp16 autocast never overflows on these models


def _net() -> nn.Sequential:
    return tanh_net(6, 16, 16, 3)


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
          dtype: torch.dtype | None = torch.float16) -> torch.Tensor:
    with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        return nn.functional.mse_loss(model(x).float(), y)


def _output_grads(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, scale: float = 1.0,
                  dtype: torch.dtype | None = torch.float16,
                  scaler: torch.amp.GradScaler | None = None) -> dict[str, torch.Tensor]:
    """Plain-torch gradient w.r.t. each Linear's output (loss times ``scale``, or scaled by
    ``scaler``), via `reference.output_grads`."""
    def backward() -> None:
        loss = _loss(model, x, y, dtype)
        (scaler.scale(loss) if scaler is not None else loss * scale).backward()

    return {name: g for name, (g,) in output_grads(model, backward).items()}


# ----------------------------------------------------------------------------- AMP


def test_manual_step_on_scaled_grads_reports_unscaled_norms():
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=SCALE)
    x, y = regression_batch()
    watch = GradWatch(model, scaler=scaler)
    scaler.scale(_loss(model, x, y)).backward()
    rec = watch.step()  # grads are still scaled here
    expected = param_grad_norms(model, divide=SCALE)
    for name, value in expected.items():
        assert rec.layers[name].norm == pytest.approx(value, rel=1e-6)
    assert rec.total_norm == pytest.approx(math.hypot(*expected.values()), rel=1e-6)
    ref = _output_grads(_net(), x, y, scale=SCALE)
    for name, g in ref.items():
        assert rec.layers[name].act_norm == pytest.approx(norm([g]) / SCALE, rel=1e-5)
    assert not rec.amp_overflow and rec.flagged == ()
    scaler.step(opt)
    scaler.update()


def test_manual_step_after_unscale_clips_unscaled_grads_once():
    model, twin = _net(), _net()
    opt, opt_twin = (torch.optim.SGD(m.parameters(), lr=0.1) for m in (model, twin))
    scaler, scaler_twin = (torch.amp.GradScaler("cpu", init_scale=SCALE) for _ in range(2))
    x, y = regression_batch()
    watch = GradWatch(model, scaler=scaler, clip=0.1)
    scaler.scale(_loss(model, x, y)).backward()
    scaler.unscale_(opt)
    rec = watch.step()  # grads already unscaled: must not be divided again
    scaler_twin.scale(_loss(twin, x, y)).backward()
    scaler_twin.unscale_(opt_twin)
    expected = param_grad_norms(twin)
    total = torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.1)
    assert rec.total_norm == pytest.approx(total.item(), rel=1e-6)
    for name, value in expected.items():
        assert rec.layers[name].norm == pytest.approx(value, rel=1e-6)
    assert rec.clip_coef < 1
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=0)


def test_manual_step_cannot_clip_scaled_grads_without_the_optimizer():
    model = _net()
    scaler = torch.amp.GradScaler("cpu", init_scale=SCALE)
    watch = GradWatch(model, scaler=scaler, clip=1.0)
    scaler.scale(_loss(model, *regression_batch())).backward()
    with pytest.raises(RuntimeError, match="unscale_"):
        watch.step()


def test_optimizer_path_inside_scaler_step_is_unscaled_and_clipped_like_torch():
    model, twin = _net(), _net()
    opt, opt_twin = (torch.optim.SGD(m.parameters(), lr=0.1) for m in (model, twin))
    scaler, scaler_twin = (torch.amp.GradScaler("cpu", init_scale=SCALE) for _ in range(2))
    watch = GradWatch(model, optimizer=opt, scaler=scaler, clip=0.1)
    for step in range(3):
        x, y = regression_batch(step)
        opt.zero_grad()
        scaler.scale(_loss(model, x, y)).backward()
        scaler.step(opt)  # unscale_ then optimizer.step(): gradwatch measures in between
        scaler.update()
        opt_twin.zero_grad()
        acts = _output_grads(twin, x, y, scaler=scaler_twin)
        scaler_twin.unscale_(opt_twin)
        expected = param_grad_norms(twin)
        total = torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.1)
        scaler_twin.step(opt_twin)
        scaler_twin.update()
        rec = watch.history[-1]
        assert rec.step == step
        assert rec.total_norm == pytest.approx(total.item(), rel=1e-6)
        for name, value in expected.items():
            assert rec.layers[name].norm == pytest.approx(value, rel=1e-6)
            # output gradients carry the loss scale even after unscale_: divided exactly once
            assert rec.layers[name].act_norm == pytest.approx(
                norm([acts[name]]) / SCALE, rel=1e-5)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def _overflowing_run(optimizer_path: bool, steps: int = 3):
    """fp16 autocast with a loss scale of 2**24: every backward overflows fp16."""
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 24)
    kw = dict(optimizer=opt) if optimizer_path else {}
    before = copy.deepcopy(model.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no "non-finite gradient" warning
        with GradWatch(model, scaler=scaler, **kw) as watch:
            for step in range(steps):
                opt.zero_grad()
                scaler.scale(_loss(model, *regression_batch(step))).backward()
                if not optimizer_path:
                    watch.step()
                scaler.step(opt)
                scaler.update()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])  # the scaler skipped every step
    return watch


@pytest.mark.parametrize("optimizer_path", [False, True], ids=["manual", "optimizer"])
def test_overflow_step_is_reported_as_amp_overflow_not_as_a_faulty_layer(optimizer_path):
    watch = _overflowing_run(optimizer_path)
    records = watch.history
    assert [r.step for r in records] == [0, 1, 2]  # skipped steps are counted and recorded
    assert watch.step_count == 3
    for rec in records:
        assert rec.amp_overflow
        assert not math.isfinite(rec.total_norm)
        assert rec.flagged == () and rec.first_nonfinite is None and not rec.skipped
    assert "AMP overflows 3" in watch.summary()


def test_overflow_then_recovery_in_optimizer_path():
    """One overflow (scale 2**24) then healthy steps once the scaler has backed off: the
    overflow is reported one step late, and its inf output gradients do not leak into the next
    record's act_norm."""
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 24, backoff_factor=2.0 ** -14)
    with GradWatch(model, optimizer=opt, scaler=scaler) as watch:
        for step in range(3):
            opt.zero_grad()
            scaler.scale(_loss(model, *regression_batch(step))).backward()
            scaler.step(opt)
            scaler.update()
    flags = [r.amp_overflow for r in watch.history]
    assert flags == [True, False, False]
    for rec in watch.history[1:]:
        assert math.isfinite(rec.total_norm)
        assert all(math.isfinite(s.act_norm) for s in rec.layers.values())


@pytest.mark.parametrize("where", ["autocast", "bf16-model"])
def test_bf16_norms_agree_with_float64_reference(where):
    """bf16 gradients are reduced in fp32: within 1e-3 of a float64 norm of the same tensors,
    on layers wide enough (512 x 512) that a bf16 accumulation would be far off."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 512), nn.Tanh(), nn.Linear(512, 512), nn.Tanh(),
                          nn.Linear(512, 4))
    x, y = torch.randn(32, 64), torch.randn(32, 4)
    if where == "bf16-model":
        model, x = model.to(torch.bfloat16), x.to(torch.bfloat16)
    watch = GradWatch(model)

    def backward() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=where == "autocast"):
            loss = nn.functional.mse_loss(model(x).float(), y)
        loss.backward()

    outs = output_grads(model, backward)
    rec = watch.step()
    if where == "bf16-model":
        assert all(p.grad.dtype == torch.bfloat16 for p in model.parameters())
    for name, value in param_grad_norms(model).items():
        assert rec.layers[name].norm == pytest.approx(value, rel=1e-3)
        assert rec.layers[name].act_norm == pytest.approx(norm(outs[name]), rel=1e-3)


# ----------------------------------------------------------------------------- accumulation


def test_accumulation_gives_one_record_of_the_accumulated_gradient():
    """N micro-batches, one step: one record; parameter norms are those of the summed gradient;
    act_norm is the L2 norm of the concatenation of every micro-batch's output gradient,
    sqrt(sum_k ||g_k||^2) (documented in LayerStat.act_norm and docs/distributed.md)."""
    n_micro = 3
    model, twin = _net(), _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with GradWatch(model, optimizer=opt) as watch:
        opt.zero_grad()
        sq: dict[str, float] = {}
        for k in range(n_micro):
            x, y = regression_batch(k)
            (_loss(model, x, y, dtype=None) / n_micro).backward()
            for name, g in _output_grads(twin, x, y, scale=1 / n_micro, dtype=None).items():
                sq[name] = sq.get(name, 0.0) + norm([g]) ** 2
        opt.step()
    (rec,) = watch.history
    for name, value in param_grad_norms(twin).items():  # twin accumulated the same micro-batches
        assert rec.layers[name].norm == pytest.approx(value, rel=1e-6)
        assert rec.layers[name].act_norm == pytest.approx(math.sqrt(sq[name]), rel=1e-6)


# ----------------------------------------------------------------------------- checkpointing


class _Blocks(nn.Module):
    def __init__(self, mode: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.mode = mode
        self.stem = nn.Linear(6, 16)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 16)) for _ in range(2))
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = self.stem(x)
        for block in self.blocks:
            if self.mode == "none":
                h = block(h)
            else:
                h = ckpt.checkpoint(block, h, use_reentrant=self.mode == "reentrant")
            h = torch.relu(h)
        return self.head(h)


@pytest.mark.parametrize("mode", ["reentrant", "non-reentrant"])
def test_activation_checkpointing_counts_nothing_twice(mode):
    records = {}
    for m in ("none", mode):
        model = _Blocks(m)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with GradWatch(model, optimizer=opt) as watch:
            for step in range(2):
                opt.zero_grad()
                x, y = regression_batch(step)
                nn.functional.mse_loss(model(x), y).backward()
                opt.step()
        records[m] = watch.history
        # recomputed forwards (inside the backward) neither move the head nor make a layer
        # look run twice (a layer shared across depth, left out of the depth trend)
        assert watch.head == "head" and not watch._watched.forward.repeated
    for plain, checked in zip(records["none"], records[mode]):
        assert list(checked.layers) == list(plain.layers)
        assert checked.total_norm == pytest.approx(plain.total_norm, rel=1e-6)
        for name, s in plain.layers.items():
            assert s.act_norm is not None and checked.layers[name].act_norm is not None
            assert checked.layers[name].norm == pytest.approx(s.norm, rel=1e-6)
            # recomputation re-runs forward hooks: a double count would show as sqrt(2)x
            assert checked.layers[name].act_norm == pytest.approx(s.act_norm, rel=1e-6)


def _amp_run(init_scale: float, backoff: float = 0.5, steps: int = 30):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, backoff_factor=backoff)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(64, 10, generator=g)
    skipped = []
    with GradWatch(model, optimizer=opt, scaler=scaler) as watch:
        for i in range(steps):
            x = torch.randn(128, 64, generator=g)
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16):
                out = model(x)
            loss = nn.functional.cross_entropy(out.float(), (x @ w).argmax(1), reduction="sum")
            scaler.scale(loss).backward()
            watch.note_loss(loss)
            before = scaler.get_scale()
            scaler.step(opt)
            scaler.update()
            if scaler.get_scale() < before:  # it skipped the step: an overflow
                skipped.append(i)
    return watch, skipped


@pytest.mark.parametrize("init_exp, overflows", [(13, [0]), (16, [0, 1, 2, 3])])
def test_the_scalers_first_overflows_while_it_calibrates_are_no_finding(init_exp, overflows):
    """The GradScaler skips its first steps while its scale falls to fit (torch's default
    init_scale 2**16 here: 4 in a row): normal, and no `amp_overflow` finding, which needs
    overflows on all of the last 5 recorded steps (it held at once on a run's first step)."""
    watch, skipped = _amp_run(2.0 ** init_exp)
    assert skipped == overflows  # plain torch: the scale fell at exactly these steps
    assert [r.step for r in watch.history if r.amp_overflow] == overflows
    assert "amp_overflow" not in [f.kind for f in watch.diagnose()]


def test_a_scaler_that_overflows_on_every_step_is_a_finding_from_the_fifth():
    watch, _ = _amp_run(2.0 ** 40, backoff=1.0 - 1e-9, steps=8)  # (never gets small enough)
    assert all(r.amp_overflow for r in watch.history)
    (f,) = [f for f in watch.diagnose() if f.kind == "amp_overflow"]
    assert f.first_step == 4


def test_an_overflow_step_keeps_the_loss_noted_for_it():
    """With ``optimizer=`` and a GradScaler whose first step overflows (scale 2^124): the
    skipped step's record carries the loss noted for it, and a next step that notes no loss
    does not get it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 124, growth_interval=1000)
    noted = {}
    with GradWatch(model, optimizer=opt, scaler=scaler) as watch:
        for step in range(5):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(torch.randn(16, 8)),
                                               torch.randint(0, 3, (16,))) * 20
            scaler.scale(loss).backward()
            if step != 1:
                watch.note_loss(loss)
                noted[step] = loss.item()
            scaler.step(opt)
            scaler.update()
    records = {r.step: r for r in watch.history}
    assert records[0].amp_overflow and not records[1].amp_overflow
    assert {s: r.loss for s, r in records.items()} == {s: noted.get(s) for s in records}
