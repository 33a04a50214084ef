"""Saturation needs both of its conditions: most of a hidden sigmoid/tanh's outputs at their
bounds, and a depth trend that shows the cost (the input side starved). Where there is no trend
(a Siamese net runs every layer twice per forward pass) the cost is not known: quiet."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from gradwatch import GradWatch


def _biased_tanh() -> nn.Sequential:
    """The zoo's saturate_tanh_bias at a smaller width: 4 tanh layers, hidden biases +5."""
    torch.manual_seed(0)
    widths = [32, 64, 64, 64, 64]
    layers: list[nn.Module] = []
    for a, b in zip(widths, widths[1:]):
        lin = nn.Linear(a, b)
        nn.init.xavier_uniform_(lin.weight)
        nn.init.constant_(lin.bias, 5.0)
        layers += [lin, nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(64, 10))


class _Siamese(nn.Module):
    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.encoder(a) - self.encoder(b)


@pytest.mark.parametrize("siamese", [False, True])
def test_saturation_is_found_with_its_cost_and_quiet_without_a_trend(siamese):
    net = _biased_tanh()
    model = _Siamese(net) if siamese else net
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with GradWatch(model, optimizer=opt) as watch:
            for _ in range(30):
                x, y = torch.randn(64, 32, generator=g), torch.randint(0, 10, (64,), generator=g)
                opt.zero_grad()
                out = model(x, torch.randn(64, 32, generator=g)) if siamese else model(x)
                loss = nn.functional.cross_entropy(out, y)
                loss.backward()
                watch.note_loss(loss)
                opt.step()
    # the hidden tanh layers are saturated in both (measured against plain torch)
    with torch.no_grad():
        h, fracs = torch.randn(64, 32, generator=g), []
        for m in net:
            h = m(h)
            if isinstance(m, nn.Tanh):
                fracs.append((h.abs() >= 0.99).double().mean().item())
    assert min(fracs) > 0.8
    kinds = [f.kind for f in watch.diagnose()]
    if siamese:
        assert watch._watched.forward.repeated  # every layer runs twice: no depth trend
        assert "saturation" not in kinds
    else:
        assert "saturation" in kinds
