"""What the hooks of one recorded step gather: gradient events, held tensors and their batched norms."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple
import torch
from torch import Tensor, nn
from .hooks import Stale
from ..measure.batched import foreach_norm64, grouped_norms
from ..measure.norms import TINY, repair_norms

__all__ = ['Events', 'UnitEntry', 'Collected', 'BATCH_TENSORS', 'BATCH_NUMEL', 'is_container',
           'TaskNote', 'batched_norms64']


@dataclass
class Events:
    """Gradient events of one direction, one row each (one append per event in the hook):
    the layer, the autograd graph task (which backward pass), the id of the gradient tensor
    and the event's place in the backward order (shared by both directions); read as
    columns."""

    rows: list[tuple[int, int, int, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    def column(self, k: int) -> list[int]:
        return [row[k] for row in self.rows]

    @property
    def layer(self) -> list[int]:
        return self.column(0)

    @property
    def task(self) -> list[int]:
        return self.column(1)


class UnitEntry(NamedTuple):
    """One activation call's unit statistic: ``statistic`` ("dead_frac" or "sat_frac") of
    ``layer``, counted over ``n`` units (rectifiers) or outputs (saturating modules) at call
    ``site``. A rectifier's site includes its units' shape (the key of its window): the count
    of its last call in a step is the union of its calls' (`gradwatch.measure.read`)."""

    layer: int
    statistic: str
    n: int
    site: tuple[int, ...]


@dataclass
class Collected:
    """What the hooks gathered since the last measurement (a recorded step's forward/backward)."""

    completed: list[int] = field(default_factory=list)  # module ids in forward completion order
    passes: list[int] = field(default_factory=list)
    """Where each call of the model began, as positions in ``completed``: a step may run the
    model several times (accumulated micro-batches, a validation or target pass under
    ``no_grad``), and only a module run twice within one call shares its weights across
    depth (`gradwatch.capture.forward.ForwardOrder.repeated`)."""
    loose: list[int] = field(default_factory=list)
    """Positions in ``completed`` of modules run outside any call of the model with gradients
    off (a sub-module's features for logging between backward and step): when the model was
    called, they are no part of its forward order."""
    same_input: list[int] = field(default_factory=list)
    """Positions in ``completed`` of modules whose first input was the module's before them
    (attention's query, key and value projections): one depth of the model."""
    forward_bad: list[int] = field(default_factory=list)  # module of each checked output
    # (``~module`` for the inputs of the step's first module: the batch entering the model)
    forward_norms: list[Tensor] = field(default_factory=list)
    """float64 norms of the checked outputs (NaN/Inf iff the output holds NaN/Inf), in chunks,
    aligned with ``forward_bad``."""
    seq: int = 0  # backward events so far, both directions (the next one's place)
    out: Events = field(default_factory=lambda: Events())
    """Output-gradient events (the gradient w.r.t. a layer's output), in backward order."""
    inp: Events = field(default_factory=lambda: Events())
    """Input-gradient events (w.r.t. a layer's input): read only on a non-finite step."""
    out_norms: list[Tensor] = field(default_factory=list)  # output-gradient events' norms
    in_norms: list[Tensor] = field(default_factory=list)  # input-gradient events' norms
    units: list[UnitEntry] = field(default_factory=list)
    """One per activation call: alive units, saturated outputs."""
    unit_counts: list[Tensor] = field(default_factory=list)
    """Their counts: float64 device vectors whose concatenation is aligned with ``units``."""
    time: dict[int, list[Any]] = field(default_factory=dict)  # layer -> first/last ratios
    stale: Any = None
    """Whether the gradients still held the last optimizer step's values when this backward
    began (a device bool; None: not checked)."""
    tasks: set[int] = field(default_factory=set)  # graph tasks that accumulated parameter grads
    added: set[tuple[int, int]] = field(default_factory=set)
    """(layer, graph task): the pass accumulated into the layer's first parameter (empty: not
    known); a layer's output gradient counts only such passes (`tracked` layers)."""
    tracked: Any = None  # bool per layer: its first parameter is hooked (`added` tells it)
    idle: Any = None
    """Bool per watched layer: its first parameter's ``.grad`` was not accumulated by any
    backward pass of the step (a gradient zeroed in place and left so: the layer was not
    used); None where that is not known (no accumulation seen at all, as when a wrapper
    assigns ``.grad`` itself, or ``activations=False``)."""


BATCH_TENSORS = 1024


BATCH_NUMEL = 1 << 22
"""Module outputs and activation gradients are held until `BATCH_TENSORS` of them, or
`BATCH_NUMEL` entries (16 MiB of float32), are held; then they are reduced in one batched
``torch._foreach_norm`` call (and at the end of the step): one call instead of one kernel per
tensor, and a model of many small layers makes a few calls per step. Held outputs that a
finite step never reads (the NaN checks) are dropped unreduced. An output changed in place
before its batch is reduced (an in-place ReLU after it) is checked as changed: NaN stays NaN
there. A gradient's norm is its own whatever batch it is reduced in
(`gradwatch.measure.batched`), and whether a step's gradients are reduced in float64 at once is
decided per step, from the last step's (`GradHooks._flush_grads`), so the numbers do not depend
on where the batches end."""


def is_container(module: nn.Module) -> bool:
    """Whether ``module`` is torch's plain `nn.Sequential`: its forward only calls its children,
    so its output is its last child's and hooking it adds nothing."""
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _norms64(tensors: list[Tensor], finiteness: bool = False, direct: bool = False) -> Tensor:
    """The L2 norm of each tensor, as a float64 vector. On accelerators reduced in float64 (no
    host sync); on the CPU in float32 as torch's own ``vector_norm`` (with its float32 rounding:
    up to 9e-4 relative to a float64 reduction measured on a 12.8M-entry layer), one batched
    call, and only the norms outside float32's safe range
    (below `TINY` or non-finite: underflowed or overflowed squares) redone in float64, in one
    more batched call. With ``finiteness`` only whether each is finite matters (a NaN
    check), so underflowed norms are not redone; with ``direct`` (the last batch needed the
    redo: a vanishing net) the CPU reduces in float64 at once."""
    with torch.no_grad():
        if any(t.is_complex() for t in tensors):  # |z| is the real tensor with the same norm
            tensors = [t.abs() if t.is_complex() else t for t in tensors]
        device = tensors[0].device
        if direct or device.type != "cpu" or any(t.dtype == torch.float64 for t in tensors):
            if any(t.device != device for t in tensors):  # a model split across devices
                norms = torch._foreach_norm(tensors, 2, dtype=torch.float64)
                return torch.stack([n.to(device, non_blocking=True) for n in norms])
            return foreach_norm64(tensors)
        n32 = grouped_norms(tensors)  # float32 tensors: fewer kernels, the same bits
        if n32 is None:
            n32 = torch.stack(torch._foreach_norm(tensors, 2, dtype=torch.float32))
        values = n32.tolist()
        if (finiteness or min(values) >= TINY) and sum(values) < math.inf:  # NaN fails too
            return n32.double()
        return torch.tensor(repair_norms(values, tensors), dtype=torch.float64)


def batched_norms64(tensors: list[Tensor], direct: bool = False) -> Tensor | None:
    """`_norms64` for a batch it could not reduce because some of ``tensors`` are batched by a
    vmap that has returned (``autograd.grad(..., is_grads_batched=True)`` and
    ``jacobian(vectorize=True)`` run the backward through a hooked layer under one, handing its
    hooks batched gradients): NaN for those ("not measured"; their pass adds to no ``.grad``,
    so a step with an accumulating pass reads none of them), the others' norms as usual. None
    when none is batched (the failure was something else). Only called after a failure."""
    f = torch._C._functorch
    bad = [f.is_functorch_wrapped_tensor(t) or f.is_legacy_batchedtensor(t) for t in tensors]
    if not any(bad):
        return None
    out = torch.full((len(tensors),), math.nan, dtype=torch.float64, device=tensors[0].device)
    good = [t for t, b in zip(tensors, bad) if not b]
    if good:
        keep = torch.tensor([not b for b in bad], device=out.device)
        out[keep] = _norms64(good, direct=direct).to(out.device)
    return out


_task = torch._C._current_graph_task_id
"""The id of the autograd graph task running now (-1 outside a backward pass)."""


class TaskNote:
    """The post-accumulate hook on a layer's first parameter: notes which backward pass (graph
    task) accumulates into ``.grad`` (an ``autograd.grad`` pass does not), and that the layer's
    gradient was accumulated (a ``.grad`` zeroed in place and never reached since still holds a
    tensor: this tells the two apart). It holds only the sets it writes to; in a pickled or
    copied model it is a `gradwatch.capture.hooks.Stale`."""

    __slots__ = ("tasks", "used", "layer")

    def __init__(self, tasks: set[int], used: set[int], layer: int) -> None:
        self.tasks, self.used, self.layer = tasks, used, layer

    def __call__(self, param: Tensor) -> None:
        task = torch._C._current_graph_task_id()
        self.tasks.add(task)
        self.used.add((self.layer, task))

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (Stale, ())

    def __deepcopy__(self, memo: dict[int, Any]) -> Stale:
        return Stale()
