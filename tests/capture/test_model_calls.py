"""A step that calls the model more than once (accumulated micro-batches, a validation or a
target pass under ``no_grad``) runs every module once per call: no layer is taken for one whose
weights are shared across depth, so the depth trend keeps them, and a vanishing net is still
found. A module run twice within one call of the model is shared."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from gradwatch import GradWatch


def _sigmoid_net() -> nn.Sequential:
    """examples/diagnose.py's broken model: 20 sigmoid layers at std 0.1 (vanishing)."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(20):
        layers += [nn.Linear(32, 32), nn.Sigmoid()]
    model = nn.Sequential(*layers, nn.Linear(32, 2))
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.1)
    return model


def _train(model: nn.Module, extra: str, steps: int = 30) -> GradWatch:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    gv = torch.Generator().manual_seed(2)  # the validation batches': training sees the same
    watch = GradWatch(model, optimizer=opt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(steps):
            opt.zero_grad()
            parts = 2 if extra == "accumulate" else 1
            for _ in range(parts):
                x, y = torch.randn(16, 32, generator=g), torch.randint(0, 2, (16,), generator=g)
                loss = nn.functional.cross_entropy(model(x), y) / parts
                loss.backward()
            watch.note_loss(loss)
            opt.step()
            if extra == "no_grad":
                with torch.no_grad():
                    model(torch.randn(64, 32, generator=gv))
            elif extra == "inference_mode":
                model.eval()
                with torch.inference_mode():
                    model(torch.randn(64, 32, generator=gv))
                model.train()
    watch.close()
    return watch


@pytest.mark.parametrize("extra", ["accumulate", "no_grad", "inference_mode"])
def test_a_vanishing_net_called_more_than_once_per_step_is_still_found(extra):
    plain = _train(_sigmoid_net(), "none")
    assert [f.kind for f in plain.diagnose()] == ["vanishing"]
    watch = _train(_sigmoid_net(), extra)
    assert not watch._watched.forward.repeated
    found = watch.diagnose()
    assert [f.kind for f in found] == ["vanishing"]
    if extra != "accumulate":  # the same training: the same layers, from the same step
        assert found[0].layers == plain.diagnose()[0].layers
        assert found[0].first_step == plain.diagnose()[0].first_step
        assert [r.layers["0"].norm for r in watch.history] == \
            [r.layers["0"].norm for r in plain.history]


class _Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp, self.block, self.head = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x))
        for _ in range(3):  # one layer applied at three depths
            h = torch.tanh(self.block(h))
        return self.head(h)


@pytest.mark.parametrize("calls", [1, 3])
def test_a_module_run_twice_within_one_call_is_shared_however_often_the_model_runs(calls):
    torch.manual_seed(0)
    model = _Shared()
    with GradWatch(model) as watch:
        for _ in range(calls):
            model(torch.randn(5, 4)).sum().backward()
        rec = watch.step()
        names = [watch._watched.layers[i].name for i in watch._watched.forward.repeated]
    assert names == ["block"]
    assert watch.head == "head"
    assert list(rec.layers) == ["inp", "block", "head"]


def test_layers_called_from_the_loop_without_the_model_keep_the_old_rule():
    """The model itself is never called (a container whose parts the loop calls): a module run
    twice in the step counts as shared, as there is no call of the model to tell passes by."""
    torch.manual_seed(0)
    model = nn.ModuleDict({"a": nn.Linear(4, 4), "b": nn.Linear(4, 4), "c": nn.Linear(4, 1)})
    with GradWatch(model) as watch:
        x = torch.randn(3, 4)
        model["c"](model["b"](model["b"](model["a"](x)))).sum().backward()
        watch.step()
        names = [watch._watched.layers[i].name for i in watch._watched.forward.repeated]
    assert names == ["b"]


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16))
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.encoder(x)))


@pytest.mark.parametrize("when", ["between backward and step", "before the forward"])
def test_a_sub_module_run_under_no_grad_outside_the_model_neither_moves_the_head_nor_agc(when):
    """Features taken from the encoder for logging (no effect on training in plain torch):
    the head stays the model's last layer, and AGC, which spares it, trains as without them."""
    from gradwatch.clip import AGC

    def train(features: bool) -> tuple[nn.Module, str | None, list[str]]:
        torch.manual_seed(0)
        model = _Net()
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        g = torch.Generator().manual_seed(1)
        with GradWatch(model, optimizer=opt, clip=AGC(0.01)) as watch:
            for _ in range(5):
                x, y = torch.randn(8, 6, generator=g), torch.randn(8, 3, generator=g)
                opt.zero_grad()
                if features and when == "before the forward":
                    with torch.no_grad():
                        model.encoder(x)
                nn.functional.mse_loss(model(x), y).backward()
                if features and when != "before the forward":
                    with torch.no_grad():
                        model.encoder(x)
                opt.step()
            layers = list(watch.history[-1].layers)
        return model, watch.head, layers

    plain, head, layers = train(False)
    other, head2, layers2 = train(True)
    assert head == head2 == "head"
    assert layers == layers2 == ["encoder.0", "encoder.2", "head"]
    for p, q in zip(plain.parameters(), other.parameters()):
        assert torch.equal(p, q)
