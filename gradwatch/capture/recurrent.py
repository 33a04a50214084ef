"""The gradient through time of a recurrent layer: a hook on its input sequence reads the
gradient reaching the first and the last time step."""

from __future__ import annotations

import math

from typing import Any

import torch
from torch import Tensor, nn

from .hooks import Hook

__all__ = ["RecurrentHooks"]


class RecurrentHooks:
    """The part of `gradwatch.capture.collector.Collector` that handles recurrent layers: it
    needs ``armed`` and ``data`` (whose ``time`` maps a layer to its first/last ratios)."""

    armed: bool
    data: Any

    def on_recurrent_input(self, layer: int, rnn: nn.RNNBase, module: nn.Module,
                           args: Any) -> Any:
        if not (self.armed and args and isinstance(args[0], Tensor) and args[0].dim() == 3
                and args[0].is_floating_point() and torch.is_grad_enabled()):
            return None
        x = args[0]
        if not x.requires_grad:  # a leaf copy: only adds dL/dx to this backward
            x = x.detach().requires_grad_()
        dim = 1 if rnn.batch_first else 0
        x.register_hook(Hook(self, "on_time_grad", layer, dim))
        return (x, *args[1:]) if x is not args[0] else None

    def on_time_grad(self, layer: int, dim: int, grad: Tensor) -> None:
        if not self.armed:
            return
        # the gradient reaching the first time step against the one reaching the last step that
        # gets any (a padded tail gets none: no "last" to compare with); no host sync
        g = grad.detach()
        per_step = torch.linalg.vector_norm(g, dim=[d for d in range(g.dim()) if d != dim],
                                            dtype=torch.float64)
        steps = torch.arange(per_step.numel(), device=per_step.device)
        reached = (per_step > 0) & torch.isfinite(per_step)  # (NaN/Inf: no ratio, not 0)
        last = per_step[torch.where(reached, steps, 0).max()]
        ratio = torch.where(reached.any() & torch.isfinite(per_step[0]), per_step[0] / last,
                            torch.full_like(last, math.nan))
        self.data.time.setdefault(layer, []).append(ratio)

    # ---------------------------------------------------------------- helpers
