"""Small models the zoo builds itself (MLPs, CNNs, RNN classifiers, broken layers) and plain probes."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["BadBackward", "LoRA", "LogFeatures", "LogGain", "PostActResMLP", "RNNClassifier",
           "STELinear", "ZeroBranchResMLP", "act_shares", "add_lora", "mlp", "small_cnn",
           "time_ratio", "zero_grads"]


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


class LoRA(nn.Module):
    """A frozen layer plus a trainable low-rank update, ``base(x) + B(A(x)) * alpha / rank``
    (Hu et al. 2022). Standard init: A random (Kaiming uniform), B zero, so only A's gradient
    is 0 at step 0; ``zero_a=True`` also zeroes A, and then neither factor ever gets one."""

    def __init__(self, base: nn.Module, d_in: int, d_out: int, rank: int = 4,
                 alpha: float = 8.0, zero_a: bool = False) -> None:
        super().__init__()
        self.base, self.scale = base, alpha / rank
        for p in base.parameters():
            p.requires_grad_(False)
        self.A = nn.Linear(d_in, rank, bias=False)
        self.B = nn.Linear(rank, d_out, bias=False)
        nn.init.zeros_(self.B.weight)
        if zero_a:
            nn.init.zeros_(self.A.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.B(self.A(x)) * self.scale


def add_lora(model: nn.Module, types: tuple[type, ...], rank: int = 4,
             zero_a: bool = False) -> nn.Module:
    """Freezes ``model`` and wraps every submodule of one of ``types`` (``nn.Linear``, or
    Transformers' ``Conv1D``) in a `LoRA`; returns the model."""
    for p in model.parameters():
        p.requires_grad_(False)
    for name, child in list(model.named_children()):
        if isinstance(child, types):
            w = child.weight  # Linear: (out, in); Conv1D: (in, out)
            d_in, d_out = (w.shape[1], w.shape[0]) if isinstance(child, nn.Linear) else w.shape
            setattr(model, name, LoRA(child, d_in, d_out, rank, zero_a=zero_a))
        else:
            add_lora(child, types, rank, zero_a)
    return model


class PostActResMLP(nn.Module):
    """Residual MLP blocks with the activation after the sum, ``h = act(h + W2 act(W1 h))``, as
    in the original ResNet's basic block, and no normalisation."""

    def __init__(self, act: Callable[[], nn.Module], dim: int = 64, blocks: int = 8,
                 d_in: int = 3 * 16 * 16, classes: int = 10) -> None:
        super().__init__()
        self.inp = nn.Linear(d_in, dim)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(dim, dim), act(), nn.Linear(dim, dim))
                                    for _ in range(blocks))
        self.acts = nn.ModuleList(act() for _ in range(blocks + 1))
        self.out = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.acts[0](self.inp(x.flatten(1)))
        for block, act in zip(self.blocks, self.acts[1:]):
            h = act(h + block(h))
        return self.out(h)


class ZeroBranchResMLP(nn.Module):
    """Pre-LN residual MLP blocks ``h + gamma * W2 gelu(W1 LN(h))`` whose last layer is
    zero-initialised (zero-init-last) and whose LayerScale ``gamma`` starts at ``gamma0``: with
    both at 0 the branch's every gradient is 0 (each factor's gradient is the other's value)."""

    def __init__(self, dim: int = 64, blocks: int = 3, gamma0: float = 0.0,
                 d_in: int = 3 * 16 * 16, classes: int = 10) -> None:
        super().__init__()
        self.inp = nn.Linear(d_in, dim)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim),
                                                  nn.GELU(), nn.Linear(2 * dim, dim))
                                    for _ in range(blocks))
        for block in self.blocks:
            nn.init.zeros_(block[-1].weight)
            nn.init.zeros_(block[-1].bias)
        self.gamma = nn.ParameterList(nn.Parameter(torch.full((dim,), gamma0))
                                      for _ in range(blocks))
        self.out = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x.flatten(1))
        for block, gamma in zip(self.blocks, self.gamma):
            h = h + gamma * block(h)
        return self.out(h)


def zero_grads(loss: Callable[[nn.Module, tuple[Any, ...]], torch.Tensor], prefix: str = ""
               ) -> Callable[[nn.Module, tuple[Any, ...]], dict[str, float]]:
    """A probe: one backward of ``loss`` in plain autograd; how many trainable tensors get a
    gradient exactly 0 (or none), and the largest gradient norm w.r.t. a parameter-owning
    module's output (that a gradient enters the model); keys start with ``prefix``."""
    def probe(model: nn.Module, batch: tuple[Any, ...]) -> dict[str, float]:
        outs: list[float] = []
        handles = []

        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor) and out.requires_grad:
                out.register_hook(lambda g: outs.append(float(g.double().norm())))
        for m in model.modules():
            if any(True for _ in m.parameters(recurse=False)):
                handles.append(m.register_forward_hook(hook))
        model.zero_grad(set_to_none=True)
        loss(model, batch).backward()
        for h in handles:
            h.remove()
        params = [p for p in model.parameters() if p.requires_grad]
        zero = sum(p.grad is None or not bool(p.grad.ne(0).any()) for p in params)
        return {f"{prefix}zero_tensors": float(zero),
                f"{prefix}trainable_tensors": float(len(params)),
                f"{prefix}out_grad": max(outs, default=0.0)}
    return probe


def weight_sum(prefix: str = "") -> Callable[[nn.Module, tuple[Any, ...]], dict[str, float]]:
    """A probe: the float64 sum of every trainable entry's magnitude (the same before and
    after training only when the optimizer moved no weight), under ``prefix + "weight_sum"``."""
    def probe(model: nn.Module, batch: tuple[Any, ...]) -> dict[str, float]:
        with torch.no_grad():
            total = sum(float(p.double().abs().sum()) for p in model.parameters()
                        if p.requires_grad)
        return {f"{prefix}weight_sum": total}
    return probe
