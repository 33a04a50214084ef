"""Small models the zoo builds itself (MLPs, CNNs, RNN classifiers, broken layers) and plain probes."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["BadBackward", "LogFeatures", "LogGain", "RNNClassifier", "STELinear", "act_shares",
           "mlp", "small_cnn", "time_ratio"]


def mlp(sizes: list[int], act: Callable[[], nn.Module], *, std: float | None = None,
        gain: float | None = None, bias: float = 0.0, init: str | None = None) -> nn.Sequential:
    """Flatten, then Linear/act blocks over ``sizes`` (no act after the last Linear).

    Init: ``std`` (N(0, std^2)), ``gain`` (N(0, gain^2 / fan_in)), ``init="he"`` / ``"xavier"``,
    or torch's default when all are None; every bias is filled with ``bias`` unless default.
    """
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = nn.Linear(a, b)
        if std is not None or gain is not None:
            nn.init.normal_(lin.weight, 0.0, std if std is not None else gain / a ** 0.5)
        elif init == "he":
            nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
        elif init == "xavier":
            nn.init.xavier_normal_(lin.weight)
        if std is not None or gain is not None or init is not None or bias:
            nn.init.constant_(lin.bias, bias)
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def small_cnn(channels: int = 3, classes: int = 10, width: int = 16) -> nn.Sequential:
    """Conv-BN-ReLU x3 with pooling, then a linear head (a textbook small CNN)."""
    def block(a: int, b: int) -> list[nn.Module]:
        return [nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True),
                nn.MaxPool2d(2)]
    return nn.Sequential(*block(channels, width), *block(width, 2 * width),
                         *block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4 * width, classes))


class RNNClassifier(nn.Module):
    """A recurrent encoder (``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``) read at the last step."""

    def __init__(self, cell: str, features: int = 4, hidden: int = 32, classes: int = 2,
                 **kwargs: Any) -> None:
        super().__init__()
        self.rnn = getattr(nn, cell)(features, hidden, batch_first=True, **kwargs)
        out = hidden * (2 if kwargs.get("bidirectional") else 1)
        self.head = nn.Linear(out, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


class LogFeatures(nn.Linear):
    """A linear layer whose output is ``log(relu(Wx + b))``: log of zero when a unit is off."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(F.relu(super().forward(x)))


class LogGain(nn.Module):
    """A per-feature gain stored in log space, ``x * exp(log_gain)``, initialised to ``init``."""

    def __init__(self, features: int, init: float) -> None:
        super().__init__()
        self.log_gain = nn.Parameter(torch.full((features,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.exp(self.log_gain)


class _BadClampFn(torch.autograd.Function):
    """Clamp to [lo, hi] whose hand-written backward divides by the width of a degenerate range."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.clamp(-1.0, 1.0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        inside = ((x > -1.0) & (x < 1.0)).to(grad.dtype)
        width = torch.zeros((), dtype=grad.dtype)  # the bug: the range width is taken as 0
        return grad * inside / width


class STELinear(nn.Linear):
    """A linear layer followed by the buggy clamp: finite forward, NaN/Inf gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _BadClampFn.apply(super().forward(x))


class _BadGeluFn(torch.autograd.Function):
    """GELU (tanh form) whose hand-written backward multiplies by ``(0 * x) / (0 * x)``: NaN."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return F.gelu(x, approximate="tanh")

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        x_ = x.detach().requires_grad_(True)
        with torch.enable_grad():
            (d,) = torch.autograd.grad(F.gelu(x_, approximate="tanh").sum(), x_)
        return grad * d * (x * 0.0) / (x * 0.0)  # the bug: 0/0


class BadBackward(nn.Module):
    """An activation module using `_BadGeluFn` (no parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _BadGeluFn.apply(x)


def time_ratio(model: nn.Module, batch: tuple[Any, ...]) -> dict[str, float]:
    """||dL/dx_0|| / ||dL/dx_T|| for a sequence classifier (cross-entropy), plain autograd."""
    x, y = batch
    x = x.clone().requires_grad_(True)
    F.cross_entropy(model(x), y).backward()
    g = x.grad.norm(dim=(0, 2))
    return {"time_ratio": float(g[0] / g[-1]), "grad_first_step": float(g[0]),
            "grad_last_step": float(g[-1])}


def act_shares(model: nn.Module, batch: tuple[Any, ...]) -> dict[str, float]:
    """Dead share of ReLU units (zero on the whole batch) and saturated share of tanh/sigmoid outputs."""
    dead, units, sat, outs = 0, 0, 0, 0
    handles = []

    def hook(m: nn.Module, _i: Any, out: torch.Tensor) -> None:
        nonlocal dead, units, sat, outs
        if isinstance(m, nn.ReLU):
            per_unit = (out.flatten(1) > 0).any(0)
            dead, units = dead + int((~per_unit).sum()), units + per_unit.numel()
        else:
            lo, hi = (-1.0, 1.0) if isinstance(m, nn.Tanh) else (0.0, 1.0)
            near = (out - lo).abs().le(0.01 * (hi - lo)) | (hi - out).abs().le(0.01 * (hi - lo))
            sat, outs = sat + int(near.sum()), outs + near.numel()
    for m in model.modules():
        if isinstance(m, (nn.ReLU, nn.Tanh, nn.Sigmoid)):
            handles.append(m.register_forward_hook(hook))
    with torch.no_grad():
        model(batch[0])
    for h in handles:
        h.remove()
    return {"dead_share": dead / units if units else 0.0, "sat_share": sat / outs if outs else 0.0}
