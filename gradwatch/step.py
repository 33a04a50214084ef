"""One step of the watch: measure the gradients, act on NaN/Inf, clip with the same norm."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

from torch import Tensor

from .hooks import user_stacklevel
from .measure import StepNumbers, device_total, read_step
from .norms import combine, per_tensor_norms, repair_norms

__all__ = ["Outcome", "measure_step", "clip_step", "clip_coef", "zero_nonfinite_", "GradStash"]


@dataclass
class Outcome:
    """What a measured step leaves for its record."""

    data: Any  # the hooks' `Collected`, or None when they were not armed
    got: StepNumbers
    present: list[bool] | None  # which watched parameters had a gradient (None: all)
    coef: float
    skipped: bool
    overflow: bool


def measure_step(watched: Any, amp: Any, policy: Any, statistics: Sequence[Any], *,
                 on_nonfinite: str, optimizer: Any, stash: GradStash, recording: bool
                 ) -> Outcome | None:
    """Measures and clips the current gradients; None when the step needs no record (or has
    no gradient). Non-finite steps are always recorded once measured."""
    w = watched
    params = [p for p in w.params if p.grad is not None]
    if not params:
        warnings.warn("GradWatch found no gradients to measure: call it after backward().",
                      RuntimeWarning, stacklevel=user_stacklevel())
        return None
    present = None if len(params) == len(w.params) else [p.grad is not None for p in w.params]
    scaled = amp.grads_scaled()
    if scaled and policy is not None:
        amp.unscale_for_clipping()
        scaled = False
    grads = [p.grad for p in params]
    norms_dev = per_tensor_norms(grads)
    checking = on_nonfinite in ("skip", "zero")
    if not (recording or checking or policy.needs_host_norm
            or norms_dev.device.type == "cpu"):  # clip on the device: no host sync
        policy.clip_(grads, device_total(norms_dev, grads), params=params,
                     is_output=w.is_output(params))
        return None
    c = w.collector
    data = c.take() if c.armed else None
    got = read_step(grads, params, norms_dev, scale=amp.loss_scale(), scaled=scaled,
                    data=data, statistics=statistics, recording=recording)
    overflow = amp.overflow(scaled, got.total)
    finite = math.isfinite(got.total)
    skipped = False
    if not finite and not overflow:
        recording = True
        if on_nonfinite == "skip":
            skipped = stash.stash(optimizer)
        elif on_nonfinite == "zero":
            zero_nonfinite_(grads)
    coef = 1.0
    if policy is not None and not (skipped or overflow):
        coef = clip_step(policy, grads, params, w.is_output(params), got.total,
                         zeroed=on_nonfinite == "zero" and not finite, recording=recording)
    if not recording:
        return None
    return Outcome(data, got, present, coef, skipped, overflow)


def clip_step(policy: Any, grads: Sequence[Tensor], params: Sequence[Tensor],
              is_output: Sequence[bool], total: float, *, zeroed: bool, recording: bool) -> float:
    """Clips with the measured total (re-measured after zeroing NaN/Inf entries); returns the
    clip coefficient on recorded steps (1.0 elsewhere, where nobody reads it)."""
    if zeroed:
        total = combine(repair_norms(per_tensor_norms(grads).tolist(), grads))
    result = policy.clip_(grads, total, params=params, is_output=is_output)
    return clip_coef(result, total, grads) if recording else 1.0


def clip_coef(result: float | Tensor | None, total: float, grads: Sequence[Tensor]) -> float:
    """The factor a policy scaled the gradients by (post/pre total norm for element-wise ones)."""
    if result is not None:
        return float(result)
    after = combine(repair_norms(per_tensor_norms(grads).tolist(), grads))
    return after / total if total > 0 and math.isfinite(total) else 1.0


def zero_nonfinite_(grads: Sequence[Tensor]) -> None:
    """Replaces NaN/Inf entries by 0 in place (sparse gradients: their values)."""
    for g in grads:
        (g._values() if g.is_sparse else g).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)


class GradStash:
    """Takes every gradient of an optimizer away for one step (so it skips the update and
    leaves its state untouched) and puts them back afterwards."""

    def __init__(self) -> None:
        self._stashed: list[tuple[Tensor, Tensor | None]] | None = None

    def stash(self, optimizer: Any) -> bool:
        if optimizer is None:
            return False
        params = [p for group in optimizer.param_groups for p in group["params"]]
        self._stashed = [(p, p.grad) for p in params]
        for p in params:
            p.grad = None
        return True

    def restore(self) -> None:
        if self._stashed is not None:
            for p, g in self._stashed:
                p.grad = g
            self._stashed = None
