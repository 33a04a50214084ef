"""Reference models for the vanishing/exploding-gradient experiments of ``gradwatch.bench``.

Plain ``nn.Module``s with readable layer names (``layers.3``, ``hidden.2.linear``, ``output``) so
that gradwatch's per-layer records read like the papers: Glorot & Bengio (AISTATS 2010), He et al.
(ICCV 2015, CVPR 2016), Ioffe & Szegedy (ICML 2015). Nothing in the gradwatch core imports this.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "Activation",
    "Init",
    "TanhChain",
    "IdentityChain",
    "init_linear_",
    "DeepMLP",
    "MnistResNet",
    "he_normal_",
]

Activation = Literal["sigmoid", "tanh", "relu", "linear"]
Init = Literal["glorot_uniform", "xavier", "he", "small_normal"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU, "linear": nn.Identity,
}
_INITS = ("glorot_uniform", "xavier", "he", "small_normal")


def _check_choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"Expected `{name}` to be one of {', '.join(map(repr, allowed))}, "
                         f"but got {value!r}.")


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"Expected `{name}` to be a positive int, but got {value!r}.")


class TanhChain(nn.Module):
    """``depth`` scalar layers ``x <- tanh(w_i * x)`` with ``w_i ~ scale * N(0, 1)``, no bias.

    Args:
        depth: Number of 1->1 layers.
        scale: Standard deviation of the weights.
        generator: Random generator for the weights (seed it for a reproducible chain).
    """

    def __init__(self, depth: int = 20, *, scale: float = 1.0,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        _check_positive("depth", depth)
        self.scale = float(scale)
        self.layers = nn.ModuleList(nn.Linear(1, 1, bias=False) for _ in range(depth))
        with torch.no_grad():
            for layer in self.layers:
                layer.weight.copy_(torch.randn(1, 1, generator=generator) * scale)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return x

    def weights(self) -> list[float]:
        """The scalar weights, input side first."""
        return [layer.weight.detach().item() for layer in self.layers]


class IdentityChain(nn.Module):
    """``depth`` linear layers with ``W = c * I`` (no bias, no activation): output ``c**depth * x``.

    The gradient with respect to each layer's output is ``c`` times the next one's, exactly.

    Args:
        depth: Number of layers.
        width: Features per layer.
        c: The diagonal value.
    """

    def __init__(self, depth: int = 100, *, width: int = 4, c: float = 2.0) -> None:
        super().__init__()
        _check_positive("depth", depth)
        _check_positive("width", width)
        self.c = float(c)
        self.layers = nn.ModuleList(nn.Linear(width, width, bias=False) for _ in range(depth))
        with torch.no_grad():
            for layer in self.layers:
                layer.weight.copy_(torch.eye(width) * c)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def init_linear_(layer: nn.Linear, init: Init) -> None:
    """Initialises a dense layer in place: weights by ``init``, biases zero (Keras' defaults)."""
    _check_choice("init", init, _INITS)
    with torch.no_grad():
        if init == "glorot_uniform":
            nn.init.xavier_uniform_(layer.weight)
        elif init == "xavier":
            nn.init.xavier_normal_(layer.weight)
        elif init == "he":
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        else:
            nn.init.normal_(layer.weight, std=0.01)
        if layer.bias is not None:
            layer.bias.zero_()


class _Block(nn.Module):
    """One hidden layer: ``linear`` (+ ``bn``) + activation, optionally added to its input."""

    def __init__(self, width: int, activation: Activation, batch_norm: bool, residual: bool,
                 init: Init) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)
        init_linear_(self.linear, init)
        self.bn = nn.BatchNorm1d(width) if batch_norm else None
        self.act = _ACTIVATIONS[activation]()
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        y = self.linear(x)
        if self.bn is not None:
            y = self.bn(y)
        y = self.act(y)
        return x + y if self.residual else y


class DeepMLP(nn.Module):
    """``in -> width`` layer, ``depth`` hidden ``width -> width`` layers, ``width -> classes`` logits.

    Layers are named ``input``, ``hidden.<i>.linear`` (``hidden.<i>.bn``) and ``output``. The
    output gives logits: pair it with ``cross_entropy`` (softmax + log loss).

    Args:
        depth: Number of hidden layers after the input layer.
        width: Hidden width.
        activation: Nonlinearity after every hidden layer (``linear`` for none).
        init: Weight initialisation of every dense layer (biases start at zero).
        batch_norm: Batch norm before each activation.
        residual: Hidden blocks compute ``x + f(x)``.
        in_features: Input width (784 for flattened MNIST).
        classes: Number of outputs.
    """

    def __init__(self, depth: int = 10, *, width: int = 256, activation: Activation = "sigmoid",
                 init: Init = "glorot_uniform", batch_norm: bool = False, residual: bool = False,
                 in_features: int = 784, classes: int = 10) -> None:
        super().__init__()
        _check_positive("depth", depth)
        _check_positive("width", width)
        _check_choice("activation", activation, tuple(_ACTIVATIONS))
        _check_choice("init", init, _INITS)
        self.config = dict(depth=depth, width=width, activation=activation, init=init,
                           batch_norm=batch_norm, residual=residual)
        self.input = nn.Linear(in_features, width)
        init_linear_(self.input, init)
        self.input_bn = nn.BatchNorm1d(width) if batch_norm else None
        self.input_act = _ACTIVATIONS[activation]()
        self.hidden = nn.ModuleList(_Block(width, activation, batch_norm, residual, init)
                                    for _ in range(depth))
        self.output = nn.Linear(width, classes)
        init_linear_(self.output, init)

    def forward(self, x: Tensor) -> Tensor:
        x = self.input(x.flatten(1))
        if self.input_bn is not None:
            x = self.input_bn(x)
        x = self.input_act(x)
        for block in self.hidden:
            x = block(x)
        return self.output(x)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config.items())


from .resnet import MnistResNet, he_normal_  # noqa: E402  (the ResNet lives in its own module)
