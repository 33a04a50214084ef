"""GradWatch against plain torch: norms, order, hooks, training left untouched, state."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from conftest import batch, loss_of, mlp
from gradwatch import GradWatch, Status


def _param_norm(module: nn.Module) -> float:
    grads = [p.grad.double().flatten() for p in module.parameters(recurse=False)]
    return torch.linalg.vector_norm(torch.cat(grads)).item()


def _output_grad_norms(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Plain torch: the norm of the gradient w.r.t. each Linear's output, via retain_grad."""
    h, outs = x, {}
    for name, module in model.named_children():
        h = module(h)
        if isinstance(module, nn.Linear):
            h.retain_grad()
            outs[name] = h
    nn.functional.cross_entropy(h, y).backward()
    return {name: out.grad.norm().item() for name, out in outs.items()}


def test_layer_and_total_norms_match_vector_norm():
    model = mlp()
    watch = GradWatch(model)
    x, y = batch()
    loss_of(model, x, y).backward()
    rec = watch.step()
    assert list(rec.layers) == ["0", "2", "4"]
    for name, stat in rec.layers.items():
        assert stat.norm == pytest.approx(_param_norm(model.get_submodule(name)), rel=1e-6)
        assert stat.status is Status.OK
    expected = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
    assert rec.total_norm == pytest.approx(expected.item(), rel=1e-6)
    assert rec.clip_coef == 1.0 and rec.first_nonfinite is None and rec.flagged == ()
    watch.close()


@pytest.mark.parametrize("inplace", [False, True])
def test_activation_norms_match_retain_grad_reference(inplace):
    model = mlp(inplace=inplace)
    reference = mlp()
    reference.load_state_dict(model.state_dict())
    x, y = batch()
    expected = _output_grad_norms(reference, x, y)
    with GradWatch(model) as watch:
        loss_of(model, x, y).backward()
        rec = watch.step()
    for name, norm in expected.items():
        assert rec.layers[name].act_norm == pytest.approx(norm, rel=1e-6)


class _Reordered(nn.Module):
    """Registered in one order, called in another; `shared` runs twice; `pair` returns a tuple."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4, 2)
        self.shared = nn.Linear(4, 4)
        self.stem = nn.Linear(3, 4)

    def forward(self, x):
        h = self.stem(x)
        a = self.shared(h)
        b = self.shared(torch.tanh(a))
        self.a, self.b = a, b
        a.retain_grad()
        b.retain_grad()
        return self.head(b)


def test_forward_order_and_module_called_twice():
    model = _Reordered()
    watch = GradWatch(model)
    model(torch.randn(5, 3)).pow(2).sum().backward()
    rec = watch.step()
    assert list(rec.layers) == ["stem", "shared", "head"]
    assert watch.layer_names == ("stem", "shared", "head")
    both = torch.cat([model.a.grad.flatten(), model.b.grad.flatten()])
    assert rec.layers["shared"].act_norm == pytest.approx(both.norm().item(), rel=1e-6)


class _DictOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 3))

    def forward(self, x):
        return {"left": x @ self.w, "right": (x @ self.w.t(),)}


def test_dict_and_tuple_outputs_and_root_parameters():
    model = nn.Sequential(_DictOut())
    with GradWatch(model) as watch:
        out = model(torch.randn(2, 3))
        out["left"].retain_grad()
        out["right"][0].retain_grad()
        (out["left"].pow(2).sum() + 3 * out["right"][0].sum()).backward()
        rec = watch.step()
    expected = torch.cat([out["left"].grad.flatten(), out["right"][0].grad.flatten()]).norm()
    assert rec.layers["0"].act_norm == pytest.approx(expected.item(), rel=1e-6)
    root = _DictOut()
    with GradWatch(root) as watch:
        root(torch.randn(2, 3))["left"].sum().backward()
        assert list(watch.step().layers) == ["(root)"]


def test_tied_weights_count_once_and_frozen_or_unused_layers_are_skipped():
    emb = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    frozen = nn.Linear(4, 4)
    frozen.requires_grad_(False)
    unused = nn.Linear(4, 4)
    model = nn.ModuleDict({"emb": emb, "frozen": frozen, "head": head, "unused": unused})
    watch = GradWatch(model)
    assert watch.layer_names == ("emb", "unused")  # head owns nothing new; frozen is not watched
    logits = head(frozen(emb(torch.tensor([1, 2, 3]))))
    logits.logsumexp(-1).sum().backward()
    rec = watch.step()
    assert list(rec.layers) == ["emb"]  # unused has no gradient at this step
    assert rec.layers["emb"].norm == pytest.approx(emb.weight.grad.norm().item(), rel=1e-6)


def test_monitoring_without_clipping_leaves_training_bit_identical():
    plain = mlp(inplace=True)
    watched = copy.deepcopy(plain)
    opt_a = torch.optim.Adam(plain.parameters(), lr=1e-2)
    opt_b = torch.optim.Adam(watched.parameters(), lr=1e-2)
    with GradWatch(watched, optimizer=opt_b, every=2):
        for step in range(6):
            x, y = batch(seed=step)
            for model, opt in ((plain, opt_a), (watched, opt_b)):
                opt.zero_grad(set_to_none=True)
                loss_of(model, x, y).backward()
                opt.step()
    for a, b in zip(plain.parameters(), watched.parameters()):
        assert torch.equal(a, b)


def test_clipping_through_watch_equals_clip_grad_norm_on_every_step():
    plain = mlp()
    watched = copy.deepcopy(plain)
    opt_a = torch.optim.SGD(plain.parameters(), lr=0.5)
    opt_b = torch.optim.SGD(watched.parameters(), lr=0.5)
    with GradWatch(watched, optimizer=opt_b, clip=0.05, every=2) as watch:
        for step in range(6):
            x, y = batch(seed=step)
            opt_a.zero_grad()
            loss_of(plain, x, y).backward()
            ref_total = torch.nn.utils.clip_grad_norm_(plain.parameters(), 0.05)
            opt_a.step()
            opt_b.zero_grad()
            loss_of(watched, x, y).backward()
            opt_b.step()
            if step % 2 == 0:
                rec = watch.history[-1]
                assert rec.step == step
                assert rec.total_norm == ref_total.item()
                assert rec.clip_coef == pytest.approx(0.05 / (ref_total.item() + 1e-6), rel=1e-6)
                assert rec.clipped
    for a, b in zip(plain.parameters(), watched.parameters()):
        assert torch.equal(a, b)
    assert len(watch.history) == 3


def test_every_records_only_every_nth_step_and_history_is_bounded():
    model = mlp()
    seen = []
    watch = GradWatch(model, every=3, history=2, loggers=[seen.append])
    results = []
    for step in range(7):
        model.zero_grad()
        loss_of(model, *batch(seed=step)).backward()
        results.append(watch.step())
    assert [r is not None for r in results] == [True, False, False, True, False, False, True]
    assert [r.step for r in seen] == [0, 3, 6]
    assert [r.step for r in watch.history] == [3, 6]
    assert watch.step_count == 7


def test_unrecorded_steps_run_without_forward_hooks_and_recorded_ones_are_exact():
    """every=3: the forward hooks are attached only for the forward of a recorded step, and
    those records' output-gradient norms equal retain_grad's."""
    model, reference = mlp(), mlp()
    reference.load_state_dict(model.state_dict())
    watch = GradWatch(model, every=3)
    hooked = []
    for step in range(7):
        hooked.append(any(m._forward_hooks for m in model.modules()))
        x, y = batch(seed=step)
        model.zero_grad()
        loss_of(model, x, y).backward()
        rec = watch.step()
        if rec is None:
            continue
        for name, norm in _output_grad_norms(reference, x, y).items():
            assert rec.layers[name].act_norm == pytest.approx(norm, rel=1e-6)
    assert hooked == [True, False, False, True, False, False, True]
    watch.close()
    assert not any(m._forward_hooks for m in model.modules())


def test_close_removes_every_hook_and_is_idempotent():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = {name: (dict(m._forward_hooks), dict(m._backward_hooks)) for name, m in model.named_modules()}
    watch = GradWatch(model, optimizer=opt)
    assert any(m._forward_hooks for m in model.modules())
    assert opt._optimizer_step_pre_hooks
    watch.close()
    watch.close()
    after = {name: (dict(m._forward_hooks), dict(m._backward_hooks)) for name, m in model.named_modules()}
    assert after == before
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks
    with pytest.raises(RuntimeError, match="after close"):
        watch.step()


def test_exit_closes_even_when_the_block_raises():
    model = mlp()
    with pytest.raises(KeyError):
        with GradWatch(model) as watch:
            raise KeyError("boom")
    assert not any(m._forward_hooks for m in model.modules())
    assert "closed" in repr(watch)


def test_forgotten_watch_is_collected_and_unhooks():
    import gc

    model = mlp()
    GradWatch(model)
    gc.collect()
    assert not any(m._forward_hooks for m in model.modules())


def test_activations_off_reports_none_and_drops_forward_hooks():
    model = mlp()
    watch = GradWatch(model, activations=False)
    loss_of(model, *batch()).backward()
    rec = watch.step()
    assert all(s.act_norm is None for s in rec.layers.values())
    assert not any(m._forward_hooks for m in model.modules())


def test_resnet18_with_inplace_relu():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(num_classes=5)
    watch = GradWatch(model)
    logits = model(torch.randn(2, 3, 32, 32))
    logits.retain_grad()
    nn.functional.cross_entropy(logits, torch.tensor([0, 3])).backward()
    rec = watch.step()
    assert len(rec.layers) == len(list(m for m in model.modules()
                                       if list(m.parameters(recurse=False))))
    assert next(iter(rec.layers)) == "conv1" and list(rec.layers)[-1] == "fc"
    assert rec.layers["fc"].act_norm == pytest.approx(logits.grad.norm().item(), rel=1e-6)
    assert rec.layers["layer1.0.conv1"].norm == pytest.approx(
        model.layer1[0].conv1.weight.grad.norm().item(), rel=1e-6)
    assert all(s.act_norm is not None and s.act_norm > 0 for s in rec.layers.values())
    watch.close()


def test_summary_and_repr_are_readable():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with GradWatch(model, optimizer=opt, clip=1e-3) as watch:
        for step in range(3):
            opt.zero_grad()
            loss_of(model, *batch(seed=step)).backward()
            opt.step()
    text = watch.summary()
    assert "3 steps, 3 recorded" in text and "clipped 3/3 (100.0%)" in text
    for name in ("0", "2", "4"):
        assert any(line.startswith(name + " ") for line in text.splitlines())
    assert "GlobalNorm(max_norm=0.001)" in repr(watch) and "recorded=3" in repr(watch)
    assert "nothing recorded" in GradWatch(mlp()).summary()
