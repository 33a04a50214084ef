"""The hook trampoline gradwatch attaches to a model, and what a hook becomes in a copy.

Hooks hold the `Collector` through a weak reference and call its small public interface. Every
hook object pickles and deep-copies as a `Stale` that removes itself at its first call, so
``torch.save(model)``, ``pickle`` and ``copy.deepcopy`` work while a model is watched and a copy
carries no live hook.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import weakref
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn


__all__ = ["iter_tensors", "in_vmap", "Hook", "ForwardHook", "Slot", "Stale", "user_stacklevel"]


def iter_tensors(output: Any) -> Iterator[Tensor]:
    """The tensors in a module's output: a tensor, or nested tuples, lists, dict values and
    the fields of dataclass instances (tested last, after None, the commonest other item: the
    common cases pay nothing for it)."""
    if isinstance(output, Tensor):
        yield output
    elif isinstance(output, (tuple, list)):
        for item in output:
            yield from iter_tensors(item)
    elif isinstance(output, dict):
        for item in output.values():
            yield from iter_tensors(item)
    elif output is not None and dataclasses.is_dataclass(output) and not isinstance(
            output, type):
        for f in dataclasses.fields(output):
            yield from iter_tensors(getattr(output, f.name))



def in_vmap() -> bool:
    """Whether a ``torch.func.vmap`` (or a transform built on it: ``jacrev``) is running."""
    vmap = torch._C._functorch.TransformType.Vmap
    return any(i.key() == vmap for i in torch._C._functorch.get_interpreter_stack() or ())


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

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[()]]:
        return (Stale, ())

    def __deepcopy__(self, memo: dict[int, Any]) -> Stale:
        return Stale()

    def __copy__(self) -> Stale:
        return Stale()


class ForwardHook(Hook):
    """`Hook` for ``on_forward`` of the module at ``index`` (a recorded step's hot path: no
    name lookup, no argument tuple joined per call)."""

    __slots__ = ()

    def __init__(self, target: Any, index: int) -> None:
        super().__init__(target, "on_forward", index)

    def __call__(self, module: Any, args: Any, output: Any) -> Any:
        target = self.ref()
        return None if target is None else target.on_forward(self.args[0], module, args, output)


class Slot:
    """One hook put into and taken out of the hook dict of a module or tensor (``attr``, e.g.
    ``"_forward_hooks"``) under the key its first registration reserved: attaching it again is
    one dict store, not a new `torch.utils.hooks.RemovableHandle` (about 0.1 against 1.5 µs).
    It registers afresh when that dict was replaced since. The hook keeps its place among the
    other hooks in the dict (a user's forward hook added after the watch that replaces the
    output runs after gradwatch's at every recorded step, not only at the first): a dict
    appends a key stored again at its end, so where other hooks share the dict (rare), the
    order is rebuilt (`_reinsert`)."""

    __slots__ = ("owner", "attr", "register", "hook", "key", "table", "order")

    def __init__(self, owner: Any, attr: str, register: Callable[[Any], Any], hook: Any) -> None:
        self.owner, self.attr, self.register, self.hook = owner, attr, register, hook
        self.key: int | None = None
        self.table: dict | None = None
        self.order: tuple[int, ...] = ()  # the dict's keys when last detached beside others

    def attach(self) -> None:
        table = getattr(self.owner, self.attr, None)
        if self.key is None or table is not self.table:
            self.key = self.register(self.hook).id
            self.table = getattr(self.owner, self.attr)
        elif table:  # other hooks there (rare): back in its place, not at the end
            _reinsert(table, self.key, self.hook, self.order)
        else:
            table[self.key] = self.hook

    def detach(self) -> None:
        table = self.table
        if table is not None:
            if len(table) > 1 and self.key in table:  # (rare) others there: note its place
                self.order = tuple(table)
            table.pop(self.key, None)


def _reinsert(table: dict, key: int, hook: Any, order: tuple[int, ...]) -> None:
    """Puts ``hook`` back into ``table`` under ``key`` where it was when ``order`` (the keys
    then) was noted: right after the last hook that came before it and is still there, else
    right before the first that came after it. Hooks added since went to the front
    (``prepend=True``) or the end, so they keep their side. With nothing of ``order`` left, in
    registration order (handle ids grow with it): before the first hook registered after it.
    (Slots sharing a dict are detached in the reverse order of their attaching, so each notes
    the ones before it.)"""
    if key in table:
        return
    keys = list(table)
    if key not in order:
        order = ()
    k = order.index(key) if order else 0
    before = [c for c in order[:k] if c in table]
    after = [c for c in order[k + 1:] if c in table]
    if before:
        pos = keys.index(before[-1]) + 1
    elif after:
        pos = keys.index(after[0])
    else:
        pos = next((i for i, c in enumerate(keys) if c > key), len(keys))
    if pos == len(keys):  # (gradwatch's own hooks on the root: the last of them)
        table[key] = hook
        return
    items = [(c, table[c]) for c in keys]
    items.insert(pos, (key, hook))
    table.clear()
    table.update(items)


class Stale:
    """What a gradwatch hook becomes in a copied or unpickled model (``copy.deepcopy(model)``
    as EMA helpers make, ``torch.save(model)``): called once, on the copy's first forward or
    backward through it, it removes itself from the module it is registered on, so the copy
    runs without it from then on. It holds nothing and does nothing else."""

    __slots__ = ()

    def __call__(self, *args: Any) -> None:
        module = args[0] if args and isinstance(args[0], nn.Module) else None
        if module is not None:
            for name in _HOOK_DICTS:
                hooks = getattr(module, name, None)
                if hooks:
                    for key in [k for k, v in hooks.items() if v is self]:
                        del hooks[key]
        return None


_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
               "_backward_pre_hooks")
"""Where `torch.nn.Module` keeps hooks (the ``*_with_kwargs`` and ``*_always_called`` sets
are keyed by the same ids and ignore ids no longer present)."""


_ELEMENTWISE = tuple(getattr(nn, n) for n in (
    "ReLU", "ReLU6", "LeakyReLU", "PReLU", "RReLU", "ELU", "SELU", "CELU", "GELU", "SiLU", "Mish",
    "Sigmoid", "Tanh", "Hardtanh", "Hardsigmoid", "Hardswish", "Softsign", "Softplus",
    "Tanhshrink", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "Identity")
    if hasattr(nn, n))
"""Modules whose finite inputs give finite outputs: their outputs are not checked for NaN."""


def _bounds(module: nn.Module) -> tuple[float, float]:
    if isinstance(module, nn.Tanh) or isinstance(module, nn.Softsign):
        return -1.0, 1.0
    if isinstance(module, nn.Hardtanh):
        return float(module.min_val), float(module.max_val)
    if isinstance(module, nn.Softmax):
        return -math.inf, 1.0
    return 0.0, 1.0  # sigmoid, hardsigmoid


_SKIP_DIRS = (os.path.dirname(os.path.dirname(__file__)), os.path.dirname(torch.__file__))


def user_stacklevel(skip: tuple[str, ...] = ()) -> int:
    """The ``stacklevel`` that makes a warning point at the first frame outside gradwatch/torch
    (and the files ``skip``, such as weakref's, whose finalizers call gradwatch)."""
    frame, level, dirs = sys._getframe(1), 1, _SKIP_DIRS + skip
    while frame is not None and frame.f_code.co_filename.startswith(dirs):
        frame, level = frame.f_back, level + 1
    return level
