"""Pure norm math: batched per-tensor L2 norms that stay right for entries near 1e±30."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from ..capture.distributed import global_norms, has_dtensor, is_dtensor
from .batched import DTYPE, foreach_norm64, grouped_norms, plain_cpu

__all__ = ["TINY", "SAFE64", "GROUPS", "per_tensor_norms", "exact_norm", "exact_norms",
           "exact_norms_tensor", "scaled_norm", "scaled_norm64", "device_norms64",
           "repair_norms", "combine", "tensor_norm", "layer_norms", "segments"]

TINY = 1e-18
"""Below this an fp32 norm may have lost digits to underflowing squares (and above ~1.8e19 the
squares overflow to inf); such norms are recomputed in float64, where both are exact."""

SAFE64 = 1e-140
"""At or above this a float64 norm is exact: the squares it lost to float64's underflow (each
off by at most 4.9e-324, the smallest subnormal) weigh under n·1e-43 of its square. Below it,
and at inf (squares of entries past ~1.3e154 overflow), `exact_norms` rescales float64 tensors
by their largest entry first (`scaled_norm64`)."""

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _dense(grad: Tensor) -> Tensor:
    """The values whose norm is the gradient's norm (sparse gradients: the coalesced values)."""
    if grad.is_sparse:
        return grad.coalesce()._values()
    return grad


def per_tensor_norms(grads: Sequence[Tensor]) -> Tensor:
    """L2 norm of each gradient in one batched pass per (device, dtype) group.

    Norms are accumulated in float32 (half-precision gradients included) with
    ``torch._foreach_norm``; zero-size and sparse tensors take the slow path. The result is a
    float32 (float64 if any gradient's real dtype is float64) vector on the device of
    ``grads[0]``, in the order of ``grads``, marked with their groups where they span several
    (`GROUPS`). It can be inf or 0 for finite, nonzero entries beyond fp32's range of squares:
    pass it through `repair_norms`.
    Sharded ``DTensor`` gradients (FSDP2) get their global norms, in float64, from
    `gradwatch.capture.distributed.global_norms` (one collective).
    """
    if not grads:
        return torch.zeros(0)
    if has_dtensor(grads):
        return global_norms(grads)
    out_device, first_dtype = grads[0].device, grads[0].dtype
    if first_dtype in (torch.float32, torch.float64):  # the common case, one dtype and device
        if out_device.type == "cpu":
            found = grouped_norms(grads)
            if found is not None:
                return found
        elif all(g.dtype == first_dtype and g.device == out_device and not g.is_sparse
                 and g.numel() for g in grads):
            return torch.stack(torch._foreach_norm(list(grads), 2))
    out_dtype = torch.float64 if any(g.dtype.to_real() == torch.float64 for g in grads) \
        else torch.float32  # float64 and complex128 gradients keep torch's float64 norms
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = defaultdict(list)
    keys = [(g.device, g.dtype) for g in grads]
    norms: list[Tensor | None] = [None] * len(grads)
    convert = False  # whether some norm is not yet out_dtype on out_device
    for i, (g, key) in enumerate(zip(grads, keys)):
        if g.is_sparse or g.numel() == 0:
            norms[i] = torch.linalg.vector_norm(_dense(g), dtype=out_dtype).reshape(())
            convert = True
        else:
            groups[key].append(i)
    for (device, dtype), idx in groups.items():
        tensors = [grads[i] for i in idx]
        if dtype in _LOW_PRECISION:
            result = torch._foreach_norm(tensors, 2, dtype=torch.float32)
        else:
            result = torch._foreach_norm(tensors, 2)
        convert = convert or device != out_device or result[0].dtype != out_dtype
        for i, n in zip(idx, result):
            norms[i] = n
    if convert:  # (the common case skips one .to() per tensor, ~3 us each on the CPU)
        norms = [n.to(device=out_device, dtype=out_dtype) for n in norms]
    return _grouped(torch.stack(norms), keys)


GROUPS = "gradwatch_groups"
"""Attribute of a `per_tensor_norms` result: its gradients' (device, dtype)s, where they span
several (torch's total reduces group by group, `gradwatch.measure.read.total_norm`)."""


def _grouped(norms: Tensor, keys: list[tuple[torch.device, torch.dtype]]) -> Tensor:
    """``norms``, marked with ``keys`` (`GROUPS`) when they name more than one group."""
    if len(set(keys)) > 1:
        setattr(norms, GROUPS, tuple(keys))
    return norms


def exact_norm(grad: Tensor) -> float:
    """The float64 L2 norm of ``grad`` as a float (`exact_norms`)."""
    return exact_norms([grad])[0]


def exact_norms(tensors: Sequence[Tensor]) -> list[float]:
    """The float64 L2 norm of each tensor (exact over fp32's whole range), as floats, in one
    batched ``torch._foreach_norm`` call per device (zero-size and sparse tensors aside).
    Float64 tensors whose norm comes out below `SAFE64` or non-finite (squares that under- or
    overflow float64 itself) are redone by `scaled_norm64`, one by one."""
    return exact_norms_tensor(tensors).tolist()


def exact_norms_tensor(tensors: Sequence[Tensor]) -> Tensor:
    """`exact_norms` as a float64 vector on the CPU."""
    if not tensors:
        return torch.zeros(0, dtype=torch.float64)
    if plain_cpu(tensors):  # the common case (a vanishing net's many tensors), checked in C
        return _rescued64(tensors, foreach_norm64(tensors))
    dense = [_dense(t) for t in tensors]
    if any(t.is_complex() for t in dense):  # |z| is the real tensor with the same norm
        dense = [t.abs() if t.is_complex() else t for t in dense]
    devices = {t.device for t in dense}
    if len(devices) == 1 and all(t.numel() for t in dense):
        return _rescued64(dense, foreach_norm64(dense).cpu())
    return _rescued64(dense, torch.tensor(
        [torch.linalg.vector_norm(t, dtype=torch.float64).item() for t in dense],
        dtype=torch.float64))


def _rescued64(dense: Sequence[Tensor], norms: Tensor) -> Tensor:
    """``norms`` with those of float64 tensors outside [`SAFE64`, inf) redone by
    `scaled_norm64` (no other dtype can over- or underflow float64's squares)."""
    if torch.float64 not in set(map(DTYPE, dense)):
        return norms
    values = norms.tolist()
    redo = [k for k, (t, v) in enumerate(zip(dense, values))
            if t.dtype == torch.float64 and not SAFE64 <= v < math.inf]
    if not redo:
        return norms
    for k in redo:
        values[k] = scaled_norm64(dense[k])
    return torch.tensor(values, dtype=torch.float64)


def scaled_norm64(t: Tensor) -> float:
    """`scaled_norm` of a dense real tensor, read as a float (0 for an empty one)."""
    return scaled_norm(t).item() if t.numel() else 0.0


def scaled_norm(t: Tensor) -> Tensor:
    """The L2 norm of a dense, non-empty real tensor as ‖t / m‖·m, with m its largest
    magnitude, on its device (no host sync): right where the squares of float64 entries over-
    or underflow (1e200, 1e-200). An all-zero tensor gives 0, one with an inf entry inf, one
    with a NaN entry NaN (m is then 1: the plain norm says so)."""
    peak = torch.linalg.vector_norm(t, ord=math.inf)
    safe = torch.where((peak > 0) & (peak < math.inf), peak, torch.ones_like(peak))
    return torch.linalg.vector_norm(t / safe) * safe


def device_norms64(tensors: Sequence[Tensor]) -> Tensor:
    """The exact float64 norms of `exact_norms` without a host sync, on the first tensor's
    device (for the sync-free path): float64 tensors' norms outside [`SAFE64`, inf) are
    replaced, through ``torch.where``, by ‖t / m‖·m with m the largest magnitude, which costs
    two more passes over each float64 tensor (none over the others)."""
    dense = [_dense(t) for t in tensors]
    dense = [t.abs() if t.is_complex() else t for t in dense]
    device = dense[0].device
    if all(t.numel() for t in dense):
        out = torch.stack([n.to(device) for n in torch._foreach_norm(dense, 2,
                                                                      dtype=torch.float64)])
    else:
        out = torch.stack([torch.linalg.vector_norm(t, dtype=torch.float64).to(device)
                           for t in dense])
    for k, t in enumerate(dense):
        if t.dtype == torch.float64 and t.numel():
            wrong = ~((out[k] >= SAFE64) & (out[k] < math.inf))
            out[k] = torch.where(wrong, scaled_norm(t).to(device), out[k])
    return out


def repair_norms(norms: Sequence[float], grads: Sequence[Tensor],
                 exact: np.ndarray | None = None) -> list[float]:
    """Recomputes in float64 each norm that may be wrong (non-finite or below `TINY`: fp32
    squares that over- or underflowed, and float64 ones, which `exact_norms` rescales), except
    those ``exact`` marks as computed in float64 already
    (`gradwatch.measure.split.split_norms`). A norm that is NaN
    or inf because an entry is stays so.

    Only pathological tensors are touched (all of them in one batched call), so a healthy step
    costs nothing here.
    """
    if norms and min(norms) >= TINY and sum(norms) < math.inf:
        return list(norms)  # the healthy case, checked in C (the sum is NaN or inf if any is)
    values = np.asarray(norms, dtype=np.float64)  # (DTensors' come exact: `global_norms`)
    suspect = ~((values >= TINY) & (values < math.inf))  # NaN too
    if exact is not None:
        suspect &= ~exact
    redo = np.flatnonzero(suspect).tolist()  # (DTensors: one check per type, not each)
    redo = [k for k in redo if not is_dtensor(grads[k])] if has_dtensor(grads) else redo
    out = list(norms)
    for k, v in zip(redo, exact_norms([grads[k] for k in redo]) if redo else ()):
        out[k] = v
    return out


def combine(norms: Iterable[float]) -> float:
    """L2 norm of a vector of norms, in float64 (NaN if any is NaN, inf if any is inf)."""
    values = norms if isinstance(norms, (list, tuple)) else list(norms)
    result = math.hypot(*values)  # scaled internally: no overflow or underflow of the squares
    # hypot lets inf win over NaN; an undefined norm must stay NaN
    return math.nan if result == math.inf and any(v != v for v in values) else result


def tensor_norm(t: Tensor) -> Tensor | float:
    """The L2 norm of one tensor, right over fp32's whole range.

    On the CPU the fp32 (float64) norm is read at once (there is no device to wait for),
    recomputed in float64 (rescaled, `scaled_norm64`) only when it may be wrong, and returned
    as a Python float. On accelerators it is a 0-d float64 tensor reduced in float64 directly,
    which costs no host synchronisation (float64 entries past ~1e154 give inf there). A complex
    tensor is measured as |t| (the real tensor with its norm), in its real dtype.
    """
    if t.is_complex():
        t = t.abs()
    if t.device.type != "cpu":
        return torch.linalg.vector_norm(t, dtype=torch.float64)
    if t.dtype == torch.float64:
        value = torch.linalg.vector_norm(t).item()
        return value if SAFE64 <= value < math.inf else scaled_norm64(t)
    if t.dtype == torch.float32:
        value = torch.linalg.vector_norm(t).item()
    else:
        value = torch.linalg.vector_norm(t, dtype=torch.float32).item()
    if TINY <= value < math.inf:
        return value
    return torch.linalg.vector_norm(t, dtype=torch.float64).item()


def layer_norms(param_layer: np.ndarray, norms: np.ndarray, n_layers: int,
                runs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Each layer's L2 norm from its tensors' norms (``param_layer``: the layer of each
    tensor, grouped by layer), scaled by the layer's largest so no square over- or underflows,
    NaN if one is NaN: (norm per layer, whether the layer had any tensor). ``runs``:
    `segments` of ``param_layer``, when known."""
    out = np.full(n_layers, math.nan)
    has = np.zeros(n_layers, dtype=bool)
    if not len(norms):
        return out, has
    starts, counts, layers = runs if runs is not None else segments(param_layer)
    has[layers] = True
    if 1e-150 < norms.min() and norms.max() < 1e150:  # no square over- or underflows; NaN: no
        out[layers] = np.sqrt(np.add.reduceat(norms * norms, starts))
        return out, has
    peak = np.maximum.reduceat(norms, starts)  # NaN wins, then inf
    usable = (peak > 0) & (peak < math.inf)
    safe = np.where(usable, peak, 1.0)
    scaled = np.where(np.repeat(usable, counts), norms / np.repeat(safe, counts), 0.0)
    combined = np.sqrt(np.add.reduceat(scaled * scaled, starts)) * safe
    out[layers] = np.where(usable, combined, peak)  # all 0: 0; inf: inf; NaN: NaN
    return out, has


def segments(param_layer: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start, length, layer) of each run of equal entries of ``param_layer``."""
    change = np.empty(len(param_layer), dtype=bool)
    change[:1] = True
    np.not_equal(param_layer[1:], param_layer[:-1], out=change[1:])
    starts = np.flatnonzero(change)
    counts = np.diff(np.append(starts, len(param_layer)))
    return starts, counts, param_layer[starts]
