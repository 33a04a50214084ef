"""Plain-torch references the tests compare gradwatch with: no gradwatch import in here."""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["AttentionNet", "norm", "grad_norm", "param_grad_norms", "output_grads", "output_grad_norms",
           "train_step", "agc_", "keras_clipnorm"]


def norm(tensors: Iterable[Tensor]) -> float:
    """The L2 norm over all entries of ``tensors`` in float64 (sparse ones densified; 0.0 for
    none)."""
    flat = [(t.to_dense() if t.is_sparse else t).detach().double().flatten() for t in tensors]
    return torch.linalg.vector_norm(torch.cat(flat)).item() if flat else 0.0


def grad_norm(params: Iterable[Tensor]) -> float:
    """The float64 L2 norm of the gradients of ``params`` (parameters without one left out)."""
    return norm(p.grad for p in params if p.grad is not None)


def param_grad_norms(model: nn.Module, *, divide: float = 1.0) -> dict[str, float]:
    """Float64 norm of each module's own parameter gradients (divided by ``divide``), keyed as
    gradwatch names layers; a shared (tied) parameter belongs to the first module owning it and
    modules without any gradient are left out."""
    out, seen = {}, set()
    for name, module in model.named_modules():
        params = [p for p in module.parameters(recurse=False)
                  if p.grad is not None and id(p) not in seen]
        seen.update(map(id, params))
        if params:
            out[name or "(root)"] = grad_norm(params) / divide
    return out


def output_grads(model: nn.Module, run: Callable[[], object],
                 names: Sequence[str] | None = None) -> dict[str, list[Tensor]]:
    """The gradient w.r.t. every output tensor of the named modules, one entry per call.

    ``run`` does the forward and the backward pass; a plain-torch forward hook calls
    ``retain_grad`` on each floating output (tuples and dicts included) for its duration.
    Default ``names``: the modules that directly own a parameter.
    """
    if names is None:
        names = [n or "(root)" for n, m in model.named_modules()
                 if any(True for _ in m.parameters(recurse=False))]
    kept: dict[str, list[Tensor]] = {n: [] for n in names}

    def keep(name: str):
        def hook(module, args, out):
            stack = [out]
            while stack:
                t = stack.pop(0)
                if isinstance(t, dict):
                    stack[:0] = list(t.values())
                elif isinstance(t, (tuple, list)):
                    stack[:0] = list(t)
                elif isinstance(t, Tensor) and t.requires_grad and t.is_floating_point():
                    t.retain_grad()
                    kept[name].append(t)
        return hook

    handles = [model.get_submodule(n if n != "(root)" else "").register_forward_hook(keep(n))
               for n in names]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return {n: [t.grad.detach() for t in ts if t.grad is not None] for n, ts in kept.items()}


def output_grad_norms(model: nn.Module, run: Callable[[], object],
                      names: Sequence[str] | None = None) -> dict[str, float]:
    """`output_grads` reduced to one float64 norm per module over all its calls and outputs."""
    return {n: norm(gs) for n, gs in output_grads(model, run, names).items() if gs}


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer,
               loss: Callable[[nn.Module], Tensor], *, max_norm: float | None = None,
               clip: Callable[[list[nn.Parameter]], object] | None = None) -> Tensor | None:
    """One plain step: zero_grad, backward, optional ``clip_grad_norm_(max_norm)`` or
    ``clip(params)``, ``optimizer.step()``; returns clip_grad_norm_'s pre-clip total norm."""
    optimizer.zero_grad()
    loss(model).backward()
    params = [p for p in model.parameters() if p.grad is not None]
    total = torch.nn.utils.clip_grad_norm_(params, max_norm) if max_norm is not None else None
    if clip is not None:
        clip(params)
    optimizer.step()
    return total


def agc_(grad: Tensor, weight: Tensor, clipping: float, eps: float = 1e-3) -> Tensor:
    """Brock et al. 2021 by hand, unit by unit in float64: unit i (an output row over its
    fan-in; a 1-d tensor is one unit) with ‖G_i‖/max(‖W_i‖, eps) > clipping becomes
    clipping·max(‖W_i‖, eps)/‖G_i‖·G_i. Returns the new gradient in float64."""
    g, w = grad.detach().double().clone(), weight.detach().double()
    units = [(g, w)] if g.ndim <= 1 else list(zip(g, w))
    for gi, wi in units:
        limit = clipping * max(wi.norm().item(), eps)
        if gi.norm().item() > limit:
            gi.mul_(limit / gi.norm().item())
    return g


def keras_clipnorm(g: Tensor, c: float) -> Tensor:
    """keras.ops.clip_by_norm's g·c / max(‖g‖, c) in float64 (returned in float64)."""
    g64 = g.detach().double()
    return g64 * c / torch.clamp(torch.linalg.vector_norm(g64), min=c)


class AttentionNet(nn.Module):
    """nn.MultiheadAttention applies out_proj's weights without calling out_proj; the head is
    the Linear after it."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.attn(x, x, x, need_weights=False)[0]).mean(1)
