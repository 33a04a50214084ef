"""The update/weight ratio of weights that are not float32 and row-major, against plain torch:
float64 weights keep their precision (a tiny learning rate is not rounded to "not moving"),
complex weights count their imaginary parts (and raise no warning), and channels_last conv
weights are read in memory order instead of being left out."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from gradwatch import GradWatch
from gradwatch.measure.statistics import UpdateRatio


def _memory_order(t: torch.Tensor) -> torch.Tensor:
    """``t``'s entries as laid out in memory (a dense tensor's dimensions by falling stride)."""
    order = sorted(range(t.dim()), key=lambda d: -t.stride(d))
    return t.permute(order).reshape(-1)


def _ratio(before: list[torch.Tensor], after: list[torch.Tensor],
           sample: int | None = None) -> float:
    """‖Δθ‖/‖θ‖ over a layer in float64 (complex: |·|); with ``sample`` a tensor of more entries
    is read in memory order in 16 runs of sample // 16 consecutive entries starting at
    k * (n // 16), each read entry standing for n / (entries read)."""
    num = den = 0.0
    for b, a in zip(before, after):
        b, a = _memory_order(b), _memory_order(a)
        weight = 1.0
        if sample is not None and b.numel() > sample:
            n = b.numel()
            at = torch.tensor([k * (n // 16) + j for k in range(16) for j in range(sample // 16)])
            b, a = b[at], a[at]
            weight = n / b.numel()
        wide = torch.complex128 if b.is_complex() else torch.float64
        b, a = b.to(wide), a.to(wide)
        num += weight * (a - b).abs().square().sum().item()
        den += weight * b.abs().square().sum().item()
    return math.sqrt(num / den)


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, data,
           loss_fn) -> tuple[GradWatch, list[dict[str, tuple[float, float, float]]]]:
    """Trains with gradwatch watching; per measured step and layer (recorded ratio, exact
    ratio, sampled ratio), the references from clones of the parameters taken before the step."""
    layers = {n: m for n, m in model.named_modules()
              if list(m.parameters(recurse=False))}
    seen = []
    with GradWatch(model, optimizer=opt) as watch:
        for step in range(steps):
            x, y = data(step)
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            before = {n: [p.detach().clone() for p in m.parameters(recurse=False)]
                      for n, m in layers.items()}
            opt.step()
            rec = watch.history[-1]
            if not any("update_ratio" in s.values for s in rec.layers.values()):
                continue  # measured on every 4th recorded step
            row = {}
            for name, b in before.items():
                a = [p.detach() for p in layers[name].parameters(recurse=False)]
                row[name] = (rec.layers[name].values.get("update_ratio"), _ratio(b, a),
                             _ratio(b, a, UpdateRatio.sample))
            seen.append(row)
    return watch, seen


def _mlp_data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return torch.randn(32, 10, generator=g).double(), torch.randint(0, 3, (32,), generator=g)


@pytest.mark.parametrize("lr", [1e-10, 1e-6])
def test_float64_weights_give_the_float64_update_ratio_and_no_false_not_moving(lr):
    """A float64 MLP at SGD lr 1e-10 moves its weights by ~1e-11 of their size: read in float32
    that was exactly 0 (and a false `not_moving` from step 28), at lr 1e-6 a few tenths of a
    percent off; now the exact float64 ratio (every tensor here has at most 256 entries)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 12), nn.ReLU(),
                          nn.Linear(12, 3)).double()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    watch, seen = _train(model, opt, 40, _mlp_data, F.cross_entropy)
    assert len(seen) == 13  # the first 4 recorded steps, then every 4th
    for row in seen:
        got, exact, _ = row["2"]  # 240 + 12 entries: exact
        assert got == pytest.approx(exact, rel=1e-6) and 0 < exact < 1e2 * lr
        got, exact, _ = row["4"]
        assert got == pytest.approx(exact, rel=1e-6)
        got, exact, _ = row["0"]  # 200 weights + 20: exact too
        assert got == pytest.approx(exact, rel=1e-6)
    assert "not_moving" not in {f.kind for f in watch.diagnose()}
    assert "not_moving" not in {f.kind for f in watch.notes()}


def test_float64_weights_above_the_sample_size_are_sampled_in_float64():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 40), nn.ReLU(), nn.Linear(40, 3)).double()  # 400: sampled
    opt = torch.optim.SGD(model.parameters(), lr=1e-10)
    watch, seen = _train(model, opt, 9, _mlp_data, F.cross_entropy)
    assert len(seen) == 6  # steps 0-4 and 8
    for row in seen:
        got, exact, sampled = row["0"]
        assert got == pytest.approx(sampled, rel=1e-6) and got != exact
        assert got == pytest.approx(exact, rel=0.2)


class _ComplexLinear(nn.Module):
    """z @ W.T + b with complex W and b."""

    def __init__(self, i: int, o: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(o, i, dtype=torch.complex64) / i ** 0.5)
        self.bias = nn.Parameter(torch.randn(o, dtype=torch.complex64))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.weight.T + self.bias


class _ComplexNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.small, self.big = _ComplexLinear(8, 12), _ComplexLinear(12, 30)  # 96, 360 entries

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.big(torch.tanh(self.small(z).real) + 1j * self.small(z).imag)


def _complex_data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return (torch.randn(16, 8, dtype=torch.complex64, generator=g),
            torch.randn(16, 30, dtype=torch.complex64, generator=g))


def test_complex_weights_give_the_complex_update_ratio_without_a_warning():
    """‖Δw‖ and ‖w‖ over |·| of the complex entries (the real part alone was 2.5x low), and
    torch's "Casting complex values to real" warning never raised. A complex tensor of at most
    256 complex entries is exact; a larger one is sampled in complex entries."""
    torch.manual_seed(0)
    model = _ComplexNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, seen = _train(model, opt, 9, _complex_data,
                         lambda out, y: (out - y).abs().square().mean())
    assert len(seen) == 6  # steps 0-4 and 8
    for row in seen:
        got, exact, _ = row["small"]
        assert got == pytest.approx(exact, rel=1e-6)
        got, exact, sampled = row["big"]  # 360 weights: sampled, 30 biases: exact
        assert got == pytest.approx(sampled, rel=1e-6) and got != exact
        assert got == pytest.approx(exact, rel=0.2)


def _conv_data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    x = torch.randn(16, 3, 8, 8, generator=g).contiguous(memory_format=torch.channels_last)
    return x, torch.randint(0, 3, (16,), generator=g)


@pytest.mark.parametrize("bias", [True, False])
def test_channels_last_conv_weights_are_measured(bias):
    """A channels_last conv weight is dense but not contiguous: it was left out (the layer's
    ratio was the bias's, or None). Now exact at 216 entries, and for the 1152-entry weight
    the documented sample, read in memory order."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, bias=bias), nn.ReLU(),
                          nn.Conv2d(8, 16, 3, bias=bias), nn.ReLU(), nn.Flatten(),
                          nn.Linear(16 * 4 * 4, 3)).to(memory_format=torch.channels_last)
    assert not model[0].weight.is_contiguous()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    _, seen = _train(model, opt, 9, _conv_data, F.cross_entropy)
    assert len(seen) == 6  # steps 0-4 and 8
    for row in seen:
        got, exact, _ = row["0"]
        assert got == pytest.approx(exact, rel=1e-6)
        got, exact, sampled = row["2"]
        assert got == pytest.approx(sampled, rel=1e-6) and got != exact
        assert got == pytest.approx(exact, rel=0.2)
