"""`StepGate`: the optimizer a trainer callback hands to `GradWatch`, opened where gradients are final.

A framework owns ``optimizer.step()`` and may call it with a closure (Lightning) or after its own
hooks, so gradwatch cannot measure in the real optimizer's step pre-hook. The gate shares the real
optimizer's ``param_groups`` and ``state``; `GradWatch` registers its pre-step hook on the gate
(the callback calls `StepGate.open` at the framework's "gradients are final" event) and its
post-step hook on the real optimizer (so the update/weight ratio spans the real step).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable

import torch
from torch.utils.hooks import RemovableHandle

__all__ = ["StepGate", "unwrap_optimizer"]


def unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer | None:
    """The torch optimizer inside a framework wrapper (accelerate's ``AcceleratedOptimizer``,
    Lightning's ``LightningOptimizer``), or None when there is none."""
    seen = 0
    while optimizer is not None and seen < 4:
        inner = getattr(optimizer, "optimizer", None) or getattr(optimizer, "_optimizer", None)
        if inner is None or inner is optimizer:
            break
        optimizer, seen = inner, seen + 1
    return optimizer if isinstance(optimizer, torch.optim.Optimizer) else None


class StepGate(torch.optim.Optimizer):
    """A stand-in for ``optimizer`` that never steps: `GradWatch` measures when it is opened.

    Args:
        optimizer: The torch optimizer the framework steps.
    """

    def __new__(cls, optimizer: torch.optim.Optimizer) -> "StepGate":
        # Named after the real optimizer, so the run header's `optimizer` reads "AdamW".
        named = type(type(optimizer).__name__, (cls,), {"__module__": cls.__module__})
        return super().__new__(named)

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:  # no Optimizer.__init__:
        self.optimizer = optimizer                                  # nothing of its own to own
        self.param_groups, self.state, self.defaults = (optimizer.param_groups, optimizer.state,
                                                        optimizer.defaults)
        self._pre_hooks: OrderedDict[int, Callable[..., Any]] = OrderedDict()

    def register_step_pre_hook(self, hook: Callable[..., Any]) -> RemovableHandle:
        handle = RemovableHandle(self._pre_hooks)
        self._pre_hooks[handle.id] = hook
        return handle

    def register_step_post_hook(self, hook: Callable[..., Any]) -> RemovableHandle:
        return self.optimizer.register_step_post_hook(hook)

    def open(self) -> None:
        """Runs the pre-step hooks now, as ``optimizer.step()`` would right before stepping."""
        for hook in list(self._pre_hooks.values()):
            hook(self, (self,), {})

    def step(self, closure: Any = None) -> None:
        raise RuntimeError("StepGate never steps: the framework steps the real optimizer; call "
                           "open() where the gradients are final.")

    def __repr__(self) -> str:
        return f"StepGate({type(self.optimizer).__name__})"

    def __reduce__(self) -> Any:  # the per-optimizer subclass is not importable by name
        return StepGate, (self.optimizer,)
