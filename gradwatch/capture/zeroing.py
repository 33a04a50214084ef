"""Were the gradients zeroed between two optimizer steps? One gradient's first entries, kept
right after ``optimizer.step()`` and compared when the next backward pass begins."""

from __future__ import annotations

import weakref
from typing import Any, Sequence

from torch import Tensor

__all__ = ["ZeroCheck"]


class ZeroCheck:
    """Remembers one gradient after an optimizer step (`snapshot`) and tells, at the first
    gradient of the next backward pass (before any input-side parameter accumulates), whether
    it is still the same tensor with the same entries (`check`): nobody zeroed it."""

    def __init__(self) -> None:
        self._kept: tuple[Tensor, Any, Tensor] | None = None

    @property
    def armed(self) -> bool:
        return self._kept is not None

    def snapshot(self, params: Sequence[Tensor]) -> None:
        """Keeps the first 16 entries of the gradient of the first of ``params`` (of the first
        8) that has a dense, non-empty one; a weak reference to the gradient tensor itself."""
        self._kept = None
        for p in params[:8]:
            g = p.grad
            if g is not None and not g.is_sparse and g.numel():
                self._kept = (p, weakref.ref(g), g.detach().reshape(-1)[:16].clone())
                return

    def check(self) -> Any:
        """Whether the kept gradient was left as it was (a device bool, or False when it was
        set to None or replaced); the kept copy is dropped."""
        kept, self._kept = self._kept, None
        if kept is None:
            return None
        param, ref, sample = kept
        g = param.grad
        if g is None or g is not ref():
            return False  # set to None by zero_grad(), or replaced
        return (g.detach().reshape(-1)[:16] == sample).all() & sample.ne(0).any()
