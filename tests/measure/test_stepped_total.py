"""The total norm and clipping read what the optimizer steps, as
``clip_grad_norm_(optimizer's parameters)`` does: gradients of trainable layers the optimizer
does not step (a backbone left out of it, the discriminator in a GAN module) are recorded per
layer but neither counted in the total nor clipped."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from gradwatch import GradWatch, Thresholds


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                         nn.Linear(16, 3))


@pytest.mark.parametrize("sync_records", [None, False])
def test_head_only_training_clips_like_clip_grad_norm_over_the_head(sync_records):
    """The backbone requires grad but is not in the optimizer, so its gradients are never
    zeroed and grow every step; the head's clipping must not see them."""
    model, ref = _mlp(), _mlp()
    opt = torch.optim.SGD(model[4].parameters(), lr=0.1)
    ref_opt = torch.optim.SGD(ref[4].parameters(), lr=0.1)
    watch = GradWatch(model, optimizer=opt, clip=0.3, sync_records=sync_records)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 8, generator=g), torch.randint(0, 3, (16,), generator=g)
    totals = []
    for _ in range(12):
        opt.zero_grad()
        ref_opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        F.cross_entropy(ref(x), y).backward()
        totals.append(torch.nn.utils.clip_grad_norm_(ref[4].parameters(), 0.3).item())
        opt.step()
        ref_opt.step()
    watch.close()
    records = list(watch.history)
    assert [r.total_norm for r in records] == pytest.approx(totals, rel=1e-6)
    assert any(t > 0.3 for t in totals) and any(t <= 0.3 for t in totals)  # both branches
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.equal(a, b)
    # the backbone is still watched: its own (growing, never zeroed) gradient is recorded
    back = [r.layers["0"].norm for r in records]
    assert back[-1] == pytest.approx(torch.linalg.vector_norm(
        torch.cat([model[0].weight.grad.reshape(-1), model[0].bias.grad])).item(), rel=1e-6)
    assert back[-1] > 5 * back[0]


def test_a_gan_module_watched_with_the_generator_optimizer():
    """G and D in one module, the watch given G's optimizer: G's loss leaves gradients in D
    too; the total and the clip are G's alone (bit-identical weights)."""
    def build():
        torch.manual_seed(0)
        return nn.ModuleDict({"G": nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8)),
                              "D": nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))})
    gan, ref = build(), build()
    opt, ref_opt = (torch.optim.Adam(m["G"].parameters(), lr=1e-2) for m in (gan, ref))
    watch = GradWatch(gan, optimizer=opt, clip=0.05)
    z = torch.randn(8, 4, generator=torch.Generator().manual_seed(2))
    for _ in range(6):
        for m, o in ((gan, opt), (ref, ref_opt)):
            m.zero_grad()
            m["D"](m["G"](z)).mean().backward()
        expected = torch.nn.utils.clip_grad_norm_(ref["G"].parameters(), 0.05).item()
        opt.step()
        ref_opt.step()
        assert watch.history[-1].total_norm == pytest.approx(expected, rel=1e-6)
        assert watch.history[-1].layers["D.0"].norm > 0  # D's gradient is recorded, not clipped
    for a, b in zip(gan.parameters(), ref.parameters()):
        assert torch.equal(a, b)


def test_a_param_group_switched_to_other_layers_moves_the_total():
    """``param_groups[0]["params"]`` replaced by a list of the same length (another layer):
    the watch follows what is stepped now."""
    model = _mlp()
    opt = torch.optim.SGD(model[4].parameters(), lr=0.1)
    watch = GradWatch(model, optimizer=opt)
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(3))
    for step in range(4):
        if step == 2:
            opt.param_groups[0]["params"] = list(model[2].parameters())
        opt.zero_grad()
        model.zero_grad()
        model(x).square().mean().backward()
        stepped = model[4] if step < 2 else model[2]
        expected = torch.linalg.vector_norm(torch.cat(
            [p.grad.reshape(-1) for p in stepped.parameters()])).item()
        opt.step()
        assert watch.history[-1].total_norm == pytest.approx(expected, rel=1e-6)
    watch.close()


def test_layers_left_out_of_the_optimizer_are_not_judged():
    """Their gradients are never zeroed and grow step after step (an input side far above the
    output side: an `exploding` depth trend if they were judged, here with a bound of 20 that
    the backbone's growth crosses); the layers that train are healthy, so nothing is found and
    nothing flagged."""
    model = _mlp()
    opt = torch.optim.AdamW(model[4].parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g)
    th = Thresholds(relative_exploding=20.0)
    with GradWatch(model, optimizer=opt, thresholds=th) as watch:
        for _ in range(40):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            watch.note_loss(loss)
            opt.step()
    first, last = watch.history[0], watch.history[-1]
    assert last.layers["0"].norm > 20 * first.layers["0"].norm  # the backbone's, growing
    assert watch.diagnose() == [] and not any(r.flagged for r in watch.history)


@pytest.mark.parametrize("sync_records", [None, False])
@pytest.mark.parametrize("partial", [False, True])
def test_zero_then_clip_matches_nan_to_num_then_clip_grad_norm(sync_records, partial):
    """on_nonfinite="zero" with a norm clip: the NaN entry is zeroed and the rest clipped with
    the total re-measured after zeroing, on the host path and the sync-free one (which clipped
    with the NaN total before: every stepped gradient, then every weight, became NaN)."""
    model = _mlp()
    stepped = list(model[4].parameters()) if partial else list(model.parameters())
    opt = torch.optim.SGD(stepped, lr=0.1)
    watch = GradWatch(model, optimizer=opt, clip=0.5, on_nonfinite="zero",
                      sync_records=sync_records)
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(4))
    opt.zero_grad()
    model(x).square().mean().backward()
    model[4].weight.grad[0, 0] = float("nan")
    expected = [torch.nan_to_num(p.grad, nan=0.0) for p in stepped]
    torch.nn.utils.clip_grad_norm_(expected, 0.5)  # (clips the list of tensors in place)
    grads_seen = []
    hook = opt.register_step_pre_hook(lambda o, a, k: grads_seen.append(
        [p.grad.clone() for p in stepped]))
    opt.step()
    hook.remove()
    watch.close()
    for got, want in zip(grads_seen[0], expected):
        assert torch.allclose(got, want, rtol=1e-6, atol=0)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_gradscaler_unscales_only_what_the_optimizer_steps():
    """``scaler.unscale_(optimizer)`` leaves a trainable layer outside the optimizer at the loss
    scale: its recorded norm is unscaled by gradwatch (it was 65,536 times too large)."""
    model, ref = _mlp(), _mlp()
    opt = torch.optim.SGD(model[4].parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    watch = GradWatch(model, optimizer=opt, scaler=scaler)
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(5))
    opt.zero_grad()
    scaler.scale(model(x).square().mean()).backward()
    ref(x).square().mean().backward()
    scaler.step(opt)
    scaler.update()
    watch.close()
    record = watch.history[-1]
    for name in ("0", "2", "4"):
        assert record.layers[name].norm == pytest.approx(_norm_of(ref[int(name)]), rel=1e-5)


def _norm_of(module: nn.Module) -> float:
    return torch.linalg.vector_norm(torch.cat([p.grad.reshape(-1)
                                               for p in module.parameters()])).item()


@pytest.mark.parametrize("sync_records", [None, False])
def test_float64_gradients_past_1e154_clip_the_same_on_both_paths(sync_records):
    model = nn.Linear(4, 2).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    watch = GradWatch(model, optimizer=opt, clip=1.0, activations=False,
                      sync_records=sync_records)
    for p in model.parameters():
        p.grad = torch.full_like(p, 1e200)
    opt.step()
    watch.close()
    after = torch.linalg.vector_norm(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    assert after.item() == pytest.approx(1.0, rel=1e-9)
    assert watch.history[-1].total_norm == pytest.approx(1e200 * 10 ** 0.5, rel=1e-12)
