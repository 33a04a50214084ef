"""Per-tensor reductions batched into a few kernels, for many small tensors: norms grouped by
shape (bit for bit what ``torch._foreach_norm`` gives), and sums over consecutive runs of a
flat vector (float64 norms, unit counts). Layouts are planned once and remembered."""

from __future__ import annotations

import itertools
import math
import operator
from collections import defaultdict
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from .host import to_device

__all__ = ["GROUP_MAX", "SEGMENT_MAX", "grouped_norms", "Segments", "foreach_norm64", "remember",
           "plain_cpu", "DTYPE"]

GROUP_MAX = 1 << 15
"""On the CPU, contiguous float32/float64 tensors of at most this many entries that share a
shape have their norms taken together (`grouped_norms`); bigger ones one by one."""

DTYPE, _NUMEL = operator.attrgetter("dtype"), Tensor.numel  # (read in C, over many tensors)
_LAYOUT, _IS_CPU = operator.attrgetter("layout"), operator.attrgetter("is_cpu")


_REAL = frozenset((torch.float16, torch.bfloat16, torch.float32, torch.float64))


def plain_cpu(tensors: Sequence[Tensor]) -> bool:
    """Whether ``tensors`` are all plain (no subclass), dense, real, non-empty CPU tensors,
    checked in C (about 0.05 us per tensor per check, against 0.1 to 0.2 for a generator)."""
    return (set(map(type, tensors)) == {Tensor} and all(map(_IS_CPU, tensors))
            and set(map(_LAYOUT, tensors)) == {torch.strided}
            and set(map(DTYPE, tensors)) <= _REAL and all(map(_NUMEL, tensors)))


def remember(cache: dict[Any, Any], key: Any, make: Callable[[], Any], limit: int = 64) -> Any:
    """``cache[key]``, made by ``make()`` when missing; a cache past ``limit`` entries (layouts
    that keep changing) is emptied first."""
    found = cache.get(key)
    if found is None:
        if len(cache) > limit:
            cache.clear()
        found = cache[key] = make()
    return found


def _by_shape(tensors: Sequence[Tensor], limit: int
              ) -> tuple[list[int], list[list[int]], list[int]]:
    """Each tensor's entry count, the positions of the tensors of 1 to ``limit`` entries
    grouped by shape (in order of first appearance), and the positions of the others."""
    shapes = [t.shape for t in tensors]
    sizes = [math.prod(shape) for shape in shapes]
    by_shape: dict[torch.Size, list[int]] = defaultdict(list)
    rest: list[int] = []
    for i, (shape, n) in enumerate(zip(shapes, sizes)):
        (by_shape[shape] if 0 < n <= limit else rest).append(i)
    return sizes, list(by_shape.values()), rest


class _Plan:
    """How `grouped_norms` reduces CPU tensors laid out as the ones it was made from: the groups
    of two or more small tensors of one shape (an index getter and the count each), the others,
    and where each tensor's norm lands in the concatenated results."""

    def __init__(self, tensors: Sequence[Tensor]) -> None:
        sizes, by_shape, rest = _by_shape(tensors, GROUP_MAX)
        self.empty = 0 in sizes
        groups = [idx for idx in by_shape if len(idx) > 1]
        self.rest = sorted(rest + [idx[0] for idx in by_shape if len(idx) == 1])
        self.groups = [(operator.itemgetter(*idx), len(idx)) for idx in groups]
        order = [i for idx in groups for i in idx] + self.rest
        self.in_order = order == list(range(len(tensors)))
        inverse = [0] * len(order)
        for position, i in enumerate(order):
            inverse[i] = position
        self.inverse = torch.tensor(inverse, dtype=torch.int64)

    def norms(self, tensors: Sequence[Tensor]) -> Tensor:
        """The tensors' norms (see `grouped_norms`, which checks what they are)."""
        if len(tensors) < 4 or not self.groups or not all(map(Tensor.is_contiguous, tensors)):
            return _foreach_norms(tensors)
        try:  # (a group whose shapes changed at equal sizes: ``stack`` refuses it)
            parts = [torch.linalg.vector_norm(torch.stack(get(tensors)).view(count, -1), dim=1)
                     for get, count in self.groups]
        except RuntimeError:
            return _foreach_norms(tensors)
        if self.rest:
            parts.append(_foreach_norms([tensors[i] for i in self.rest]))
        joined = parts[0] if len(parts) == 1 else torch.cat(parts)
        return joined if self.in_order else joined.index_select(0, self.inverse)


def _foreach_norms(tensors: Sequence[Tensor]) -> Tensor:
    return torch.stack(torch._foreach_norm(list(tensors), 2))


_PLANS: dict[tuple[int, ...], _Plan] = {}
_FLATS: dict[tuple[int, ...], "_Flat"] = {}
_SEEN: dict[tuple[int, ...], bool] = {}


def _planned(plans: dict[tuple[int, ...], Any], make: Callable[[Any], Any],
             tensors: Sequence[Tensor]) -> Any:
    """The plan in ``plans`` for the layout of ``tensors``, made by ``make`` the second time
    that layout is met: None the first time (the caller then takes its plain path), so a
    layout that changes at every step (experts routed differently, gradients that come and go)
    costs a lookup, not a plan, per step. At most 64 plans and 256 layouts met once are kept.
    A layout is looked up by the tensors' entry counts (plain ints: reading every shape would
    make a `torch.Size`, a tuple the garbage collector tracks, per tensor per call); a plan
    made from the shapes stacks only tensors of one shape (``stack`` checks it)."""
    key = tuple(map(_NUMEL, tensors))
    plan = plans.get(key)
    if plan is None:
        if key not in _SEEN:
            remember(_SEEN, key, lambda: True, limit=256)
            return None
        plan = remember(plans, key, lambda: make(tensors))
    return plan


def grouped_norms(tensors: Sequence[Tensor]) -> Tensor | None:
    """``torch.stack(torch._foreach_norm(tensors, 2))``, bit for bit, in fewer kernels, for
    dense non-empty CPU tensors (plain `torch.Tensor`, no subclass) of one dtype, float32 or
    float64; None for any other input.

    On the CPU ``_foreach_norm`` runs one ``linalg.vector_norm`` per tensor (about 1 us each).
    The 2-norm of a contiguous float32/float64 tensor reduces its one contiguous run of
    entries with the same vectorised kernel that a row-wise norm of a stacked matrix applies
    to each row (ATen's last-dimension reduction), so tensors of one shape (`GROUP_MAX`
    entries at most) are stacked and reduced by rows: one stack and one norm per shape. Other
    memory layouts (a channels-last gradient reduces in memory order) take ``_foreach_norm``.
    The checks read attributes in C (about 0.04 us per tensor each).
    """
    if not tensors or set(map(type, tensors)) != {Tensor} or not all(map(_IS_CPU, tensors)):
        return None  # (a subclass, as a DTensor, may stack and reduce its own way)
    dtypes = set(map(DTYPE, tensors))
    if len(dtypes) != 1 or dtypes.pop() not in (torch.float32, torch.float64) \
            or set(map(_LAYOUT, tensors)) != {torch.strided}:
        return None
    plan = _planned(_PLANS, _Plan, tensors)
    return None if plan is None or plan.empty else plan.norms(tensors)


class Segments:
    """Consecutive runs of given lengths in a flat vector on ``device``, made once per layout:
    their sums in one `torch.segment_reduce` on the CPU, elsewhere from one cumulative sum read
    at the runs' ends (exact for 0/1 counts; no host synchronisation: the lengths travel from
    pinned memory)."""

    def __init__(self, lengths: list[int], device: torch.device) -> None:
        self._lengths, self.device = lengths, device
        self.lengths = to_device(lengths, torch.int64, device)
        self._ends: Tensor | None = None

    def sums(self, flat: Tensor) -> Tensor:
        if flat.is_cpu:
            return torch.segment_reduce(flat, "sum", lengths=self.lengths)
        return self.cumulative(flat)

    def cumulative(self, flat: Tensor) -> Tensor:
        if self._ends is None:
            self._ends = to_device(list(itertools.accumulate(self._lengths, initial=-1))[1:],
                                   torch.int64, self.device)
        at_ends = flat.cumsum(0).index_select(0, self._ends)
        return torch.diff(at_ends, prepend=at_ends.new_zeros(1))


SEGMENT_MAX = 1024
"""On the CPU, tensors of at most this many entries are reduced to float64 norms together (one
float64 buffer, a segment sum): a third of ``torch._foreach_norm``'s per-tensor cost there;
beyond it the per-tensor kernel is faster."""


_SEGMENTS: dict[tuple[tuple[int, ...], torch.device], Segments] = {}


def _segments(lengths: tuple[int, ...], device: torch.device) -> Segments:
    """The `Segments` of ``lengths`` on ``device``, made once per layout."""
    return remember(_SEGMENTS, (lengths, device), lambda: Segments(list(lengths), device))


class _Flat:
    """How `foreach_norm64` lays CPU tensors laid out as the ones it was made from into one
    flat buffer: those of at most `SEGMENT_MAX` entries grouped by shape (one stack per shape
    instead of one view per tensor), the others apart."""

    def __init__(self, tensors: Sequence[Tensor]) -> None:
        sizes, groups, self.rest = _by_shape(tensors, SEGMENT_MAX)
        self.getters = [operator.itemgetter(*idx) if len(idx) > 1 else _single(idx[0])
                        for idx in groups]
        order = [i for idx in groups for i in idx]
        self.count = len(order)
        self.lengths = tuple(sizes[i] for i in order)
        self.order = torch.tensor(order, dtype=torch.int64)

    def flat(self, tensors: Sequence[Tensor]) -> Tensor:
        """The small tensors' entries, in float64, one after another in the plan's order."""
        return torch.cat([torch.stack(get(tensors)).view(-1) for get in self.getters]).double()


def _single(i: int):
    return lambda tensors: (tensors[i],)


def foreach_norm64(tensors: Sequence[Tensor]) -> Tensor:
    """The float64 L2 norm of each (dense, real, non-empty) tensor, as a float64 vector on the
    first tensor's device: ``torch._foreach_norm(tensors, 2, dtype=torch.float64)`` stacked,
    with the small CPU tensors (`SEGMENT_MAX`) summed together instead. Both reduce in float64;
    they differ by summation order (about 1e-16 relative). The segment sums do not depend on
    where a tensor sits in the buffer, so the buffer is laid out by shape (`_Flat`)."""
    if not tensors or set(map(type, tensors)) != {Tensor} or not all(map(_IS_CPU, tensors)):
        return _flat_norm64(tensors)
    plan = _planned(_FLATS, _Flat, tensors)
    if plan is None:
        return _flat_norm64(tensors)
    if plan.count < 8:
        return torch.stack(torch._foreach_norm(list(tensors), 2, dtype=torch.float64))
    try:  # (a group whose shapes changed at equal sizes: ``stack`` refuses it)
        flat = plan.flat(tensors)
    except RuntimeError:
        return _flat_norm64(tensors)
    summed = _segments(plan.lengths, torch.device("cpu")).sums(flat.square_()).sqrt_()
    out = torch.empty(len(tensors), dtype=torch.float64)
    out.index_copy_(0, plan.order, summed)
    if plan.rest:
        out[plan.rest] = torch.stack(torch._foreach_norm([tensors[k] for k in plan.rest], 2,
                                                         dtype=torch.float64))
    return out


def _flat_norm64(tensors: Sequence[Tensor]) -> Tensor:
    """`foreach_norm64` with its small CPU tensors in one flat buffer in their own order (for
    tensors not all plain CPU ones, and for a layout met the first time)."""
    sizes = [t.numel() if t.is_cpu else 0 for t in tensors]
    small = [k for k, n in enumerate(sizes) if 0 < n <= SEGMENT_MAX]
    if len(small) < 8:
        return torch.stack(torch._foreach_norm(list(tensors), 2, dtype=torch.float64))
    part = [tensors[k] for k in small]
    flat = torch._utils._flatten_dense_tensors(part).double()
    summed = _segments(tuple(sizes[k] for k in small), flat.device).sums(flat.square_()).sqrt_()
    if len(small) == len(tensors):
        return summed
    out = torch.empty(len(tensors), dtype=torch.float64)
    out[small] = summed
    rest = [k for k in range(len(tensors)) if not 0 < sizes[k] <= SEGMENT_MAX]
    out[rest] = torch.stack(torch._foreach_norm([tensors[k] for k in rest], 2,
                                                dtype=torch.float64)).to("cpu")
    return out
