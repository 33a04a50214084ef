"""One step of the watch: measure the gradients, act on NaN/Inf, clip with the same norm."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from ..capture.hooks import user_stacklevel
from .host import InFlight
from .read import StepNumbers, device_total, finish_read, read_norms, read_step, \
    start_read
from ..capture.distributed import has_dtensor
from .norms import TINY, combine, per_tensor_norms, repair_norms
from .split import NATIVE, as_torch, split_norms

__all__ = ["Outcome", "measure_step", "clip_step", "clip_coef", "zero_nonfinite_", "GradStash"]


@dataclass
class Outcome:
    """What a measured step leaves for its record."""

    data: Any  # the hooks' `Collected`, or None when they were not armed
    got: StepNumbers | None  # None while the copy is in flight (`inflight`)
    present: list[bool] | None  # which watched parameters had a gradient (None: all)
    coef: float
    skipped: bool
    overflow: bool
    inflight: InFlight | None = None
    total_of: np.ndarray | None = None  # the gradients the total is over (None: all)
    gradless: bool = False  # no watched parameter had a gradient (``got`` is None)
    loss: float | None = None  # the step's loss, read on a gradless step only

    def finish(self) -> StepNumbers:
        """The step's numbers (waits for a deferred copy; normally long done)."""
        if self.got is None:
            host = self.inflight.result()
            self.got = finish_read(host, False, total_of=self.total_of)
            self.coef = host["coef"][0]
            self.inflight = None
        return self.got


def measure_step(watched: Any, amp: Any, policy: Any, statistics: Sequence[Any], *,
                 on_nonfinite: str, optimizer: Any, stash: GradStash, recording: bool,
                 defer: bool = False, loss: Any = None) -> Outcome | None:
    """Measures and clips the current gradients; None when the step needs no record (or has
    no gradient). Non-finite steps are always recorded once measured. With ``defer`` (and no
    option that needs the host now: AMP, "raise"/"skip", a policy reading the norm), the copy
    is started without waiting and `Outcome.inflight` is finished at the next step. ``loss``
    (the user's loss of the step: a 0-d tensor or a float) travels with the record's numbers."""
    w = watched
    grads = [p.grad for p in w.params]  # one read of each .grad (a property: not free)
    present = None
    params = w.params
    if any(g is None for g in grads):  # frozen since, unused in this step, or no backward
        present = [g is not None for g in grads]
        params = [p for p, g in zip(w.params, grads) if g is not None]
        grads = [g for g in grads if g is not None]
    if not params:
        warnings.warn(_no_gradient_message(optimizer is not None), RuntimeWarning,
                      stacklevel=user_stacklevel())
        if not (w.params and recording and optimizer is not None):
            return None  # (nothing trainable; or watch.step() called before backward)
        data = w.collector.take(True) if w.collector.armed else None
        if data is not None:
            w.forward.learn(data.completed, data.passes, data.loose, data.same_input)
        return Outcome(data, None, None, 1.0, False, False, gradless=True,
                       loss=None if loss is None else float(loss))
    scaled = amp.grads_scaled()
    if scaled and policy is not None:
        amp.unscale_for_clipping()
        scaled = False
        grads = [p.grad for p in params]
    exact = w.tiny if present is None and w.tiny is not None and w.tiny.any() \
        and grads[0].device.type == "cpu" and recording and amp.scaler is None else None
    norms_dev = per_tensor_norms(grads) if exact is None else split_norms(grads, exact)
    sel = w.stepped_among(present)  # the total and clipping read what the optimizer steps
    cgrads, cparams = _subset(grads, sel), _subset(params, sel)
    checking = on_nonfinite != "warn"  # "raise", "skip", "zero": every step
    if not (recording or checking or policy.needs_host_norm
            or norms_dev.device.type == "cpu"):  # clip on the device: no host sync
        total = device_total(norms_dev, grads, sel)[0]
        policy.clip_(cgrads, total, params=cparams, is_output=w.is_output(cparams))
        return None
    c = w.collector
    # on the CPU reading the norms costs nothing: a step known finite skips the NaN checks
    host_norms = read_norms(norms_dev, sel) if norms_dev.device.type == "cpu" else None
    if exact is not None:  # torch's norms and total wherever they are right
        host_norms, exact = as_torch(host_norms, grads, exact, getattr(norms_dev, NATIVE, None),
                                     sel)
    finite = None if host_norms is None else math.isfinite(host_norms[-1])
    data = c.take(finite) if c.armed else None
    if data is not None:  # the head (AGC's final layer) is known before clipping
        w.forward.learn(data.completed, data.passes, data.loose, data.same_input)
    if defer and not scaled and amp.scaler is None and on_nonfinite in ("warn", "zero") and (
            policy is None or not policy.needs_host_norm):
        return _deferred(w, policy, statistics, grads, params, norms_dev, present, data,
                         zero=on_nonfinite == "zero", recording=recording, loss=loss, sel=sel)
    got = read_step(grads, params, norms_dev, scale=amp.loss_scale(), scaled=scaled,
                    data=data, statistics=statistics, recording=recording,
                    loss=loss if recording else None, host_norms=host_norms, exact=exact,
                    total_of=sel)
    if norms_dev.device.type == "cpu" and not has_dtensor(grads):  # for the next step
        found = np.asarray(got.norms)  # (exact zeros too: one float64 pass, no redo)
        w.tiny = found < TINY if present is None else None
    overflow = amp.overflow(scaled, got.total)
    finite = math.isfinite(got.total)
    skipped = False
    if not finite and not overflow:
        recording = True
        if on_nonfinite == "skip":
            skipped = stash.stash(optimizer)
        elif on_nonfinite == "zero":
            zero_nonfinite_(cgrads)
    coef = 1.0
    if policy is not None and not (skipped or overflow):
        coef = clip_step(policy, cgrads, cparams, w.is_output(cparams), got.total,
                         zeroed=on_nonfinite == "zero" and not finite, recording=recording)
    if not recording:
        return None
    return Outcome(data, got, present, coef, skipped, overflow)


def _no_gradient_message(stepping: bool) -> str:
    """The warning of a step at which no watched parameter has a ``.grad``."""
    if stepping:  # measured for optimizer.step(): the loop did call backward
        return ("GradWatch found no gradients at optimizer.step(): no watched parameter has "
                "a .grad, so the step changes nothing. The loss does not depend on the "
                "parameters (detached, or rebuilt from a number as in "
                "torch.tensor(loss.item(), requires_grad=True)), or the gradients were "
                "cleared between loss.backward() and optimizer.step() (zero_grad() after "
                "backward).")
    return ("GradWatch found no gradients to measure: no watched parameter has a .grad. Call "
            "it after loss.backward(); torch.autograd.grad returns gradients without storing "
            "them in .grad: assign them (p.grad = g) first.")


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


def _subset(items: list[Any], sel: np.ndarray | None) -> list[Any]:
    return items if sel is None else [items[k] for k in sel.tolist()]


def _deferred(w: Any, policy: Any, statistics: Sequence[Any], grads: list[Tensor],
              params: list[Tensor], norms_dev: Tensor, present: list[bool] | None, data: Any, *,
              zero: bool, recording: bool, loss: Any = None,
              sel: np.ndarray | None = None) -> Outcome | None:
    """The sync-free path: clip with the device total (over ``sel``, the stepped gradients;
    None: all), zero NaN/Inf on the device, and start the record's copy without waiting."""
    cgrads, cparams = _subset(grads, sel), _subset(params, sel)
    total, exact = device_total(norms_dev, grads, sel)  # the record's: before any zeroing
    if zero:  # cannot ask the host whether NaN is there: replace it unconditionally (in what
        zero_nonfinite_(cgrads)  # the optimizer steps, as the host path does) and clip with
        if policy is not None:  # the total re-measured after it, as the host path does
            total = device_total(per_tensor_norms(cgrads), cgrads)[0]
    coef = torch.ones((), dtype=torch.float64, device=norms_dev.device)
    if policy is not None:
        result = policy.clip_(cgrads, total, params=cparams, is_output=w.is_output(cparams))
        if isinstance(result, Tensor):
            coef = result.double().reshape(())
        else:  # element- or unit-wise: post-clip over pre-clip total, on the device
            after = torch.linalg.vector_norm(per_tensor_norms(cgrads).double())
            coef = torch.where(total > 0, after / total, coef)
    if not recording:
        return None
    batch = start_read(grads, params, norms_dev, scale=None, data=data, statistics=statistics,
                       recording=recording, extra={"exact": exact, "coef": [coef], **(
                           {"loss": [loss]} if loss is not None else {})}, total_of=sel)
    return Outcome(data, None, present, 1.0, False, False, inflight=batch.start(), total_of=sel)
