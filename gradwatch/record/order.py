"""`CallOrder`: tells, at O(1) per step, the two call orders whose records are wrong without an
error: ``watch.step()`` after ``optimizer.step()`` (its clip comes too late) and ``note_loss``
after ``optimizer.step()`` (the loss is filed under the next step)."""

from __future__ import annotations

import warnings
import weakref
from typing import Any, Sequence

from torch.optim.optimizer import register_optimizer_step_post_hook

from ..capture.hooks import Hook, Slot, user_stacklevel

__all__ = ["CallOrder", "STEP_AFTER_OPTIMIZER", "LOSS_AFTER_STEP"]

STEP_AFTER_OPTIMIZER = (
    "optimizer.step() ran between backward() and watch.step(), so the gradients it measured (and clipped) were already used, and its clip "
    "had no effect on the update although the records say they were clipped. Call "
    "watch.step() after backward() and before optimizer.step() (or pass optimizer= and drop "
    "the call). This warning is shown once.")

LOSS_AFTER_STEP = (
    "note_loss() was called after optimizer.step() and before the next forward pass: the loss "
    "is filed under the next step (each record would carry the previous step's loss, and the "
    "last one is dropped). Call watch.note_loss(loss) before optimizer.step() (after "
    "backward()). This warning is shown once.")


class CallOrder:
    """The order of a step's calls, as far as it can be told for nothing.

    Without ``optimizer=``: a post-accumulate-grad hook on one watched parameter tells each
    backward pass of a recorded step, and a global optimizer step post-hook (torch's
    ``register_optimizer_step_post_hook``) each ``step()`` of any torch optimizer; an optimizer
    that steps that parameter, run after a backward pass and before ``watch.step()``, is the
    wrong order. What else changes the weights in between (SAM restoring them, clamping) is no
    optimizer step, and is not judged.

    With ``optimizer=``: `note_loss` warns when the loss comes after an ``optimizer.step()`` and
    no forward pass of the model has run since, which the hooks of a recorded step see
    (unrecorded steps and torch.compile are not judged).
    """

    def __init__(self, params: Sequence[Any], optimizer: Any) -> None:
        self.fresh = False  # a backward pass accumulated into `param` since watch.step()
        self.late = False  # ... and an optimizer stepping `param` ran after it
        self.stepped = False  # an optimizer.step() ended (with optimizer=)
        self.saw_step = False  # the step was called (even if the watch's hook raised), or the
        # `with` block raised: no "never stepped" warning
        self.warned: set[str] = set()
        self._steps: weakref.WeakKeyDictionary[Any, tuple[int, bool]] = \
            weakref.WeakKeyDictionary()  # optimizer -> (its param groups, whether it steps it)
        first = next((p for p in params if p.requires_grad and not p.is_sparse and hasattr(
            p, "register_post_accumulate_grad_hook")), None)  # (one with a post-accumulate hook)
        self.param = first if optimizer is None else None
        self._slot = None if self.param is None else Slot(  # (on recorded steps: `arm`)
            self.param, "_post_accumulate_grad_hooks",
            self.param.register_post_accumulate_grad_hook, Hook(self, "on_grad"))
        self.handles: list[Any] = []  # removed by the watch's close (before its own hooks run)
        self.backward_seen = False  # with optimizer=: a backward pass ran before any step()
        self._until_step = None  # ... told by a hook on one parameter until the first step()
        if optimizer is not None:
            self.handles += [optimizer.register_step_pre_hook(Hook(self, "on_step", True)),
                             optimizer.register_step_post_hook(Hook(self, "on_step", False))]
            if first is not None:
                self._until_step = first.register_post_accumulate_grad_hook(
                    Hook(self, "on_backward"))
                self.handles.append(self._until_step)
        elif self._slot is not None:
            self.handles += [_Detach(self._slot),
                             register_optimizer_step_post_hook(Hook(self, "on_optimizer_step"))]

    def arm(self, recording: bool) -> None:
        """Hooks the parameter for a recorded step's backward (unrecorded steps carry no
        hook on it, and are not judged)."""
        if self._slot is not None:
            if recording:
                self._slot.attach()
            else:
                self._slot.detach()

    def on_step(self, before: bool, optimizer: Any, args: Any, kwargs: Any) -> None:
        if before:
            self.saw_step = True
            if self._until_step is not None:  # (its work is done: no call per backward)
                self._until_step.remove()
                self._until_step = None
        else:
            self.stepped = True

    def on_backward(self, param: Any) -> None:
        self.backward_seen = True

    def on_grad(self, param: Any) -> None:
        self.fresh = True

    def on_optimizer_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self.fresh and not self.late:
            groups = len(optimizer.param_groups)
            known = self._steps.get(optimizer)
            if known is None or known[0] != groups:  # (once per optimizer and param groups)
                known = (groups, any(p is self.param for g in optimizer.param_groups
                                     for p in g["params"]))
                self._steps[optimizer] = known
            self.late = known[1]

    def before_manual_step(self) -> None:
        """Warns (once) when an optimizer stepped the weights since the last backward pass."""
        late, self.late, self.fresh = self.late, False, False
        if late and "step" not in self.warned:
            self.warned.add("step")
            warnings.warn(STEP_AFTER_OPTIMIZER, UserWarning, stacklevel=user_stacklevel())

    def note_loss(self, collector: Any) -> None:
        """Warns (once) when a loss is noted after an optimizer step and no forward pass of a
        recorded step has run since (``collector``: the watch's hooks and what they saw)."""
        if not self.stepped or "loss" in self.warned:
            return
        c = collector
        if c.armed and c.attached and not c.compiled and not c.data.completed \
                and not c.data.passes:
            self.warned.add("loss")
            warnings.warn(LOSS_AFTER_STEP, UserWarning, stacklevel=user_stacklevel())


class _Detach:
    """A handle whose ``remove()`` takes a `Slot`'s hook out (the watch removes its handles)."""

    __slots__ = ("slot",)

    def __init__(self, slot: Any) -> None:
        self.slot = slot

    def remove(self) -> None:
        self.slot.detach()
