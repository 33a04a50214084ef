"""The collector: what the hooks gather during one recorded step, reduced in batches."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from .collected import BATCH_NUMEL, BATCH_TENSORS, Collected, Events, TaskNote, _norms64, _task, \
    is_container
from .layers import owners
from .gradhooks import GradHooks
from .recurrent import RecurrentHooks
from .units import UNIT_EVERY, UnitBatch, UnitHooks, UnitWindow
from .zeroing import ZeroCheck
from .hooks import _ELEMENTWISE, ForwardHook, Hook, Slot, in_vmap, iter_tensors
from .layers import WEIGHTED, Layer, activation_kind

_is_compiling = torch.compiler.is_compiling  # (dynamo folds this very function to True)
_transform = torch._C._functorch.peek_interpreter_stack  # None outside torch.func transforms

__all__ = ["Collector", "UNIT_EVERY", "is_container"]


class Collector(GradHooks, RecurrentHooks, UnitHooks):
    """Owns every hook handle on the model and the `Collected` data of the current step.

    Args:
        modules: ``(name, module)`` pairs of the model, in ``named_modules`` order.
        layers: The watched layers.
        activations: Measure output-gradient norms and unit statistics.
    """

    def __init__(self, modules: list[tuple[str, nn.Module]], layers: list[Layer], *,
                 activations: bool) -> None:
        self.names = [name or "(root)" for name, _ in modules]
        self.modules = [m for _, m in modules]
        self.owner_of, self.weight_user = owners(self.names, self.modules, layers)
        self.kinds = [activation_kind(m) for m in self.modules]
        self.elementwise = [isinstance(m, _ELEMENTWISE) for m in self.modules]
        self.container = [is_container(m) for m in self.modules]
        self.leaf = [next(m.children(), None) is None for m in self.modules]
        self._module_of = {layer: i for i, layer in enumerate(self.owner_of) if layer >= 0}
        self._grad_hooks: dict[tuple[int, bool, int], Callable[..., None]] = {
            (i, out, -1): Hook(self, "on_grad", i, out) for i in range(len(layers))
            for out in (True, False)}  # leaf tensor hooks (Stale when pickled); node hooks
        # live on the autograd graph only, so they are plain partials (cheaper to call)
        self._node_hooks: dict[tuple[Any, ...], Callable[..., None] | None] = {}  # per
        # (layer, output_nr, node type): the hook reading the input's slot (None: not direct)
        self.conv_like = [isinstance(m, nn.modules.conv._ConvNd) for m in self.modules]
        self.weighted = [isinstance(m, WEIGHTED) or u >= 0 for m, u in zip(self.modules,
                                                                              self.weight_user)]
        self.activations = activations
        self.armed = False
        self.compiled = False  # a forward hook was traced by torch.compile: keep hooks attached
        self.data = Collected()
        self._outputs: list[Tensor] = []  # module outputs waiting for their batched check
        self._grads_out: list[Tensor] = []  # output gradients waiting for their batched norm
        self._grads_in: list[Tensor] = []  # input gradients waiting for their batched norm
        self._leaf_hooks: dict[tuple[int, int, bool], tuple[Any, Any]] = {}  # this step's
        self._last_layer = -1
        self._entry = -1  # the step's first module given a floating input (the batch enters)
        self.units_on = True  # measure dead/saturated units in this forward (set per step)
        self.unit_window = UnitWindow()  # which units fired, over the last measured steps
        self.unit_batch = UnitBatch(self.unit_window)  # this forward's, counted at `take`
        self._slots: list[Slot] | None = None  # the hooks of a recorded step (made once)
        self._unit_slots: list[Slot] = []  # the activation modules' hooks (unit statistics)
        self._attached, self._units_attached, self._prev_in = False, False, None
        self._on_forward = [ForwardHook(self, i) for i in range(len(self.modules))]
        self._unit_only = [i for i, (k, e, o) in enumerate(zip(self.kinds, self.elementwise,
                                                                self.owner_of))
                           if k is not None and e and o < 0]  # hooked for unit statistics only
        only = set(self._unit_only)
        self._only_units = [i in only for i in range(len(self.modules))]
        # which backward passes accumulate into .grad (not autograd.grad ones): a hook on each
        # layer's first parameter, attached with the forward hooks (not on unrecorded steps)
        self._accumulating = [(i, layer.params[0]) for i, layer in enumerate(layers)
                              if not layer.params[0].is_sparse and hasattr(
                                  layer.params[0], "register_post_accumulate_grad_hook")]
        self._tasks: set[int] = set()
        self._used: set[tuple[int, int]] = set()  # (layer, graph task): added to its 1st .grad
        self._tracked = np.zeros(len(layers), dtype=bool)
        self._tracked[[i for i, _ in self._accumulating]] = True
        self._first = layers[0].params[0] if layers else None
        self._held_numel = [0, 0, 0]  # entries held: outputs, output grads, input grads
        self._direct = [False, False]  # reduce output/input gradients in float64 at once
        self._tiny: list[bool | None] = [None, None]  # a norm below float32's safe range?
        self.zeroing = ZeroCheck()  # were the gradients zeroed since the last step?

    def module_of_layer(self, layer: int) -> int | None:  # the module owning layer ``layer``
        return self._module_of.get(layer)

    # ---------------------------------------------------------------- lifecycle

    attached = property(lambda self: self._attached)

    def attach(self, units: bool = True) -> None:
        """Adds the hooks of a recorded step (unrecorded steps run without them): forward
        hooks on the layers and every module that is not element-wise (their outputs are
        checked for NaN), with activations a post-accumulate hook on each layer's first
        parameter, and with ``units`` forward hooks on the activation modules (unit
        statistics; taken out again on steps without them). Each is a `Slot`: after the first
        time, attaching and detaching are dict stores."""
        if self._slots is None:
            self._make_slots()
        if not self._attached:
            for slot in self._slots:
                slot.attach()
            self._attached = True
        units = units and self.activations
        if units != self._units_attached:
            for slot in self._unit_slots:
                if units:
                    slot.attach()
                else:
                    slot.detach()
            self._units_attached = units

    def _make_slots(self) -> None:
        slots = []
        if self.activations:
            slots += [Slot(p, "_post_accumulate_grad_hooks", p.register_post_accumulate_grad_hook,
                           TaskNote(self._tasks, self._used, i)) for i, p in self._accumulating]
        if self.modules:  # the model's own calls: where each forward pass begins and ends
            root = self.modules[0]
            slots += [Slot(root, "_forward_pre_hooks", root.register_forward_pre_hook,
                           Hook(self, "on_model_call")),
                      Slot(root, "_forward_hooks", root.register_forward_hook,
                           Hook(self, "on_model_return"))]
        for i, module in enumerate(self.modules):
            if self.owner_of[i] >= 0 or not (self.elementwise[i] or self.container[i]):
                slots.append(Slot(module, "_forward_hooks", module.register_forward_hook,
                                  self._on_forward[i]))
            if self.activations and isinstance(module, nn.RNNBase) and self.owner_of[i] >= 0:
                slots.append(Slot(module, "_forward_pre_hooks", module.register_forward_pre_hook,
                                  Hook(self, "on_recurrent_input", self.owner_of[i], module)))
        self._slots = slots
        self._unit_slots = [Slot(self.modules[i], "_forward_hooks",
                                 self.modules[i].register_forward_hook, self._on_forward[i])
                            for i in self._unit_only]

    def detach(self) -> None:
        for slot in reversed(self._slots or ()):  # (the last attached first: `Slot.attach`)
            slot.detach()
        for slot in self._unit_slots:
            slot.detach()
        self._drop_leaf_hooks()
        self._attached, self._units_attached, self._prev_in = False, False, None

    def close(self) -> None:
        self.detach()
        self.zeroing.disarm()
        self.armed = False

    def take(self, finite: bool | None = None) -> Collected:
        """Hands over what was collected and starts afresh. With ``finite=True`` (the step's
        parameter gradients are known to be finite) what only a non-finite step reads is
        dropped, not computed: the module-output checks and the input-gradient norms (they
        locate where a NaN was born). What was held is dropped even when a reduction raises
        (`_restart`): that step's data is lost, not every later step's."""
        data = self.data
        try:
            self._flush_units()
            data.tasks = set(self._tasks)
            if self._used and self.activations:  # (none seen: unknown, as under FSDP2)
                data.idle = self._tracked.copy()
                data.idle[list({layer for layer, _ in self._used})] = False
                data.added, data.tracked = set(self._used), self._tracked
            if finite:
                data.forward_bad, data.forward_norms, data.in_norms = [], [], []
                data.inp = Events()
            else:
                self._flush_outputs()
                self._flush_grads(self._grads_in, data.in_norms)
            self._flush_grads(self._grads_out, data.out_norms)
            self._next_step_grads()
            if self.zeroing.dropped:  # passes thrown away by a zero_grad() before the real one
                data.tasks -= self.zeroing.dropped
                data.added = {(layer, t) for layer, t in data.added if t in data.tasks}
            data.stale = self.zeroing.result()
        finally:
            self._restart()
        return data

    def _restart(self) -> None:
        """Starts the next step's collection afresh: drops the held tensors and this step's
        leaf hooks (`GradHooks._hook_leaf`)."""
        self._outputs, self._grads_out, self._grads_in = [], [], []
        self._held_numel = [0, 0, 0]
        self.unit_batch.clear()
        self._tasks.clear()
        self._used.clear()
        self.zeroing.disarm()  # (done by `ZeroCheck.result` unless that was not reached)
        self._drop_leaf_hooks()
        self.data, self._last_layer, self._entry, self._in_call = Collected(), -1, -1, 0
        self._prev_in = None

    def _flush_outputs(self) -> None:
        if self._outputs:
            try:
                self.data.forward_norms.append(_norms64(self._outputs, finiteness=True))
            finally:
                self._outputs = []
                self._held_numel[0] = 0

    # ---------------------------------------------------------------- hook interface

    amp_poll: Callable[[], None] | None = None
    """Called at the start of every hooked forward pass (the AMP skip detector polls there)."""

    _in_call = 0  # calls of the model under way (reset at `take`: a call may have raised)
    _prev_in = None  # the first input of the last module in `Collected.completed`

    def on_model_call(self, module: nn.Module, args: Any) -> None:
        if self.armed and (_is_compiling() or _task() == -1):  # (not a recomputation)
            self.data.passes.append(len(self.data.completed))
            self._in_call += 1

    def on_model_return(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._in_call:
            self._in_call -= 1

    def on_forward(self, index: int, module: nn.Module, args: Any, output: Any) -> None:
        if self.amp_poll is not None:
            self.amp_poll()  # an identity check unless an iteration ended unmeasured
        compiling = _is_compiling()
        if compiling:
            self.compiled = True
        if not self.armed or (self._only_units[index] and not self.units_on):
            return
        if not compiling and _transform() is not None and in_vmap():  # per-sample tensors
            return  # (vmap, jacrev): reducing them after the transform fails, and their
            # gradients add to no .grad; torch.func.grad alone is measured as a backward
        # activation checkpointing re-runs forwards inside the backward pass: the forward
        # order, the NaN checks and the unit statistics were taken in the forward; only the
        # gradient hooks are wanted again (the reentrant variant's gradients flow there)
        recomputing = not compiling and _task() != -1
        data = self.data
        if (self.owner_of[index] >= 0 or not self.elementwise[index]) and not recomputing:
            data.completed.append(index)  # (unit-only modules: hooked on some steps only)
            if not self._in_call and not torch.is_grad_enabled():
                data.loose.append(len(data.completed) - 1)
            first = args[0] if args else None  # (held, not its id: a freed tensor's comes back)
            if first is self._prev_in and isinstance(first, Tensor):
                data.same_input.append(len(data.completed) - 1)
            self._prev_in = first
        if isinstance(output, Tensor):
            tensors = [output] if output.is_floating_point() or output.is_complex() else []
        else:
            tensors = [t for t in iter_tensors(output) if t.is_floating_point() or t.is_complex()]
        if not recomputing and self._entry in (-1, index) and self._hold_inputs(index, args):
            self._entry = index  # the first module with a floating input: the batch enters
        if not (self.elementwise[index] or recomputing):  # element-wise: finite in, finite out
            held = self._outputs
            for t in tensors:  # NaN/Inf anywhere makes the float64 norm non-finite
                n = t.numel()
                if n and not (held and held[-1] is t):  # a container's = its child's
                    held.append(t)
                    data.forward_bad.append(index)
                    self._held_numel[0] += n
            if (len(held) >= BATCH_TENSORS or self._held_numel[0] >= BATCH_NUMEL) \
                    and not compiling:
                self._flush_outputs()  # (traced by torch.compile: at the end of the step)
        layer = self.owner_of[index]
        kind = self.kinds[index]
        if kind is not None and self._last_layer >= 0 and tensors and self.activations \
                and self.units_on and not recomputing and tensors[0].requires_grad:  # (else
            # an evaluation under no_grad, even between backward() and step())
            self._unit_stats(kind, tensors[0], module, index)
        if layer < 0:
            return
        self._last_layer = layer
        if self.activations and torch.is_grad_enabled():
            if len(tensors) == 1 and self._hook_node(tensors[0], args, layer):
                return
            for t in tensors:
                if t.requires_grad:
                    self._hook_grad(t, layer, True)
            hooked: list[Tensor] = []  # an input passed twice (attention's q, k, v): once
            for t in iter_tensors(args):
                if t.requires_grad and t.is_floating_point() and not any(
                        t is h for h in hooked):
                    hooked.append(t)
                    self._hook_grad(t, layer, False)

    def _hold_inputs(self, index: int, args: Any) -> bool:
        """Holds the floating inputs of the step's first module that has any, for the NaN
        check, tagged ``~index`` in `Collected.forward_bad`: a NaN already there came with the
        batch (or from the forward code before any module), not from the module. Returns
        whether it held one."""
        held = False
        for t in iter_tensors(args):
            if (t.is_floating_point() or t.is_complex()) and t.numel():
                self._outputs.append(t)
                self.data.forward_bad.append(~index)
                self._held_numel[0] += t.numel()
                held = True
        return held
