"""Global norms of sharded (FSDP2 / DTensor) gradients with one collective per recorded step."""

from __future__ import annotations

import sys
from collections import defaultdict
from typing import Any, Sequence

import torch
from torch import Tensor

__all__ = ["is_dtensor", "has_dtensor", "global_norms"]


def is_dtensor(t: Any) -> bool:
    """Whether ``t`` is a ``torch.distributed.tensor.DTensor`` (without importing that module)."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(t, module.DTensor)


def has_dtensor(tensors: Sequence[Any]) -> bool:
    """Whether any of ``tensors`` is a DTensor (free when torch.distributed.tensor is unused)."""
    module = sys.modules.get("torch.distributed.tensor")
    # the distinct types first (one C-level pass): one issubclass each, not one per tensor
    return module is not None and any(issubclass(t, module.DTensor) for t in set(map(type,
                                                                                   tensors)))


def _local_sq_norms(tensors: Sequence[Tensor]) -> Tensor:
    """Float64 squared L2 norm of each (plain, local) tensor, batched per (device, dtype)."""
    out = torch.zeros(len(tensors), dtype=torch.float64, device=tensors[0].device)
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = defaultdict(list)
    for i, t in enumerate(tensors):
        if t.numel() > 0:  # zero-size shards (uneven sharding) contribute 0; no foreach kernel
            groups[(t.device, t.dtype)].append(i)
    for idx in groups.values():
        # Accumulate in float64: a float32 sum of squares overflows for entries near 1e19 and up.
        norms = torch._foreach_norm([tensors[i] for i in idx], 2, dtype=torch.float64)
        out[torch.tensor(idx, device=out.device)] = torch.stack(norms).to(out.device).square()
    return out


def _dense(t: Tensor) -> Tensor:
    return t.coalesce()._values() if t.is_sparse else t


def _reduce_key(g: Any) -> tuple[Any, tuple[int, ...]] | None:
    """(mesh, sharded mesh dims) of a DTensor; None when no dimension is sharded."""
    placements = g.placements
    if any(p.is_partial() for p in placements):
        raise ValueError(f"Expected sharded or replicated DTensor gradients, but got placements "
                         f"{placements}; gradwatch cannot take norms of unreduced (Partial) "
                         f"gradients. Measure after FSDP's reduce-scatter (at optimizer.step()).")
    dims = tuple(i for i, p in enumerate(placements) if p.is_shard())
    return (g.device_mesh, dims) if dims else None


def global_norms(grads: Sequence[Tensor]) -> Tensor:
    """The L2 norm of each gradient as a whole, DTensor shards included, in ``grads``' order.

    Under FSDP2 each gradient is a ``DTensor`` holding this rank's shard; the whole norm is the
    square root of the sum over distinct shards of the local sums of squares. p-th powers are
    reduced, never norms, and mesh dimensions on which a tensor is replicated are never summed
    (that would count it twice). Under DDP gradients are plain, already averaged tensors.

    Plain tensors get float64 norms here too (this module imports nothing of gradwatch, so the
    norm math in `gradwatch.measure.norms` can call it without an import cycle). For DTensors the local squared
    norms (float64) of every tensor sharing a mesh are summed with ONE ``all_reduce`` per sharded
    mesh dimension (one in all for FSDP2's 1-D mesh); replicated dimensions are not reduced.
    Every rank must call this with the same tensors in the same order, like any collective.

    Returns:
        A float64 vector on the device of the first gradient's local tensor. Its values are exact
        over float32's whole range, so `gradwatch.measure.norms.repair_norms` leaves DTensor entries alone.

    Raises:
        ValueError: A gradient has a ``Partial`` placement (not yet reduced).
    """
    dt_idx = [i for i, g in enumerate(grads) if is_dtensor(g)]
    plain_idx = [i for i, g in enumerate(grads) if not is_dtensor(g)]
    locals_ = [g.to_local() if is_dtensor(g) else g for g in grads]
    device = locals_[0].device
    sq = torch.zeros(len(grads), dtype=torch.float64, device=device)
    if plain_idx:
        plain = _local_sq_norms([_dense(grads[i]) for i in plain_idx])
        sq[torch.tensor(plain_idx, device=device)] = plain.to(device)
    by_key: dict[Any, list[int]] = defaultdict(list)
    for i in dt_idx:
        by_key[_reduce_key(grads[i])].append(i)
    for key, idx in by_key.items():
        local_sq = _local_sq_norms([locals_[i] for i in idx])
        if key is not None:
            mesh, dims = key
            for dim in dims:
                _all_reduce_sum(local_sq, mesh.get_group(dim))
        sq[torch.tensor(idx, device=device)] = local_sq.to(device)
    return sq.sqrt()


def _all_reduce_sum(t: Tensor, group: Any) -> None:
    import torch.distributed as dist

    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
