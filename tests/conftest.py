"""Shared fixtures and small seeded models and batches (plain-torch references: reference.py)."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from torch import nn


# the tests live in one folder per part of the package (capture/, measure/, ...; e2e/ for the
# end-to-end promises); they share this file's helpers and reference.py from here
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def pytest_configure(config):
    config.addinivalue_line("markers", "multiprocess: spawns 2 gloo ranks on CPU; bounded by a "
                            "timeout (select with -m multiprocess, skip with "
                            "-m 'not multiprocess')")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def mlp(inplace: bool = False) -> nn.Sequential:
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(inplace=inplace), nn.Linear(8, 8),
                         nn.ReLU(inplace=inplace), nn.Linear(8, 3))


def batch(n: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def loss_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(x), y)


def tanh_net(*widths: int, seed: int = 0) -> nn.Sequential:
    """Linear layers of the given widths with Tanh between them, seeded (twins are equal)."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for k, (a, b) in enumerate(zip(widths, widths[1:])):
        layers += [nn.Linear(a, b)] + ([nn.Tanh()] if k < len(widths) - 2 else [])
    return nn.Sequential(*layers)


def regression_batch(seed: int = 0, n: int = 8, features: int = 6, targets: int = 3
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, features, generator=g), torch.randn(n, targets, generator=g)
