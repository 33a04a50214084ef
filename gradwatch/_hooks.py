"""The hooks gradwatch attaches: all of them hold the monitor through a weak reference."""

from __future__ import annotations

import os
import weakref
from typing import Any, Callable, Iterator

import torch
from torch import Tensor

__all__ = ["iter_tensors", "forward_hook", "step_pre_hook", "step_post_hook", "user_stacklevel"]


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


def forward_hook(ref: weakref.ref, index: int) -> Callable[..., None]:
    """A forward hook that tells the monitor layer ``index`` ran and produced ``output``."""

    def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
        watch = ref()
        if watch is not None and watch._amp_skips is not None:
            watch._check_amp_skip()  # an overflow-skipped step ended before this forward
        if watch is not None and watch._armed:
            watch._on_forward(index, output)

    return hook


def grad_hook(ref: weakref.ref, index: int) -> Callable[[Tensor], None]:
    """A tensor hook that hands the gradient w.r.t. layer ``index``'s output to the monitor."""

    def hook(grad: Tensor) -> None:
        watch = ref()
        if watch is not None and not watch._closed:
            watch._on_output_grad(index, grad)

    return hook


def step_pre_hook(ref: weakref.ref) -> Callable[..., None]:
    def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        watch = ref()
        if watch is not None:
            watch._on_optimizer_step()

    return hook


def step_post_hook(ref: weakref.ref) -> Callable[..., None]:
    def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        watch = ref()
        if watch is not None:
            watch._after_optimizer_step()

    return hook


_SKIP_DIRS = (os.path.dirname(__file__), os.path.dirname(torch.__file__))


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning point at the first frame outside gradwatch/torch."""
    import sys

    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_SKIP_DIRS):
        frame, level = frame.f_back, level + 1
    return level
