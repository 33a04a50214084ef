"""The hooks gradwatch attaches to a model, and what they collect during one recorded step.

Hooks hold the `Collector` through a weak reference and call its small public interface. Every
hook object pickles and deep-copies as an inert no-op, so ``torch.save(model)``, ``pickle`` and
``copy.deepcopy`` work while a model is watched and a copy carries no live hook.
"""

from __future__ import annotations

import math
import os
import sys
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from .layers import Layer, activation_kind
from .norms import tensor_norm

__all__ = ["iter_tensors", "inert", "Hook", "Collected", "Collector", "user_stacklevel"]


def iter_tensors(output: Any) -> Iterator[Tensor]:
    """The tensors in a module's output: a tensor, or nested tuples, lists and dict values."""
    if isinstance(output, Tensor):
        yield output
    elif isinstance(output, (tuple, list)):
        for item in output:
            yield from iter_tensors(item)
    elif isinstance(output, dict):
        for item in output.values():
            yield from iter_tensors(item)


def inert(*args: Any, **kwargs: Any) -> None:
    """What a gradwatch hook becomes in a pickled or copied model: nothing."""
    return None


class Hook:
    """A callable that forwards to ``method`` of a weakly held target; inert when copied."""

    __slots__ = ("ref", "method", "args")

    def __init__(self, target: Any, method: str, *args: Any) -> None:
        self.ref, self.method, self.args = weakref.ref(target), method, args

    def __call__(self, *call_args: Any) -> Any:
        target = self.ref()
        if target is None:
            return None
        return getattr(target, self.method)(*self.args, *call_args)

    def __reduce__(self) -> tuple[Callable[..., None], tuple[()]]:
        return (_make_inert, ())

    def __deepcopy__(self, memo: dict[int, Any]) -> Callable[..., None]:
        return inert

    def __copy__(self) -> Callable[..., None]:
        return inert


def _make_inert() -> Callable[..., None]:
    return inert


@dataclass
class Collected:
    """What the hooks gathered since the last measurement (a recorded step's forward/backward)."""

    completed: list[int] = field(default_factory=list)  # module ids in forward completion order
    forward_bad: list[tuple[int, Tensor]] = field(default_factory=list)  # (module, output sum)
    events: list[tuple[int, bool, Any, int, int]] = field(default_factory=list)
    """Backward order: (layer, is_output, norm, graph task, id of the gradient tensor)."""
    units: dict[tuple[int, str], list[Any]] = field(default_factory=dict)  # (layer, stat) -> values
    time: dict[int, list[Any]] = field(default_factory=dict)  # layer -> first/last ratios
    tasks: set[int] = field(default_factory=set)  # graph tasks that accumulated parameter grads


def _task() -> int:
    return torch._C._current_graph_task_id()


class Collector:
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
        owner = {layer.name: i for i, layer in enumerate(layers)}
        param_layer = {id(p): i for i, layer in enumerate(layers) for p in layer.params}
        self.owner_of = [owner.get(n, -1) for n in self.names]  # module -> layer it owns
        self.weight_user = []  # module -> layer whose weight matrix it applies (tied heads too)
        for m, own in zip(self.modules, self.owner_of):
            used = [param_layer[id(p)] for p in m.parameters(recurse=False)
                    if id(p) in param_layer and p.ndim >= 2]
            self.weight_user.append(own if own >= 0 and layers[own].role == "weight"
                                    else (used[0] if used and layers[used[0]].role in
                                          ("weight", "embedding") and own < 0 else -1))
        self.kinds = [activation_kind(m) for m in self.modules]
        self.conv_like = [isinstance(m, nn.modules.conv._ConvNd) for m in self.modules]
        self.activations = activations
        self.armed = False
        self.compiled = False  # a forward hook was traced by torch.compile: keep hooks attached
        self.data = Collected()
        self._last_layer = -1
        self._forward_handles: list[Any] = []
        self._persistent: list[Any] = []
        if activations:  # which backward passes accumulate into .grad (not autograd.grad ones)
            for i, layer in enumerate(layers):
                p = layer.params[0]
                if hasattr(p, "register_post_accumulate_grad_hook") and not p.is_sparse:
                    self._persistent.append(p.register_post_accumulate_grad_hook(
                        Hook(self, "on_accumulate")))

    # ---------------------------------------------------------------- lifecycle

    @property
    def attached(self) -> bool:
        return bool(self._forward_handles)

    def attach(self) -> None:
        """Adds the forward hooks (recorded forwards only; unrecorded steps run without them)."""
        if self._forward_handles:
            return
        for i, module in enumerate(self.modules):
            self._forward_handles.append(module.register_forward_hook(Hook(self, "on_forward", i)))
            if self.activations and isinstance(module, nn.RNNBase) and self.owner_of[i] >= 0:
                self._forward_handles.append(module.register_forward_pre_hook(
                    Hook(self, "on_recurrent_input", self.owner_of[i], module)))

    def detach(self) -> None:
        for handle in self._forward_handles:
            handle.remove()
        self._forward_handles.clear()

    def close(self) -> None:
        self.detach()
        for handle in self._persistent:
            handle.remove()
        self._persistent.clear()
        self.armed = False

    def take(self) -> Collected:
        """Hands over what was collected and starts afresh."""
        data, self.data, self._last_layer = self.data, Collected(), -1
        return data

    # ---------------------------------------------------------------- hook interface

    amp_poll: Callable[[], None] | None = None
    """Called at the start of every hooked forward pass (the AMP skip detector polls there)."""

    def on_forward(self, index: int, module: nn.Module, args: Any, output: Any) -> None:
        if self.amp_poll is not None:
            self.amp_poll()  # an identity check unless an iteration ended unmeasured
        compiling = torch.compiler.is_compiling()
        if compiling:
            self.compiled = True
        if not self.armed:
            return
        data = self.data
        data.completed.append(index)
        tensors = [t for t in iter_tensors(output) if t.is_floating_point() or t.is_complex()]
        for t in tensors:  # NaN/Inf anywhere makes the float64 sum non-finite; read at measure
            if t.numel():
                data.forward_bad.append((index, t.detach().sum(dtype=torch.float64)))
        layer = self.owner_of[index]
        grad_on = torch.is_grad_enabled()
        kind = self.kinds[index]
        if kind is not None and self._last_layer >= 0 and tensors and self.activations:
            self._unit_stats(kind, tensors[0], module)
        if layer < 0:
            return
        self._last_layer = layer
        if self.activations and grad_on:
            for t in tensors:
                if t.requires_grad:
                    t.register_hook(Hook(self, "on_grad", layer, True))
            for t in iter_tensors(args):
                if t.requires_grad and t.is_floating_point():
                    t.register_hook(Hook(self, "on_grad", layer, False))

    def on_grad(self, layer: int, is_output: bool, grad: Tensor) -> None:
        if self.armed:
            self.data.events.append((layer, is_output, tensor_norm(grad.detach()), _task(),
                                     id(grad)))

    def on_accumulate(self, param: Tensor) -> None:
        if self.armed:
            self.data.tasks.add(_task())

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
        g = grad.detach()
        first = torch.linalg.vector_norm(g.select(dim, 0), dtype=torch.float64)
        last = torch.linalg.vector_norm(g.select(dim, -1), dtype=torch.float64)
        ratio = torch.where(last > 0, first / last, torch.zeros_like(first))
        self.data.time.setdefault(layer, []).append(ratio)

    # ---------------------------------------------------------------- helpers

    def _unit_stats(self, kind: str, y: Tensor, module: nn.Module) -> None:
        y = y.detach()
        if y.dim() == 0:
            return
        if kind == "rectifier":
            unit_dim = 1 if y.dim() >= 3 and self.conv_like[self._last_index()] else y.dim() - 1
            other = tuple(d for d in range(y.dim()) if d != unit_dim)
            alive = y.amax(dim=other) > 0 if other else y > 0
            value = 1.0 - alive.sum(dtype=torch.float64) / alive.numel()
            key = (self._last_layer, "dead_frac")
        else:
            lo, hi = _bounds(module)
            if lo == -math.inf:  # softmax-like: near one-hot
                sat = y > 0.99
            else:  # within 1% of either bound: |y - mid| >= 0.49 (hi - lo)
                sat = (y - (lo + hi) / 2).abs_() >= 0.49 * (hi - lo)
            value = sat.sum(dtype=torch.float64) / sat.numel()
            key = (self._last_layer, "sat_frac")
        self.data.units.setdefault(key, []).append(value)

    def _last_index(self) -> int:
        for index in reversed(self.data.completed):
            if self.owner_of[index] == self._last_layer:
                return index
        return 0


def _bounds(module: nn.Module) -> tuple[float, float]:
    if isinstance(module, nn.Tanh) or isinstance(module, nn.Softsign):
        return -1.0, 1.0
    if isinstance(module, nn.Hardtanh):
        return float(module.min_val), float(module.max_val)
    if isinstance(module, nn.Softmax):
        return -math.inf, 1.0
    return 0.0, 1.0  # sigmoid, hardsigmoid


_SKIP_DIRS = (os.path.dirname(__file__), os.path.dirname(torch.__file__))


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning point at the first frame outside gradwatch/torch."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_SKIP_DIRS):
        frame, level = frame.f_back, level + 1
    return level
