"""The gradient side of a recorded step: hooks on the autograd nodes of the layers' outputs
that hand each output (and input) gradient to batched norms, in backward order."""

from __future__ import annotations

import functools
import weakref
from typing import Any, Callable

from torch import Tensor

from .collected import BATCH_NUMEL, BATCH_TENSORS, _norms64, _task, batched_norms64
from ..measure.norms import TINY

__all__ = ["GradHooks"]

_UNSEEN = object()


class GradHooks:
    """The part of `gradwatch.capture.collector.Collector` that registers and runs the
    gradient hooks: it needs ``armed``, ``data`` (a `gradwatch.capture.collected.Collected`),
    the pending gradient lists and their held sizes."""

    armed: bool
    data: Any
    _grad_hooks: dict[tuple[int, bool, int], Callable[..., None]]
    _node_hooks: dict[tuple[Any, ...], Callable[..., None] | None]
    _grads_out: list[Tensor]
    _grads_in: list[Tensor]
    _held_numel: list[int]
    _direct: list[bool]
    _tiny: list[bool | None]
    _leaf_hooks: dict[tuple[int, int, bool], tuple[Any, Any]]

    def _hook_node(self, out: Tensor, args: Any, layer: int) -> bool:
        """One post-hook on the node that made the module's output, when that node also takes
        the module's only input: it sees the gradient w.r.t. the output and the one it hands
        to the input (a single-op module, as a Linear or a convolution without a separate
        bias is). Returns False (nothing registered) otherwise. Which of the node's inputs is
        the module's is looked up in ``next_functions`` the first time a layer makes a node of
        that type, and remembered: the module's code decides it. Looking it up again would
        cost a tuple per input and a Python object per node, alive until the backward (the
        input's ``grad_fn``): garbage the collector walks. (A module that converts its input
        only sometimes, ``x.float()`` on half inputs, then reports the input gradient of the
        converted copy: the same values in the copy's dtype.)"""
        if len(args) != 1 or type(args[0]) is not Tensor:
            return False
        node = out.grad_fn
        x = args[0]
        if node is None or not x.requires_grad or x.is_leaf:
            return False
        key = (layer, out.output_nr, type(node))
        hook = self._node_hooks.get(key, _UNSEEN)
        if hook is _UNSEEN:
            src = x.grad_fn
            hook = self._node_hooks[key] = next((functools.partial(
                self.on_node_io, layer, out.output_nr, k) for k, (nxt, _) in enumerate(
                node.next_functions) if nxt is src), None)
        if hook is None:  # the input reaches this node through another one
            return False
        node.register_hook(hook)
        return True

    def on_node_io(self, layer: int, nr: int, k: int, grad_inputs: tuple[Any, ...],
                   grad_outputs: tuple[Any, ...]) -> None:
        """`on_grad` for the output and the input gradient of one node, in that order (one
        call per layer per backward: the hot path of a recorded step)."""
        out = grad_outputs[nr] if nr < len(grad_outputs) else None
        inp = grad_inputs[k] if k < len(grad_inputs) else None
        if out is None or inp is None or not self.armed:
            if out is not None:
                self.on_grad(layer, True, out)
            if inp is not None:
                self.on_grad(layer, False, inp)
            return
        data = self.data
        task, seq = _task(), data.seq
        data.seq = seq + 2
        data.out.rows.append((layer, task, id(out), seq))
        data.inp.rows.append((layer, task, id(inp), seq + 1))
        held = self._held_numel
        self._grads_out.append(out)
        self._grads_in.append(inp)
        held[1] += out.numel()
        held[2] += inp.numel()
        if len(self._grads_out) >= BATCH_TENSORS or held[1] >= BATCH_NUMEL:
            held[1] = 0
            self._flush_grads(self._grads_out, data.out_norms)
        if len(self._grads_in) >= BATCH_TENSORS or held[2] >= BATCH_NUMEL:
            held[2] = 0
            self._flush_grads(self._grads_in, data.in_norms)

    def _hook_grad(self, t: Tensor, layer: int, is_output: bool) -> None:
        """Hands the gradient w.r.t. ``t`` to `on_grad`: a pre-hook on ``t``'s autograd node
        (half the cost of ``Tensor.register_hook``, the same gradient: before any in-place op
        that follows), or a tensor hook on a leaf (`_hook_leaf`)."""
        node = t.grad_fn
        if node is None:
            self._hook_leaf(t, layer, is_output)
            return
        key = (layer, is_output, t.output_nr)
        hook = self._grad_hooks.get(key)
        if hook is None:
            hook = self._grad_hooks[key] = functools.partial(self.on_node_grad, layer,
                                                             is_output, t.output_nr)
        node.register_prehook(hook)

    def _hook_leaf(self, t: Tensor, layer: int, is_output: bool) -> None:
        """A tensor hook on a leaf that a layer returns or is called on (a module returning its
        own Parameter, a decoder called on ``self.query_embed.weight``: DETR's queries; a batch
        that requires grad), for this step only: a Parameter outlives the step, and a hook
        left on it would fire at every later backward (the norm counted once per step taken,
        the cost growing with the run). One per tensor, layer and direction in a step (it
        fires at each backward through the tensor, as a node hook would); removed when the
        step's data is taken (`_drop_leaf_hooks`), and by ``detach``/``close``. (Rare: the
        outputs and inputs of layers have a ``grad_fn`` in the common case.)"""
        key = (id(t), layer, is_output)
        held = self._leaf_hooks.get(key)
        if held is not None and held[0]() is t:  # hooked already in this step
            return
        self._leaf_hooks[key] = (weakref.ref(t), t.register_hook(
            self._grad_hooks[(layer, is_output, -1)]))

    def _drop_leaf_hooks(self) -> None:
        if self._leaf_hooks:
            for _, handle in self._leaf_hooks.values():
                handle.remove()
            self._leaf_hooks.clear()

    def on_grad(self, layer: int, is_output: bool, grad: Tensor) -> None:
        if self.armed:
            data = self.data
            (data.out if is_output else data.inp).rows.append((layer, _task(), id(grad),
                                                                data.seq))
            data.seq += 1
            pending = self._grads_out if is_output else self._grads_in
            pending.append(grad)
            k = 1 if is_output else 2
            self._held_numel[k] += grad.numel()
            if len(pending) >= BATCH_TENSORS or self._held_numel[k] >= BATCH_NUMEL:
                self._held_numel[k] = 0
                self._flush_grads(pending, data.out_norms if is_output else data.in_norms)

    def on_node_grad(self, layer: int, is_output: bool, nr: int, grads: tuple[Any, ...]) -> None:
        grad = grads[nr] if nr < len(grads) else None
        if grad is not None:
            self.on_grad(layer, is_output, grad)

    def _flush_grads(self, pending: list[Tensor], into: list[Tensor]) -> None:
        if pending:
            k = pending is self._grads_in  # which kind: output (0) or input (1) gradients
            try:
                norms = _norms64(pending, direct=self._direct[k])
            except RuntimeError:  # (rare) gradients batched by a vmap: NaN for those
                norms = batched_norms64(pending, self._direct[k])
                if norms is None:
                    raise
            finally:  # (dropped even when that raised: not held into every later batch)
                pending.clear()
            into.append(norms)
            # float64 at once next step if this step had norms below float32's safe range
            if norms.device.type == "cpu":
                self._tiny[k] = self._tiny[k] or bool((norms < TINY).any())

    def reduce_state(self) -> list[bool]:
        """Whether the next step reduces output and input gradients in float64 at once (saved
        with the watch: a resumed watch reduces its first step as the uninterrupted one
        would, to the last bit)."""
        return list(self._direct)

    def load_reduce_state(self, direct: list[bool]) -> None:
        self._direct[:] = [bool(v) for v in (list(direct) + [False, False])[:2]]

    def _next_step_grads(self) -> None:
        """Sets, for each direction whose gradients this step reduced, whether the next step
        reduces them in float64 at once: this step had a norm below float32's safe range (a
        vanishing net). A direction left unreduced (None) keeps its choice."""
        for k in (0, 1):
            if self._tiny[k] is not None:
                self._direct[k] = self._tiny[k]
            self._tiny[k] = None
