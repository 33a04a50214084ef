"""Were the gradients zeroed between two optimizer steps? One stepped gradient's first entries,
kept right after ``optimizer.step()`` and looked at whenever a backward pass is about to add to
that gradient, until the next step."""

from __future__ import annotations

import weakref
from typing import Any, Sequence

import torch
from torch import Tensor

from .hooks import Hook

__all__ = ["ZeroCheck"]

_task = torch._C._current_graph_task_id


class ZeroCheck:
    """Remembers one gradient after an optimizer step (`snapshot`) and tells at the next step
    (`result`) whether the optimizer is about to step a gradient that still holds it: nobody
    zeroed it in between.

    A hook on the kept parameter looks at its gradient each time a backward pass is about to
    add to it. The gradient counts as zeroed when, at one of those times, it was None, another
    tensor, or all zeros in its kept entries; as stale when it still held exactly the kept
    entries at one of them and was never zeroed. So a loop with several backward passes per
    step (a GAN's generator loss flowing through the discriminator before the discriminator's
    ``zero_grad()``) is judged by whether the gradient was reset before the step, not by the
    first pass; accumulating micro-batches after a reset is not stale either.

    The same hook tells which backward passes were thrown away: a pass that finds the gradient
    None after earlier passes of the step added to it follows a ``zero_grad()``, so those
    passes' gradients never reach the step (`dropped`; a reset in place, with
    ``set_to_none=False``, is not told apart from a gradient of zeros)."""

    def __init__(self) -> None:
        self._kept: tuple[Tensor, Any, Any] | None = None  # param, its grad, the 16 entries
        self._handle: Any = None
        self._hook = Hook(self, "_on_grad")
        self._hook_added = Hook(self, "_on_added")
        self._added: Any = None  # the post-accumulate hook's handle
        self._seen: tuple[Any, ...] | None = None  # what the pass under way found
        self._reset = False  # None or replaced at some pass (known on the host)
        self._zeroed: Any = None  # zeroed in place at some pass (a device bool)
        self._stale: Any = None  # held the kept entries at some pass (a device bool)
        self._passes: list[int] = []  # the graph tasks that added to it since the last reset
        self.dropped: set[int] = set()  # graph tasks whose gradients a reset threw away
        self._last: list[Any] = []  # the hooks on the last stepped parameter (`_LastParam`)

    @property
    def armed(self) -> bool:
        return self._kept is not None

    def snapshot(self, params: Sequence[Tensor]) -> None:
        """Keeps the first 16 entries of the gradient of the first of ``params`` (the
        parameters the optimizer steps; the first 8 are tried) that has a dense, non-empty
        one, a weak reference to the gradient tensor itself, and hooks the parameter. With none
        (before the first step) the first is hooked to tell thrown-away passes only."""
        self.disarm()
        if params and params[-1] is not params[0] and params[-1].requires_grad \
                and not params[-1].is_sparse \
                and hasattr(params[-1], "register_post_accumulate_grad_hook"):
            self._hook_last(params[-1])  # a pass through the head only: thrown away too?
        fallback = None
        for p in params[:8]:
            g = p.grad
            if g is not None and not g.is_sparse and g.numel() and p.requires_grad:
                head = g.detach().reshape(-1)[:16]  # (a plain CPU tensor: read as a list)
                plain = g.device.type == "cpu" and type(g) is Tensor  # (not a DTensor shard)
                kept = (p, weakref.ref(g), head.tolist() if plain else head.clone())
                if plain and not any(kept[2]):  # entries no batch writes (on the CPU, where
                    fallback = fallback or kept  # looking costs nothing): try the next
                    continue
                self._hook_param(p, kept)
                return
        if fallback is not None:
            self._hook_param(fallback[0], fallback)
            return
        if params and params[0].requires_grad:
            self._hook_param(params[0], (params[0], None, None))

    def _hook_last(self, p: Tensor) -> None:
        """Hooks the last stepped parameter (usually the head's) to tell thrown-away passes
        that never reach the first one: a pass through the head alone, or a backward that
        raised half-way, before a ``zero_grad()``."""
        state: dict[str, Any] = {"passes": [], "seen": None}
        self._last = [p.register_hook(Hook(self, "_last_grad", p, state)),
                      p.register_post_accumulate_grad_hook(Hook(self, "_last_added", state))]

    def _last_grad(self, p: Tensor, state: dict[str, Any], grad: Tensor) -> None:
        state["seen"] = (_task(), p.grad is None)

    def _last_added(self, state: dict[str, Any], param: Tensor) -> None:
        seen, state["seen"] = state["seen"], None
        if seen is None or seen[0] != _task():
            return
        self._note_pass(state["passes"], *seen)

    def _note_pass(self, passes: list[int], task: int, was_none: bool) -> None:
        """Notes graph task ``task`` among the ``passes`` that added to one watched gradient
        since its last reset; one that found it None after earlier passes follows a reset,
        which threw those away (`dropped`)."""
        if was_none and passes and task not in passes:
            self.dropped.update(passes)
            passes.clear()
        if task not in passes:
            passes.append(task)

    def _hook_param(self, p: Tensor, kept: tuple[Tensor, Any, Any]) -> None:
        """A hook before each backward pass adds to ``p``'s gradient (`_on_grad`: what it
        holds then) and, where torch has one, after it added (`_on_added`: the pass did add;
        an ``autograd.grad`` pass runs the first and not the second)."""
        self._kept = kept
        self._handle = p.register_hook(self._hook)
        if hasattr(p, "register_post_accumulate_grad_hook") and not p.is_sparse:
            self._added = p.register_post_accumulate_grad_hook(self._hook_added)

    def _on_grad(self, grad: Tensor) -> None:
        """Before a backward pass adds ``grad`` to the kept parameter's gradient: what the
        gradient holds, counted when the pass adds to it (at once without `_on_added`)."""
        kept = self._kept
        if kept is None:
            return None
        param, ref, sample = kept
        g = param.grad
        seen: tuple[Any, ...]
        if g is None or ref is None or g is not ref():
            seen = (_task(), g is None, g is not None and ref is not None)
        else:
            now = g.detach().reshape(-1)[:16]
            if isinstance(sample, list):  # the CPU: plain bools
                values = now.tolist()
                zeroed, stale = not any(values), values == sample and any(sample)
            else:  # a device: device bools, no host sync
                zeroed, stale = ~now.ne(0).any(), (now == sample).all() & sample.ne(0).any()
            seen = (_task(), False, False, zeroed, stale)
        if self._added is None:
            self._count(seen)
        else:
            self._seen = seen
        return None

    def _on_added(self, param: Tensor) -> None:
        seen, self._seen = self._seen, None
        if seen is not None and seen[0] == _task():
            self._count(seen)

    def _count(self, seen: tuple[Any, ...]) -> None:
        """Counts one pass that added to the gradient (``seen``: what it held before)."""
        task, was_none, replaced = seen[:3]
        self._note_pass(self._passes, task, was_none)
        if self._reset or self._kept is None or self._kept[1] is None:
            return
        if was_none or replaced:
            self._reset = True  # set to None by zero_grad(), or replaced
            return
        zeroed, stale = seen[3:]
        self._zeroed = zeroed if self._zeroed is None else self._zeroed | zeroed
        self._stale = stale if self._stale is None else self._stale | stale

    def result(self) -> Any:
        """Whether the kept gradient reaches this step unzeroed (a device bool; False when it
        was reset on the host's sight; None when no backward pass reached it or nothing was
        kept); disarms."""
        if self._kept is None:
            return None
        if self._reset:
            out: Any = False
        elif self._stale is None:
            out = None
        elif isinstance(self._stale, bool):
            out = self._stale and not self._zeroed
        else:
            out = self._stale & ~self._zeroed
        self.disarm()
        return out

    def disarm(self) -> None:
        if self._handle is not None:
            self._handle.remove()
        if self._added is not None:
            self._added.remove()
        for handle in self._last:
            handle.remove()
        self._last = []
        self._kept = self._handle = self._added = self._seen = self._zeroed = self._stale = None
        self._reset = False
        self._passes, self.dropped = [], set()
