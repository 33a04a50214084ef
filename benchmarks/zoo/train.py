"""Train one zoo run under GradWatch and measure, in plain torch, whether it really trained or failed."""

from __future__ import annotations

import contextlib
import copy
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from .spec import Run, Setup

__all__ = ["CHECKS", "Trace", "after_probe", "train"]


@dataclass
class Trace:
    """Plain-torch measurements of one run, independent of gradwatch's verdicts.

    Attributes:
        losses: Training loss per step (NaN/Inf kept).
        grad_norms: Total L2 norm of all gradients per step (``torch.nn.utils.get_total_norm``).
        first_nonfinite_step: First step whose loss or gradients hold NaN/Inf, or ``None``.
        forward_birth: First parameter-owning module, in forward order, whose output held NaN/Inf
            at that step (``None`` when every module output was finite).
        depth_ratio: Step-0 norm of the gradient w.r.t. the output of the first weight-bearing
            module over the last one's, both in forward order (how dL/dh changes across depth).
        skipped: Steps whose update an AMP ``GradScaler`` skipped.
        evidence: The run's own probe (e.g. the gradient reaching the first time step).
    """

    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    first_nonfinite_step: int | None = None
    forward_birth: str | None = None
    depth_ratio: float | None = None
    skipped: int = 0
    evidence: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0

    def tail(self) -> float:
        """Mean of the last 5 losses (NaN/Inf when one of them is)."""
        tail = self.losses[-5:]
        return sum(tail) / len(tail)

    def fall(self) -> float:
        """1 - mean(last 5 losses) / first loss; NaN when one of them is not finite."""
        value = 1.0 - self.tail() / self.losses[0]
        return value if math.isfinite(value) else math.nan

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__, fall=self.fall())


def _finite(trace: Trace) -> bool:
    return trace.first_nonfinite_step is None


# Each check: a name -> (description, predicate on the trace). Margins are stated here, once.
CHECKS: dict[str, tuple[str, Callable[[Trace], bool]]] = {
    "falls": ("loss falls by >= 25% (mean of the last 5 steps vs step 0), all finite",
              lambda t: _finite(t) and t.fall() >= 0.25),
    "no_fall": ("loss falls by < 10% (last 5 vs step 0) or goes non-finite",
                lambda t: not (t.fall() >= 0.10)),
    "huge_or_nan": ("the last 5 losses average >= 10 nats (chance is <= 2.3 here) or go NaN/Inf",
                    lambda t: not (t.tail() < 10.0)),
    "grad_huge": ("the step-0 gradient norm is >= 1e4 (healthy zoo runs: < 100)",
                  lambda t: not (t.grad_norms[0] < 1e4)),
    "rises": ("the loss rises to >= 2x its first value at some step, or goes non-finite",
              lambda t: not _finite(t) or max(t.losses) >= 2 * t.losses[0]),
    "nonfinite": ("a loss or gradient goes NaN/Inf", lambda t: not _finite(t)),
    "finite_forward": ("every module output stays finite", lambda t: t.forward_birth is None),
    "depth_vanish": ("step-0 output gradient of the first weight layer <= 1e-3 x the last's",
                     lambda t: t.depth_ratio is not None and t.depth_ratio <= 1e-3),
    "depth_explode": ("step-0 output gradient of the first weight layer >= 1e3 x the last's",
                      lambda t: t.depth_ratio is not None and t.depth_ratio >= 1e3),
    "grad_grows": ("the total gradient norm grows >= 5x over its step-0 value, or goes NaN/Inf",
                   lambda t: not _finite(t) or max(t.grad_norms) >= 5 * t.grad_norms[0]),
    "grad_tiny": ("every step's total gradient norm is <= 1e-7 (nothing reaches the weights)",
                  lambda t: max(t.grad_norms) <= 1e-7),
    "finite_grads": ("every gradient stays finite (only the loss is NaN/Inf)",
                     lambda t: all(map(math.isfinite, t.grad_norms))),
    "amp_skips": ("the GradScaler skips >= 30% of the steps",
                  lambda t: t.skipped >= 0.3 * len(t.losses)),
    "time_vanish": ("gradient reaching the first time step <= 1e-4 x the last step's",
                    lambda t: t.evidence.get("time_ratio", 1.0) <= 1e-4),
    "dead": (">= 90% of ReLU units are zero on the whole batch after training",
             lambda t: t.evidence.get("dead_share", 0.0) >= 0.9),
    "saturated": (">= 90% of tanh/sigmoid outputs within 1% of their bounds",
                  lambda t: t.evidence.get("sat_share", 0.0) >= 0.9),
    "some_zero": ("some trainable tensor's gradient is exactly 0 at step 0 and after training "
                  "while the gradient w.r.t. a layer's output is >= 1e-3 at step 0 (autograd)",
                  lambda t: min(t.evidence.get("zero_tensors", 0),
                                t.evidence.get("after_zero_tensors", 0)) >= 1
                  and t.evidence.get("out_grad", 0.0) >= 1e-3),
    "ends_above_start": ("the last 5 losses average >= 1.5x the first 5 (the loss climbs)",
                         lambda t: sum(t.losses[-5:]) >= 1.5 * sum(t.losses[:5])),
    "unmoved": ("every trainable weight is the same after training as before, while the "
                "step-0 gradient norm is > 0", lambda t: t.grad_norms[0] > 0 and
                t.evidence.get("weight_sum") == t.evidence.get("after_weight_sum")),
}


def _direct_param_modules(model: nn.Module) -> dict[nn.Module, str]:
    out: dict[nn.Module, str] = {}
    for name, m in model.named_modules():
        if any(True for _ in m.parameters(recurse=False)):
            out.setdefault(m, name or "(root)")
    return out


def _all_finite(obj: Any) -> bool:
    if isinstance(obj, torch.Tensor):
        return not obj.is_floating_point() or bool(torch.isfinite(obj).all())
    if isinstance(obj, (tuple, list)):
        return all(map(_all_finite, obj))
    if isinstance(obj, dict):
        return all(map(_all_finite, obj.values()))
    if hasattr(obj, "to_tuple"):  # transformers ModelOutput
        return all(map(_all_finite, obj.to_tuple()))
    return True


class _ForwardWatch:
    """Plain forward hooks: module order, and the first module whose output is non-finite."""

    def __init__(self, model: nn.Module) -> None:
        self.names = _direct_param_modules(model)
        self.order: list[nn.Module] = []
        self.out_grads: dict[nn.Module, float] = {}
        self.capture = True  # record output-gradient norms (step 0 only)
        self.bad: str | None = None
        self.handles = [m.register_forward_hook(self._hook) for m in self.names]

    def _hook(self, module: nn.Module, _inp: Any, out: Any) -> None:
        if module not in self.order:
            self.order.append(module)
        if self.bad is None and not _all_finite(out):
            self.bad = self.names[module]
        if (self.capture and isinstance(out, torch.Tensor) and out.requires_grad
                and any(p.ndim >= 2 for p in module.parameters(recurse=False))):
            def keep(g: torch.Tensor, m: nn.Module = module) -> None:
                self.out_grads[m] = float(g.double().norm())
            out.register_hook(keep)

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _depth_ratio(fwd: _ForwardWatch) -> float | None:
    norms = [fwd.out_grads[m] for m in fwd.order if m in fwd.out_grads]
    if len(norms) < 2 or not norms[-1] > 0:
        return None
    return norms[0] / norms[-1]


def _forward_loss(setup: Setup, batch: tuple[Any, ...]) -> torch.Tensor:
    ctx = (torch.autocast("cpu", dtype=setup.amp_dtype) if setup.amp_dtype is not None
           else contextlib.nullcontext())
    with ctx:
        return setup.loss(setup.model, batch)


def train(run: Run, watch_factory: Callable[[Setup], Any] | None = None
          ) -> tuple[Trace, Setup, Any]:
    """Builds and trains ``run``; returns the plain-torch trace, the setup and the watch (or None).

    Args:
        run: The run.
        watch_factory: Builds the monitor from the setup (e.g. ``GradWatch(model, optimizer=opt)``);
            ``None`` trains without gradwatch.
    """
    start = time.perf_counter()
    torch.manual_seed(0)
    setup = run.build()
    trace = Trace()
    if setup.probe is not None:
        trace.evidence.update(setup.probe(copy.deepcopy(setup.model), setup.batch(0)))
    watch = watch_factory(setup) if watch_factory is not None else None
    fwd = _ForwardWatch(setup.model)
    params = [p for p in setup.model.parameters() if p.requires_grad]
    model, opt, scaler = setup.model, setup.optimizer, setup.scaler
    model.train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gradwatch's NaN warnings: the verdicts are read later
        for step in range(run.steps):
            if setup.zero_grad:
                opt.zero_grad(set_to_none=True)
            loss = _forward_loss(setup, setup.batch(step))
            (scaler.scale(loss) if scaler is not None else loss).backward()
            if watch is not None:
                watch.note_loss(loss)  # as the README asks: lets it tell stalled from converged
            grads = [p.grad for p in params if p.grad is not None]
            gnorm = float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
            if scaler is not None:
                gnorm /= float(scaler.get_scale())
            trace.losses.append(float(loss))
            trace.grad_norms.append(gnorm)
            if step == 0:
                trace.depth_ratio = _depth_ratio(fwd)
                fwd.capture = False
            bad = not (math.isfinite(trace.losses[-1]) and math.isfinite(gnorm))
            if scaler is not None:
                scale = float(scaler.get_scale())
                scaler.step(opt)
                scaler.update()
                trace.skipped += float(scaler.get_scale()) < scale
            else:
                opt.step()
                if setup.scheduler is not None:
                    setup.scheduler.step()
                if bad and trace.first_nonfinite_step is None:
                    trace.first_nonfinite_step = step
                    trace.forward_birth = fwd.bad
            if trace.first_nonfinite_step is None:
                fwd.bad = None
    fwd.close()
    trace.wall_s = time.perf_counter() - start
    return trace, setup, watch


def after_probe(setup: Setup, trace: Trace, step: int) -> None:
    """Runs the setup's after-training probe (call once the watch is closed: no hooks fire)."""
    if setup.after is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trace.evidence.update(setup.after(setup.model, setup.batch(step)))
