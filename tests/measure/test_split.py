"""A vanishing net's split steps (`gradwatch.measure.split`): gradients whose norm was below
float32's safe range at the last step, exact zeros included, are reduced once in float64, and
the step still logs and clips with torch's norms and total wherever those are right."""

import copy

import pytest
import torch
from torch import nn

import gradwatch.measure.norms as norms_module
from gradwatch import GradWatch
from gradwatch.measure.split import NATIVE, as_torch, split_norms


def _zero_head_net(dtype: torch.dtype) -> nn.Module:
    """A zero-initialised output layer: the hidden layers' gradients are exact zeros at the
    first step and nonzero from the second on."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                        nn.Linear(64, 4)).to(dtype)
    nn.init.zeros_(net[4].weight)
    return net


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_clipping_after_exact_zeros_is_bit_identical_in_either_dtype(dtype):
    """The step after the zeros reduces the hidden layers in float64 first (they were marked);
    their norms, now healthy, are redone in the gradients' own dtype, so the logged totals
    and the parameters equal a ``clip_grad_norm_`` twin's bit for bit (float64 included,
    where a float64 norm summed in another order differs in its last bits)."""
    base = _zero_head_net(dtype)
    ref, ours = copy.deepcopy(base), copy.deepcopy(base)
    opt_r = torch.optim.SGD(ref.parameters(), lr=0.1)
    opt_o = torch.optim.SGD(ours.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(4)
    totals, steps = [], 6
    with GradWatch(ours, optimizer=opt_o, clip=1.0) as watch:
        for _ in range(steps):
            x = torch.randn(16, 32, generator=g, dtype=dtype) * 20
            y = torch.randint(0, 4, (16,), generator=g)
            for model, opt in ((ref, opt_r), (ours, opt_o)):
                opt.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                if model is ref:
                    totals.append(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0).item())
                opt.step()
    assert watch.history[0].layers["0"].norm == 0.0
    assert watch.history[1].layers["0"].norm > 0.0
    assert [r.total_norm for r in watch.history] == totals
    for a, b in zip(ours.parameters(), ref.parameters()):
        assert torch.equal(a, b)


def _vanishing_chain(depth: int = 300) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential(*(nn.Sequential(nn.Linear(16, 16), nn.Tanh()) for _ in range(depth)))
    return net, torch.randn(4, 16)


def test_gradients_of_exact_zeros_are_not_reduced_again_at_later_steps(monkeypatch):
    """A deep tanh chain whose lower layers get gradients of exact zeros (they underflowed in
    the backward pass): from the second step on those are reduced once, in float64, not in
    float32 and then again in float64 by `repair_norms` (the float64 redo is not called for
    them). The norms equal plain torch's (zeros as zeros, the tiny ones exact)."""
    net, x = _vanishing_chain()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    redone: list[int] = []
    real = norms_module.exact_norms
    monkeypatch.setattr(norms_module, "exact_norms",
                        lambda tensors: redone.append(len(tensors)) or real(tensors))
    with GradWatch(net, optimizer=opt, activations=False) as watch:
        for step in range(4):
            opt.zero_grad()
            net(x).square().mean().backward()
            exact = {name: torch.linalg.vector_norm(torch.cat(
                [p.grad.double().reshape(-1) for p in block[0].parameters()])).item()
                for name, block in ((f"{i}.0", b) for i, b in enumerate(net))}
            total = torch.nn.utils.get_total_norm([p.grad for p in net.parameters()]).item()
            if step == 0:
                assert sum(n == 0.0 for n in exact.values()) > 100  # the premise
                assert 0 < min(n for n in exact.values() if n) < 1e-18  # and tiny ones
            opt.step()
            if step == 0:  # (the first step has no marks: its zeros are redone)
                assert redone and max(redone) > 100
                redone.clear()
            record = watch.history[-1]
            for name, n in exact.items():
                assert record.layers[name].norm == pytest.approx(n, rel=1e-6, abs=0)
            assert record.total_norm == pytest.approx(total, rel=1e-6)
    assert redone == []


def test_as_torch_keeps_a_genuinely_tiny_norm_exact_and_marks_the_total_exact():
    """A marked gradient that is still tiny (entries of 1e-30: float32's squares underflow)
    keeps its float64 norm and stays marked; zeros stay marked too; a marked gradient back in
    range gets torch's float32 norm."""
    grads = [torch.full((8,), 1e-30), torch.zeros(8), torch.full((8,), 0.5), torch.ones(8)]
    exact = torch.tensor([True, True, True, False]).numpy()
    dev = split_norms(grads, exact)
    assert getattr(dev, NATIVE) == torch.float32
    host = dev.tolist() + [float("nan")]
    fixed, still = as_torch(host, grads, exact, torch.float32, None)
    assert fixed[0] == pytest.approx(8 ** 0.5 * 1e-30, rel=1e-12)
    assert torch.linalg.vector_norm(grads[0]).item() == 0.0  # what float32 would have said
    assert fixed[1] == 0.0
    assert fixed[2] == torch._foreach_norm([grads[2]])[0].item()
    assert still.tolist() == [True, True, False, False]
    assert fixed[-1] != fixed[-1]  # a tiny norm left: the total is formed exactly later


def test_split_norms_with_several_dtypes_is_not_native():
    grads = [torch.zeros(4), torch.ones(4, dtype=torch.float64)]
    dev = split_norms(grads, torch.tensor([True, False]).numpy())
    assert dev.tolist() == [0.0, 2.0] and getattr(dev, NATIVE, None) is None
