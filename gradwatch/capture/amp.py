"""AMP: the loss scale output gradients carry, and steps `GradScaler` skipped on overflow."""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

__all__ = ["loss_scale", "SkippedStepDetector", "AmpState"]


def loss_scale(scaler: Any) -> Tensor | None:
    """The scale the loss (and so every output gradient) was multiplied by, as a 0-d device
    tensor, or None without an enabled scaler (or before its first ``scale()`` call)."""
    if scaler is None or not scaler.is_enabled():
        return None
    return getattr(scaler, "_scale", None)


class SkippedStepDetector:
    """Notices iterations in which ``GradScaler.step(optimizer)`` skipped ``optimizer.step()``.

    On an overflow step no optimizer hook fires. The scaler keeps one state dict per iteration
    (``_per_optimizer_states``, replaced by ``update()``); the dict of a finished iteration still
    says whether it stepped and found inf. `poll` looks at it the next time gradwatch runs (the
    next forward pass, the next measurement, or ``close()``): a skipped step is reported one
    iteration late but never lost nor mistaken for a model fault.

    Args:
        scaler: The ``torch.amp.GradScaler`` in use.
        optimizer: The optimizer gradwatch is hooked on.
    """

    def __init__(self, scaler: Any, optimizer: Any) -> None:
        self._scaler = scaler
        self._key = id(optimizer)
        self._seen: Any = None  # the scaler's per-iteration state dict seen last
        self._measured = False  # whether gradwatch measured during that iteration

    def poll(self) -> bool:
        """True once for each finished iteration whose step the scaler skipped on overflow.

        Cheap (an identity check) unless an iteration ended without a measurement; then one
        scalar is read from the device.
        """
        states = getattr(self._scaler, "_per_optimizer_states", None)
        if states is None or states is self._seen:
            return False
        previous, measured = self._seen, self._measured
        self._seen, self._measured = states, False
        if previous is None or measured:
            return False
        state = previous.get(self._key)  # .get: never creates an entry in the defaultdict
        if state is None or getattr(state.get("stage"), "name", "") != "STEPPED":
            return False
        return any(float(v.item()) > 0 for v in state.get("found_inf_per_device", {}).values())

    def mark_measured(self) -> bool:
        """Call when gradwatch measures; returns `poll()` for the iteration before, if unseen."""
        skipped = self.poll()
        self._measured = True
        return skipped

    def __repr__(self) -> str:
        return f"SkippedStepDetector(optimizer_id={self._key}, measured={self._measured})"


class AmpState:
    """Everything gradwatch reads of a ``torch.amp.GradScaler``, in one place.

    Args:
        scaler: The scaler, or None (then every method answers "no AMP").
        optimizer: The optimizer gradwatch is hooked on, or None.
    """

    def __init__(self, scaler: Any, optimizer: Any) -> None:
        self.scaler, self.optimizer = scaler, optimizer
        self.skips = (SkippedStepDetector(scaler, optimizer)
                      if scaler is not None and optimizer is not None else None)
        self.pending = 0  # skipped iterations noticed but not recorded yet
        self.loss: Any = None  # the loss noted for the step about to be measured
        self._skipped_losses: list[Any] = []  # the losses of skipped iterations noticed

    @property
    def enabled(self) -> bool:
        return self.scaler is not None and self.scaler.is_enabled()

    def loss_scale(self) -> Tensor | None:
        """The loss scale (a 0-d device tensor) output gradients carry, or None."""
        return loss_scale(self.scaler)

    def grads_scaled(self) -> bool:
        """Whether the parameter gradients gradwatch sees still carry the loss scale."""
        if not self.enabled:
            return False
        from torch.amp.grad_scaler import OptState

        states = self.scaler._per_optimizer_states
        if self.optimizer is not None:
            state = states.get(id(self.optimizer))
            return state is None or state["stage"] is OptState.READY
        return not any(s["stage"] is OptState.UNSCALED for s in states.values())

    def unscale_for_clipping(self) -> None:
        """Unscales the gradients in place (clipping needs true magnitudes)."""
        if self.optimizer is None:
            raise RuntimeError("Clipping AMP-scaled gradients needs the optimizer: pass "
                               "`optimizer=` to GradWatch, or call scaler.unscale_(optimizer) "
                               "before watch.step().")
        self.scaler.unscale_(self.optimizer)

    def overflow(self, scaled: bool, total: float) -> bool:
        """Whether a non-finite ``total`` is the scaler's overflow (not the model's fault)."""
        if not self.enabled or math.isfinite(total):
            return False
        if scaled:
            return True
        states = self.scaler._per_optimizer_states.values()
        return any(v.item() > 0 for s in states for v in s["found_inf_per_device"].values())

    def poll_skipped(self, measuring: bool = False) -> bool:
        """True once for each iteration whose optimizer step the scaler skipped."""
        if self.skips is None:
            return False
        return self.skips.mark_measured() if measuring else self.skips.poll()

    def note_skip(self, watched: Any) -> None:
        """Called at the start of every hooked forward: notices a skipped iteration and drops
        the output gradients of its backward (scaled inf/NaN)."""
        if self.poll_skipped():
            self.pending += 1
            watched.collector.take()
            self._skipped_losses.append(self.loss)  # (noted before the step it skipped)
            self.loss = None

    def skipped_loss(self) -> Any:
        """The loss noted for the oldest skipped iteration not recorded yet (None: none noted,
        or the skip was noticed only when the next step was measured, when the loss noted
        may be that step's)."""
        return self._skipped_losses.pop(0) if self._skipped_losses else None

    def drain_skips(self, measuring: bool = False) -> int:
        """How many skipped iterations to record now (counted since the last call)."""
        if self.skips is None:
            return 0
        n, self.pending = self.pending + self.poll_skipped(measuring), 0
        return n
