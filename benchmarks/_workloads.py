"""The models the overhead benchmark trains: each with a fixed batch and a loss."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["Workload", "WORKLOADS", "deep_chain", "make_workload"]


@dataclass(frozen=True)
class Workload:
    """A model to train with one fixed batch (identical weights every time ``build`` is called)."""

    name: str
    description: str  # model and input, as the table states them
    build: Callable[[], nn.Module]  # a fresh model with seeded weights
    inputs: tuple[Tensor, Tensor]  # (x, target)
    loss: Callable[[Tensor, Tensor], Tensor]


def _seeded(make: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        torch.manual_seed(0)
        return make()

    return build


def _mlp() -> nn.Module:
    from gradwatch.bench.nets import DeepMLP
    return DeepMLP(depth=10, width=256, activation="sigmoid")


class _Transformer(nn.Module):
    """Token embedding, a 4-layer ``nn.TransformerEncoder`` (d=128, 4 heads, ff=512), a linear head."""

    def __init__(self, vocab: int = 1000, d_model: int = 128, layers: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        layer = nn.TransformerEncoderLayer(d_model, nhead=4, dim_feedforward=512, dropout=0.0,
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(self.encoder(self.embed(tokens))).flatten(0, 1)


class _Chain(nn.Module):
    """``layers`` Linear(width, width) layers initialised to the identity: 2 tensors per layer."""

    def __init__(self, layers: int, width: int = 8) -> None:
        super().__init__()
        self.layers = nn.Sequential(*(nn.Linear(width, width) for _ in range(layers)))
        with torch.no_grad():
            for layer in self.layers:
                layer.weight.copy_(torch.eye(width))
                layer.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def _mse_to_zero(out: Tensor, target: Tensor) -> Tensor:
    return F.mse_loss(out, target)


def _batch(gen_seed: int, x_shape: tuple[int, ...], classes: int, n: int,
           tokens: int | None = None) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(gen_seed)
    if tokens is not None:
        x = torch.randint(0, tokens, x_shape, generator=g)
    else:
        x = torch.randn(x_shape, generator=g)
    return x, torch.randint(0, classes, (n,), generator=g)


def deep_chain(tensors: int, *, width: int = 8, batch: int = 4) -> Workload:
    """The synthetic very deep model with ``tensors`` parameter tensors (``tensors // 2`` layers)."""
    layers = tensors // 2
    x = torch.randn(batch, width, generator=torch.Generator().manual_seed(0))
    return Workload(f"deep{tensors}", f"{layers} x Linear({width},{width}), batch {batch}",
                    _seeded(lambda: _Chain(layers, width)), (x, torch.zeros(batch, width)),
                    _mse_to_zero)


def _resnet18() -> nn.Module:
    import torchvision  # only here: the rest of the benchmark runs without it

    return torchvision.models.resnet18()


def make_workload(name: str) -> Workload:
    """The workload called ``name`` (one of `WORKLOADS`)."""
    if name == "mlp":
        return Workload("mlp", "sigmoid MLP 784-256x11-10, batch 32", _seeded(_mlp),
                        _batch(1, (32, 784), 10, 32), F.cross_entropy)
    if name == "resnet18":
        return Workload("resnet18", "torchvision resnet18, batch 8 x 3x64x64", _seeded(_resnet18),
                        _batch(2, (8, 3, 64, 64), 1000, 8), F.cross_entropy)
    if name == "transformer":
        return Workload("transformer", "TransformerEncoder 4 layers d=128, batch 8 x 64 tokens",
                        _seeded(_Transformer), _batch(3, (8, 64), 1000, 8 * 64, tokens=1000),
                        F.cross_entropy)
    if name == "tiny":
        return Workload("tiny", "MLP 16-16-16-4, batch 4 (smoke test)",
                        _seeded(lambda: nn.Sequential(nn.Linear(16, 16), nn.Tanh(),
                                                      nn.Linear(16, 16), nn.Tanh(),
                                                      nn.Linear(16, 4))),
                        _batch(4, (4, 16), 4, 4), F.cross_entropy)
    if name.startswith("chain") and name[5:].isdigit():
        depth = int(name[5:])
        return Workload(name, f"{depth} x (Linear(16, 16) + tanh), batch 4 (scaling.py's chain)",
                        _seeded(lambda: nn.Sequential(*(nn.Sequential(nn.Linear(16, 16),
                                                                      nn.Tanh())
                                                        for _ in range(depth)))),
                        _batch(4, (4, 16), 16, 4), F.cross_entropy)
    raise ValueError(f"Expected a workload in {WORKLOADS} or chain<L> (e.g. chain100), but got "
                     f"{name!r}.")


WORKLOADS = ("mlp", "resnet18", "transformer", "tiny")
