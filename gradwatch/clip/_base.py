"""The policy interface and the global-norm scaling every norm-based policy shares."""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from ..verdict.scalars import as_real

__all__ = ["ClipPolicy", "clip_with_norm_", "factor_dtype"]

EPS = 1e-6  # as torch.nn.utils.clip_grad_norm_


def check_flag(name: str, value: Any) -> bool:
    """``value`` if it is True or False (numpy's bool included), else a TypeError naming
    ``name`` (``bool("False")`` would be True)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"Expected `{name}` to be True or False, but got "
                        f"{type(value).__name__} {value!r:.40}.")
    return bool(value)


def check_norms(name: str, value: Any, owner: str) -> list[float]:
    """A saved list of norms (a policy's state ``name``, e.g. "ZClip state['warm']"): each a
    finite float >= 0, else a TypeError/ValueError naming the entry."""
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"Expected {name} to be a list of norms, but got "
                        f"{type(value).__name__}; pass what {owner}.state_dict() returned.")
    return [as_real(f"{name}[{k}]", x, "to be a finite norm >= 0", lambda v: 0 <= v < math.inf)
            for k, x in enumerate(value)]


def check_positive(name: str, value: Any, *, fix: str = "") -> float:
    """``float(value)`` if it is a finite real number > 0 (numpy and 0-d tensor scalars
    included), else a TypeError (not a number) or ValueError naming ``name``."""
    return as_real(name, value, "to be a finite number > 0", lambda v: 0 < v < math.inf,
                   fix=fix)


def by_device_and_dtype(grads: Sequence[Tensor]) -> dict[tuple[torch.device, torch.dtype],
                                                         list[Tensor]]:
    """Groups ``grads`` as torch's clipping functions do (one foreach call per group)."""
    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = defaultdict(list)
    for g in grads:
        groups[(g.device, g.dtype)].append(g)
    return groups


def factor_dtype(grads: Sequence[Tensor]) -> torch.dtype:
    """The dtype ``clip_grad_norm_`` forms its total norm and factor in: the gradients' norm
    dtypes (real: float32 for complex64, float64 for complex128) promoted together (float64 if
    any gradient is float64; bfloat16 for bfloat16 gradients)."""
    return functools.reduce(torch.promote_types, {g.dtype.to_real() for g in grads})


def _clamped(max_norm: float, total: Tensor) -> Tensor:
    """``min(1, max_norm / (total + 1e-6))`` in ``total``'s dtype, as ``clip_grads_with_norm_``
    forms it."""
    return torch.clamp(max_norm / (total + EPS), max=1.0)


def _device_factor(max_norm: float, total: Tensor, dtype: torch.dtype) -> Tensor:
    """The factor for a 0-d tensor ``total`` in ``dtype``, on ``total``'s device (no host sync):
    formed in ``dtype``, or, where ``total`` is finite but past ``dtype``'s range (float32
    gradients with a norm above 3.4e38), formed in float64 and rounded to ``dtype``, instead of
    the 0 an inf total would give."""
    narrow = total.to(dtype)
    coef = _clamped(max_norm, narrow)
    if torch.finfo(dtype).max >= torch.finfo(total.dtype).max:  # every total fits
        return coef
    past = torch.isinf(narrow) & torch.isfinite(total)
    return torch.where(past, _clamped(max_norm, total.double()).to(dtype), coef)


def _host_factor(max_norm: float, total: float, dtype: torch.dtype) -> Tensor:
    """`_device_factor` for a float ``total``: a 0-d CPU tensor in ``dtype``."""
    total_t = torch.tensor(total, dtype=dtype)
    if math.isinf(total_t.item()) and math.isfinite(total):  # past dtype's range
        return _clamped(max_norm, torch.tensor(total, dtype=torch.float64)).to(dtype)
    return _clamped(max_norm, total_t)


@torch.no_grad()  # (gradients made with create_graph=True: the factor is no graph op)
def clip_with_norm_(grads: Sequence[Tensor], max_norm: float,
                    total_norm: float | Tensor) -> float | Tensor:
    """Scales ``grads`` in place by ``min(1, max_norm / (total_norm + 1e-6))``; returns the factor.

    The arithmetic of ``torch.nn.utils.clip_grads_with_norm_``: the factor is a tensor in
    `factor_dtype` (``max_norm / (total_norm + 1e-6)``, clamped at 1) multiplied into every
    (device, dtype) group with ``torch._foreach_mul_``, so the result is bit-identical to
    ``clip_grad_norm_(params, max_norm)`` given the total norm it computes. A finite total past
    the factor dtype's range (float32 gradients whose exact norm exceeds 3.4e38, where torch's
    own total is inf and its factor 0) gets its factor formed in float64 and rounded to that
    dtype (`_device_factor`), so the gradients are scaled to ``max_norm`` instead. A tensor
    ``total_norm`` never leaves the device (the factor is always multiplied in, no host sync) and
    the factor is returned as a 0-d tensor; a float one gives a float, and a factor of exactly 1
    is not multiplied in (``x * 1 == x``).
    """
    if not grads:
        return 1.0
    dtype = factor_dtype(grads)
    if isinstance(total_norm, Tensor):
        coef = _device_factor(max_norm, total_norm, dtype)
        for (device, _), group in by_device_and_dtype(grads).items():
            torch._foreach_mul_(group, coef.to(device))
        return coef
    coef_t = _host_factor(max_norm, total_norm, dtype)
    coef = coef_t.item()
    if coef != 1.0:  # a NaN factor is multiplied in too, as torch does
        for (device, _), group in by_device_and_dtype(grads).items():
            torch._foreach_mul_(group, coef_t.to(device))
    return coef


class ClipPolicy:
    """Base class: a policy that clips gradients given the measured global norm.

    Subclasses implement `clip_` and, when they keep statistics across steps, `state_dict` /
    `load_state_dict` (the round trip restores the policy exactly).
    """

    needs_host_norm = False
    """True when the policy reads the norm on the host every step (one scalar sync)."""

    def clip_(self, grads: Sequence[Tensor], total_norm: float | Tensor, *,
              params: Sequence[Tensor], is_output: Sequence[bool]) -> float | Tensor | None:
        """Clips ``grads`` in place.

        Args:
            grads: The gradients, in the order of ``params``.
            total_norm: Their global L2 norm as gradwatch measured it: a float, or a 0-d tensor
                on the device when `needs_host_norm` is False and the step is not recorded.
            params: The parameters the gradients belong to.
            is_output: For each parameter, whether it belongs to the output-side layer.

        Returns:
            The factor every gradient was multiplied by (a float or a 0-d tensor), or None when
            the policy scales entries, units or tensors differently.
        """
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """The statistics the policy carries across steps (none for a stateless policy)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what `state_dict` returned (a stateless policy has nothing to restore)."""
        del state
