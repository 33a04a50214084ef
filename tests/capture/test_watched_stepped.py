"""The watched set follows what the optimizer steps: a layer inserted mid-run with
``nn.Sequential.insert`` / ``nn.ModuleList.insert`` (torch writes ``_modules`` directly, so its
registration hooks do not tell) and given to the optimizer with ``add_param_group`` is watched,
in the total and clipped like ``clip_grad_norm_(optimizer's parameters)``; a parameter the
optimizer steps that is not the model's is warned about once, never silently left out."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradwatch import GradWatch

CLIP = 0.01


class Stack(nn.Module):
    """Layers in an ``nn.ModuleList``: a layer is inserted with ``ModuleList.insert``."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks[:-1]:
            x = torch.relu(block(x))
        return self.blocks[-1](x)


def _sequential() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                         nn.Linear(16, 2))


def _insert(model: nn.Module, new: nn.Linear) -> None:
    if isinstance(model, nn.Sequential):
        model.insert(4, new)  # the head moves from model[4] to model[6]
        model.insert(5, nn.ReLU())
    else:
        model.blocks.insert(2, new)  # the head moves from blocks.2 to blocks.3


def _layer_norms(model: nn.Module) -> dict[str, float]:
    """Each module's own gradient norm, as plain torch reads it before ``step()``."""
    return {name: torch.nn.utils.get_total_norm(
        [p.grad for p in module.parameters(recurse=False)]).item()
        for name, module in model.named_modules() if list(module.parameters(recurse=False))}


def _stepped(opt: torch.optim.Optimizer) -> list[nn.Parameter]:
    return [p for g in opt.param_groups for p in g["params"]]


@pytest.mark.parametrize("make", [_sequential, Stack], ids=["Sequential", "ModuleList"])
def test_an_inserted_layer_given_to_the_optimizer_is_watched_summed_and_clipped(make):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = make()
    twin = copy.deepcopy(model)  # plain torch: clip_grad_norm_(optimizer's parameters)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    opt_t = torch.optim.SGD(twin.parameters(), lr=0.05)
    watch = GradWatch(model, optimizer=opt, clip=CLIP)
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(32, 8, generator=g), torch.randint(0, 2, (32,), generator=g))
            for _ in range(8)]
    for step, (x, y) in enumerate(data):
        if step == 3:
            new = nn.Linear(16, 16)
            new_t = copy.deepcopy(new)
            _insert(model, new)
            _insert(twin, new_t)
            opt.add_param_group({"params": list(new.parameters())})
            opt_t.add_param_group({"params": list(new_t.parameters())})
        for m, o in ((model, opt), (twin, opt_t)):
            o.zero_grad()
            F.cross_entropy(m(x), y).backward()
        torch_norms = _layer_norms(model)
        torch_total = torch.nn.utils.get_total_norm([p.grad for p in _stepped(opt)]).item()
        torch.nn.utils.clip_grad_norm_(_stepped(opt_t), CLIP)
        opt.step()
        opt_t.step()
        record = watch.history[-1]
        assert list(record.layers) == list(torch_norms)  # the model's layers, forward order
        for name, norm in torch_norms.items():
            assert record.layers[name].norm == pytest.approx(norm, rel=1e-6), name
        assert record.total_norm == pytest.approx(torch_total, rel=1e-6)
        assert record.clip_coef < 1  # clipping applied
        for p, q in zip(model.parameters(), twin.parameters(), strict=True):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-9)  # clipped alike
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)
    assert watch.head == ("6" if make is _sequential else "blocks.3")
    watch.close()


def _run(model: nn.Module, opt: torch.optim.Optimizer, steps: int = 3,
         extra: nn.Parameter | None = None) -> None:
    g = torch.Generator().manual_seed(2)
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(model(torch.randn(16, 8, generator=g)) / (
            1.0 if extra is None else extra), torch.randint(0, 2, (16,), generator=g))
        loss.backward()
        opt.step()


def test_a_parameter_outside_the_model_is_warned_about_once():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = _sequential()
    temp = nn.Parameter(torch.tensor(1.0))  # a learnable loss temperature, not the model's
    opt = torch.optim.SGD([*model.parameters(), temp], lr=0.05)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        watch = GradWatch(model, optimizer=opt, clip=CLIP)
        _run(model, opt, extra=temp)
    outside = [w for w in caught if "not hold" in str(w.message)]
    assert len(outside) == 1, [str(w.message) for w in caught]
    message = str(outside[0].message)
    assert outside[0].category is UserWarning and outside[0].filename == __file__
    assert "1 parameter " in message and "shape ()" in message and "group 0" in message
    assert "neither measures nor clips" in message and "register it on" in message
    scale = nn.Parameter(torch.ones(3))  # a group added later brings a new one: warned once more
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt.add_param_group({"params": [scale]})
        _run(model, opt, extra=temp)
    outside = [w for w in caught if "not hold" in str(w.message)]
    assert len(outside) == 1, [str(w.message) for w in caught]
    assert "group 1: shape (3,)" in str(outside[0].message)
    assert "shape ()" not in str(outside[0].message)  # the temperature was told already
    model.parameters = None  # the common path of refresh (nothing changed) walks no model
    assert not watch._watched.refresh()
    del model.parameters
    watch.close()


@pytest.mark.parametrize("which", ["all", "subset", "replaced"])
def test_an_optimizer_over_the_models_parameters_is_not_warned_about(which):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = _sequential()
    params = list(model[0].parameters()) if which == "subset" else list(model.parameters())
    opt = torch.optim.SGD(params, lr=0.05)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        watch = GradWatch(model, optimizer=opt)
        _run(model, opt)
        if which == "replaced":  # the old head stays in the optimizer, stepped with no gradient
            model[4] = nn.Linear(16, 2)
            opt.add_param_group({"params": list(model[4].parameters())})
            _run(model, opt)
            assert list(watch.history[-1].layers) == ["0", "2", "4"]
        elif which == "subset":
            opt.add_param_group({"params": list(model[2].parameters())})
            _run(model, opt)
    assert not [str(w.message) for w in caught if "not hold" in str(w.message)]
    watch.close()


@pytest.mark.parametrize("every", [1, 4])
def test_one_layer_frozen_as_another_is_unfrozen_is_seen(every):
    """Freezing the head at the step the first layer is unfrozen leaves the number of
    trainable tensors as it was; the watched set still follows: the unfrozen layer is
    measured, summed and clipped like ``clip_grad_norm_``, and the frozen one is gone (also
    when the swap falls on an unrecorded step, ``every=4``)."""
    def run(watched: bool):
        torch.manual_seed(0)
        model = _sequential()
        model[0].requires_grad_(False)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        watch = GradWatch(model, optimizer=opt, clip=CLIP, every=every) if watched else None
        g = torch.Generator().manual_seed(1)
        totals = []
        for step in range(12):
            if step == 3:
                model[0].requires_grad_(True)
                model[4].requires_grad_(False)
            x, y = torch.randn(16, 8, generator=g), torch.randint(0, 2, (16,), generator=g)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            if not watched:
                totals.append(torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP).item())
            opt.step()
        return model, totals, watch

    ref, totals, _ = run(False)
    ours, _, watch = run(True)
    after = [r for r in watch.history if r.step >= 3]
    assert after and all("0" in r.layers and "4" not in r.layers for r in after)
    assert [r.total_norm for r in watch.history] == [totals[r.step] for r in watch.history]
    for a, b in zip(ours.parameters(), ref.parameters()):
        assert torch.equal(a, b)
    assert not [n for n in watch.notes() if n.kind == "unused_output"]
