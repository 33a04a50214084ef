"""Clipping policies, each applied with the norm gradwatch measured and logged.

Every policy has ``clip_(grads, total_norm, *, params, is_output)``, which changes ``grads``
in place and returns the factor the gradients were scaled by (a float, or a 0-d tensor when the
norm stayed on the device) or ``None`` when the policy works element- or unit-wise, and a
``state_dict``/``load_state_dict`` pair.
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["ClipPolicy", "GlobalNorm", "Value", "AGC", "AutoClip", "ZClip", "clip_with_norm_",
           "make_policy"]

_EPS = 1e-6  # as torch.nn.utils.clip_grad_norm_


def _by_device(grads: Sequence[Tensor]) -> dict[torch.device, list[Tensor]]:
    groups: dict[torch.device, list[Tensor]] = defaultdict(list)
    for g in grads:
        groups[g.device].append(g)
    return groups


def clip_with_norm_(grads: Sequence[Tensor], max_norm: float, total_norm: float | Tensor) -> float | Tensor:
    """Scales ``grads`` in place by ``min(1, max_norm / (total_norm + 1e-6))``.

    The same arithmetic as ``torch.nn.utils.clip_grads_with_norm_``: the factor is formed in
    float32 and always multiplied in (no host synchronisation on a tensor norm). Returns it.
    """
    if isinstance(total_norm, Tensor):
        coef = torch.clamp(max_norm / (total_norm.float() + _EPS), max=1.0)
        for device, group in _by_device(grads).items():
            torch._foreach_mul_(group, coef.to(device))
        return coef
    coef_t = torch.clamp(max_norm / (torch.tensor(total_norm, dtype=torch.float32) + _EPS), max=1.0)
    coef = coef_t.item()
    if coef < 1.0 or not math.isfinite(coef):
        for device, group in _by_device(grads).items():
            torch._foreach_mul_(group, coef_t.to(device))
    return coef


class ClipPolicy:
    """Base class: a policy that clips gradients given the measured global norm."""

    needs_host_norm = False
    """True when the policy reads the norm on the host every step (one scalar sync)."""

    def clip_(self, grads: Sequence[Tensor], total_norm: float | Tensor, *,
              params: Sequence[Tensor], is_output: Sequence[bool]) -> float | Tensor | None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state


class GlobalNorm(ClipPolicy):
    """Global-norm clipping (Pascanu, Mikolov & Bengio, ICML 2013), as
    ``torch.nn.utils.clip_grad_norm_``: if ‖g‖ > max_norm, g ← g·max_norm/(‖g‖+1e-6)."""

    def __init__(self, max_norm: float) -> None:
        if not isinstance(max_norm, (int, float)) or not 0 < max_norm < math.inf:
            raise ValueError(f"Expected `max_norm` to be a finite number > 0, but got {max_norm!r}.")
        self.max_norm = float(max_norm)

    def clip_(self, grads, total_norm, *, params, is_output):
        return clip_with_norm_(grads, self.max_norm, total_norm)

    def __repr__(self) -> str:
        return f"GlobalNorm(max_norm={self.max_norm:g})"


class Value(ClipPolicy):
    """Clamps every gradient entry to [-limit, limit], as ``torch.nn.utils.clip_grad_value_``."""

    def __init__(self, limit: float) -> None:
        if not isinstance(limit, (int, float)) or not 0 < limit < math.inf:
            raise ValueError(f"Expected `limit` to be a finite number > 0, but got {limit!r}.")
        self.limit = float(limit)

    def clip_(self, grads, total_norm, *, params, is_output):
        for group in _by_device(grads).values():
            torch._foreach_clamp_min_(group, -self.limit)
            torch._foreach_clamp_max_(group, self.limit)
        return None

    def __repr__(self) -> str:
        return f"Value(limit={self.limit:g})"


def _unitwise_norm(x: Tensor) -> Tensor:
    """Norm of each output unit (row over its fan-in); biases and scalars as one unit."""
    if x.ndim <= 1:
        return torch.linalg.vector_norm(x)
    return torch.linalg.vector_norm(x, dim=tuple(range(1, x.ndim)), keepdim=True)


class AGC(ClipPolicy):
    """Adaptive gradient clipping, unit-wise (Brock, De, Smith & Simonyan, "High-Performance
    Large-Scale Image Recognition Without Normalization", ICML 2021).

    For each unit i: if ‖G_i‖ / max(‖W_i‖, eps) > clipping, G_i ← clipping·max(‖W_i‖, eps)/‖G_i‖·G_i.
    The paper uses clipping=0.01 at batch 4096 (larger for smaller batches) and does not clip the
    final linear layer: ``skip_output=True`` leaves the output-side layer alone.
    """

    def __init__(self, clipping: float = 0.01, eps: float = 1e-3, *, skip_output: bool = True) -> None:
        if not 0 < clipping < math.inf:
            raise ValueError(f"Expected `clipping` to be a finite number > 0, but got {clipping!r}.")
        if not 0 < eps < math.inf:
            raise ValueError(f"Expected `eps` to be a finite number > 0, but got {eps!r}.")
        self.clipping, self.eps, self.skip_output = float(clipping), float(eps), skip_output

    @torch.no_grad()
    def clip_(self, grads, total_norm, *, params, is_output):
        for g, p, out in zip(grads, params, is_output):
            if (out and self.skip_output) or g.is_sparse or g.numel() == 0:
                continue
            max_norm = _unitwise_norm(p.detach()).clamp_(min=self.eps).mul_(self.clipping)
            g_norm = _unitwise_norm(g)
            factor = (max_norm / g_norm.clamp(min=1e-6)).clamp_(max=1.0)
            g.mul_(factor.to(g.dtype))
        return None

    def __repr__(self) -> str:
        return f"AGC(clipping={self.clipping:g}, eps={self.eps:g}, skip_output={self.skip_output})"


class AutoClip(ClipPolicy):
    """AutoClip (Seetharaman, Wichern, Pardo & Le Roux, "AutoClip: Adaptive Gradient Clipping for
    Source Separation Networks", MLSP 2020): clip at the p-th percentile of the history of global
    norms, the current one included. p=10 is the paper's recommendation. Non-finite norms never
    enter the history, which keeps the last ``history`` norms."""

    needs_host_norm = True

    def __init__(self, percentile: float = 10.0, *, history: int = 10_000) -> None:
        if not 0 < percentile <= 100:
            raise ValueError(f"Expected `percentile` in (0, 100], but got {percentile!r}.")
        if not isinstance(history, int) or history < 1:
            raise ValueError(f"Expected `history` to be an int >= 1, but got {history!r}.")
        self.percentile = float(percentile)
        self.norms: deque[float] = deque(maxlen=history)

    def clip_(self, grads, total_norm, *, params, is_output):
        total = float(total_norm)
        if not math.isfinite(total):
            return clip_with_norm_(grads, 1.0, total)  # as torch does with a non-finite norm
        self.norms.append(total)
        max_norm = float(np.percentile(np.fromiter(self.norms, float), self.percentile))
        if max_norm <= 0:
            return 1.0
        return clip_with_norm_(grads, max_norm, total)

    def state_dict(self):
        return {"norms": list(self.norms)}

    def load_state_dict(self, state):
        self.norms.clear()
        self.norms.extend(float(x) for x in state["norms"])

    def __repr__(self) -> str:
        return f"AutoClip(percentile={self.percentile:g}, seen={len(self.norms)})"


class ZClip(ClipPolicy):
    """ZClip (Kumar, Owen, Ashkboos et al., "ZClip: Adaptive Spike Mitigation for LLM
    Pre-Training", 2025): z-score spike clipping against EMA statistics of the global norm.

    The first ``warmup`` finite norms give the mean and population variance (no clipping then).
    Afterwards z = (g − μ)/(σ + 1e-6); if z > ``z_threshold`` the gradient is clipped to
    g* = μ + (z_threshold²/z)·σ (the reciprocal rule). μ and σ² are then updated as EMAs with
    momentum ``alpha`` using the clipped norm. This is what ``clip="auto"`` uses.
    """

    needs_host_norm = True

    def __init__(self, alpha: float = 0.97, z_threshold: float = 2.5, warmup: int = 25) -> None:
        if not 0 < alpha < 1:
            raise ValueError(f"Expected `alpha` in (0, 1), but got {alpha!r}.")
        if not 0 < z_threshold < math.inf:
            raise ValueError(f"Expected `z_threshold` > 0, but got {z_threshold!r}.")
        if not isinstance(warmup, int) or warmup < 1:
            raise ValueError(f"Expected `warmup` to be an int >= 1, but got {warmup!r}.")
        self.alpha, self.z_threshold, self.warmup = alpha, z_threshold, warmup
        self.mean: float | None = None
        self.var = 0.0
        self._warm: list[float] = []

    def clip_(self, grads, total_norm, *, params, is_output):
        g = float(total_norm)
        if not math.isfinite(g):
            return clip_with_norm_(grads, 1.0, g)
        if self.mean is None:
            self._warm.append(g)
            if len(self._warm) == self.warmup:
                self.mean = float(np.mean(self._warm))
                self.var = float(np.var(self._warm))
                self._warm = []
            return 1.0
        std = math.sqrt(self.var)
        z = (g - self.mean) / (std + _EPS)
        coef, kept = 1.0, g
        if z > self.z_threshold:
            kept = self.mean + (self.z_threshold ** 2 / z) * std
            coef = clip_with_norm_(grads, kept, g)
        delta = kept - self.mean
        self.mean = self.alpha * self.mean + (1 - self.alpha) * kept
        self.var = self.alpha * self.var + (1 - self.alpha) * delta * delta
        return coef

    def state_dict(self):
        return {"mean": self.mean, "var": self.var, "warm": list(self._warm)}

    def load_state_dict(self, state):
        self.mean = None if state["mean"] is None else float(state["mean"])
        self.var = float(state["var"])
        self._warm = [float(x) for x in state["warm"]]

    def __repr__(self) -> str:
        return (f"ZClip(alpha={self.alpha:g}, z_threshold={self.z_threshold:g}, "
                f"warmup={self.warmup}, mean={self.mean})")


def make_policy(clip: float | str | ClipPolicy | None) -> ClipPolicy | None:
    """Turns the ``clip=`` argument of `GradWatch` into a policy (or None for no clipping)."""
    if clip is None or isinstance(clip, ClipPolicy):
        return clip
    if isinstance(clip, str):
        if clip == "auto":
            return ZClip()
        raise ValueError(f"Expected `clip` to be a max norm, \"auto\", a gradwatch.clip policy or "
                         f"None, but got the string {clip!r}. Use clip=\"auto\" for ZClip.")
    if isinstance(clip, (int, float)) and not isinstance(clip, bool):
        return GlobalNorm(clip)
    raise TypeError(f"Expected `clip` to be a max norm, \"auto\", a gradwatch.clip policy or None, "
                    f"but got {type(clip).__name__}.")
