"""Measuring one step: every device value of the step goes to the host in one copy, by name."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils._foreach_utils import _group_tensors_by_device_and_dtype

from ..capture.collected import Collected, UnitEntry
from .batched import remember
from .host import HostBatch
from .norms import layer_norms
from .norms import GROUPS, TINY, combine, device_norms64, repair_norms, scaled_norm
from .statistics import Statistic, checked_per_tensor

__all__ = ["StepNumbers", "start_read", "finish_read",
           "read_step", "read_norms", "device_total", "total_norm", "torch_order",
           "layer_values", "unit_counts"]


_PICKS: dict[Any, Tensor] = {}


def _at(norms: Tensor, sel: np.ndarray | None) -> Tensor:
    """The entries ``sel`` picks (all when None), on the norms' device; the index tensor is
    made once per selection and device (a host-to-device copy waits for the device)."""
    if sel is None:
        return norms
    index = remember(_PICKS, (sel.tobytes(), norms.device), lambda: torch.from_numpy(sel) if
                     norms.device.type == "cpu" else torch.from_numpy(sel).pin_memory().to(
                         norms.device, non_blocking=True))  # (pinned: the copy does not wait)
    return norms[index]


_ORDERS: dict[Any, tuple[np.ndarray | None]] = {}


def torch_order(norms: Tensor, sel: np.ndarray | None) -> np.ndarray | None:
    """The positions, among the norms ``sel`` picks (None: all), in the order
    ``torch.nn.utils.get_total_norm`` stacks them: group after group, each (device, dtype) in
    its tensors' order. None when that is their own order: always where `per_tensor_norms`
    found a single group (it marks the others, `GROUPS`), so that case costs one attribute
    read. Made once per layout."""
    keys = getattr(norms, GROUPS, None)
    if keys is None:
        return None
    picked = keys if sel is None else tuple(keys[k] for k in sel.tolist())
    return remember(_ORDERS, picked, lambda: (_group_order(picked),))[0]


def _group_order(keys: Sequence[tuple[torch.device, torch.dtype]]) -> np.ndarray | None:
    """Where torch's total puts the norm of each tensor of these (device, dtype)s: torch's own
    grouping (`_group_tensors_by_device_and_dtype`, as ``get_total_norm`` calls it) run on
    empty stand-ins, read back group by group; None when nothing moves."""
    stand_ins = [torch.empty(0, dtype=dtype, device=device) for device, dtype in keys]
    position = {id(t): k for k, t in enumerate(stand_ins)}
    groups = _group_tensors_by_device_and_dtype([stand_ins])
    order = [position[id(t)] for [tensors], _ in groups.values() for t in tensors]
    return None if order == sorted(order) else np.asarray(order, dtype=np.int64)


def total_norm(norms: Tensor, sel: np.ndarray | None = None) -> Tensor:
    """The L2 norm of the norms ``sel`` picks (None: all), a 0-d tensor on their device, as
    ``get_total_norm`` forms it from the same per-tensor norms: ``vector_norm`` over them
    stacked in torch's order (`torch_order`). Gradients that span several (device, dtype)s
    (float32 and float64 layers, complex64 with a float32 head) thus get torch's total bit for
    bit; in parameter order its last bit differs on a few % of steps."""
    picked = _at(norms, sel)
    order = torch_order(norms, sel)
    return torch.linalg.vector_norm(picked if order is None else _at(picked, order))


def device_total(norms_dev: Tensor, grads: Sequence[Tensor],
                 sel: np.ndarray | None = None) -> tuple[Tensor, Tensor]:
    """The total norm on the device (over the gradients ``sel`` picks: those the optimizer
    steps; None: all), with the float64 repair `repair_norms` does on the host (so clipping
    gives the same result whether or not a step is recorded), and the exact float64 norms of
    every gradient; no host sync (one extra pass over the gradients)."""
    picked = _at(norms_dev, sel)
    total32 = total_norm(norms_dev, sel)
    exact = device_norms64(grads).to(norms_dev.device)  # (float64 ones rescaled if need be)
    if not picked.numel():
        return total32.double(), exact
    good = torch.isfinite(picked).all() & (picked.min() >= TINY)
    # (scaled: the squares of norms past ~1e154, float64 gradients of 1e200, overflow)
    return torch.where(good, total32.double(), scaled_norm(_at(exact, sel))), exact


def layer_values(data: Collected, host: dict[str, list[float]], inv_scale: float,
                 n_layers: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Output-gradient norms (accumulating backward passes only: over every call of a layer in
    them), unit and time statistics, as arrays over the watched layers (NaN: not measured):
    (act, act_on, statistic -> values)."""
    act, act_on = np.full(n_layers, math.nan), np.zeros(n_layers, dtype=bool)
    ev = data.out
    if ev.layer:
        layer = np.asarray(ev.layer, dtype=np.int64)
        norms = np.asarray(host.get("act_out", []), dtype=np.float64)
        tasks = ev.task
        if data.tasks and (len(data.tasks) > 1 or not data.tasks.issuperset(tasks)):
            layer, norms = _accumulated(data, layer, tasks, norms)  # several passes ran
        if len(layer) and np.bincount(layer).max() == 1:  # each layer's output once
            act[layer] = np.abs(norms) * inv_scale
            act_on[layer] = True
        elif len(layer):  # a module called several times: the norm over its calls
            order = np.argsort(layer, kind="stable")
            norm, has = layer_norms(layer[order], norms[order], n_layers)
            act[has] = norm[has] * inv_scale
            act_on = has
    values: dict[str, np.ndarray] = {}
    for (layer_i, stat, _), (count, n) in unit_counts(data.units, host.get("units", ())).items():
        share = 1.0 - count / n if stat == "dead_frac" else count / n  # alive / saturated
        col = values.setdefault(stat, np.full(n_layers, math.nan))
        col[layer_i] = share if math.isnan(col[layer_i]) else max(share, col[layer_i])
    for layer_i, vals in zip(data.time, _chunks(host.get("time", []), data.time)):
        vals = [v for v in vals if v == v]  # (NaN: no gradient reached any time step)
        if vals:
            values.setdefault("time_ratio", np.full(n_layers, math.nan))[layer_i] = min(vals)
    return act, act_on, values


def _accumulated(data: Collected, layer: np.ndarray, tasks: list[int], norms: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The output-gradient events of the backward passes that accumulated into the event's
    own layer (a discriminator frozen during the generator's pass, which goes through it,
    got nothing from that pass), or, for a layer whose accumulation is not hooked, into any
    watched parameter (not ``autograd.grad`` passes)."""
    added, tracked = data.added, data.tracked
    if added and tracked is not None:
        keep = np.fromiter(((l, t) in added if tracked[l] else t in data.tasks
                            for l, t in zip(layer.tolist(), tasks)), dtype=bool,
                           count=len(tasks))
    else:
        keep = np.isin(np.asarray(tasks, dtype=np.int64), list(data.tasks))
    return layer[keep], norms[keep]


def unit_counts(entries: Sequence[UnitEntry], counts: Sequence[float]
                ) -> dict[tuple[int, str, tuple[int, ...]], tuple[float, int]]:
    """(count, of how many) per (layer, statistic, call site). A site called several times in
    a step (a module shared across depth or time) is counted over all its calls: a rectifier's
    units alive on any of them (its window counts them in call order, so its last call's count
    is that union), a saturating module's outputs at a bound over all it gave. A layer then
    reads its worst site (`layer_values`)."""
    out: dict[tuple[int, str, tuple[int, ...]], tuple[float, int]] = {}
    for entry, count in zip(entries, counts):
        key = (entry.layer, entry.statistic, entry.site)
        old = out.get(key)
        if old is not None and entry.statistic == "sat_frac":
            count, n = old[0] + count, old[1] + entry.n
        else:
            n = entry.n
        out[key] = (count, n)
    return out


def _chunks(flat: list[float], groups: dict[Any, list[Any]]) -> list[list[float]]:
    out, k = [], 0
    for vals in groups.values():
        out.append(flat[k:k + len(vals)])
        k += len(vals)
    return out


def use_statistics(statistics: Sequence[Statistic], grads: Sequence[Tensor],
                   params: Sequence[Tensor], batch: HostBatch) -> None:
    """Adds each user statistic's per-tensor values to the step's host copy."""
    for s in statistics:
        tensors = grads if s.reads == "grad" else [p.detach() for p in params]
        batch.add(f"stat:{s.name}", checked_per_tensor(s, s.per_tensor(tensors), len(tensors)))


@dataclass
class StepNumbers:
    """The host numbers of a measured step: the copied slots, per-tensor norms, the total."""

    host: dict[str, list[float]]
    norms: list[float]  # per watched gradient, repaired and unscaled
    total: float  # the number clipping uses and the record logs
    act_inv: float  # 1 / the loss scale output gradients carry (1.0 without AMP)


def start_read(grads: Sequence[Tensor], params: Sequence[Tensor], norms_dev: Tensor, *,
               scale: Tensor | None, data: Collected | None, statistics: Sequence[Statistic],
               recording: bool, extra: dict[str, Any] | None = None,
               host_norms: list[float] | None = None,
               total_of: np.ndarray | None = None) -> HostBatch:
    """Gathers everything a step's record needs into one `HostBatch` (nothing copied yet;
    ``host_norms``: the norms and their total already read, `read_norms`; ``total_of``: the
    gradients the total is over, those the optimizer steps, None: all)."""
    batch = HostBatch(norms_dev.device)
    if host_norms is not None:
        batch.add_floats("norms", host_norms[:-1])
        batch.add_floats("total32", host_norms[-1:])
    else:
        batch.add("norms", norms_dev)
        batch.add("total32", total_norm(norms_dev, total_of).reshape(1))
    batch.add("scale", [scale.double()] if scale is not None else [1.0])
    if data is not None:
        batch.add("act_out", _joined(data.out_norms))
        batch.add("act_in", _joined(data.in_norms))
        batch.add("forward", _joined(data.forward_norms))
        batch.add("units", _joined(data.unit_counts))
        batch.add("time", [v for vals in data.time.values() for v in vals])
        if data.stale is not None:
            batch.add("stale", [data.stale])
    if recording:
        use_statistics(statistics, grads, params, batch)
    for name, values in (extra or {}).items():
        batch.add(name, values)
    return batch


def _joined(chunks: list[Tensor]) -> Tensor | list[float]:
    return torch.cat(chunks) if chunks else []


def finish_read(host: dict[str, list[float]], scaled: bool,
                grads: Sequence[Tensor] | None = None,
                exact: np.ndarray | None = None,
                total_of: np.ndarray | None = None) -> StepNumbers:
    """Forms the norms from the copied values. Healthy steps log (and clip with) torch's own
    total (`total_norm`), so clipping is bit-identical to ``clip_grad_norm_`` (float16/bfloat16
    gradients: their float32 total, which torch rounds to their dtype); steps whose fp32 norms
    over- or underflow get exact float64 norms: recomputed from ``grads``, or copied along
    (``"exact"``) when the record is formed a step later. ``exact``: the tensors whose norms
    were reduced in float64 already (`gradwatch.measure.split.split_norms`). The total is
    over the norms ``total_of`` picks (those the optimizer steps; None: all)."""
    raw = host["norms"]
    act_inv = 1.0 / host["scale"][0]
    inv = act_inv if scaled else 1.0
    if "exact" in host:
        fixed = [n if TINY <= n < math.inf else e for n, e in zip(raw, host["exact"])]
    else:
        fixed = repair_norms(raw, grads, exact)
    norms = fixed if inv == 1.0 else [n * inv for n in fixed]
    if total_of is not None and not scaled and act_inv != 1.0:  # a GradScaler unscaled only
        stepped = set(total_of.tolist())  # what the optimizer steps: the others' norms still
        norms = [n if k in stepped else n * act_inv for k, n in enumerate(norms)]  # carry it
    total32 = host["total32"][0]
    if exact is not None:  # reduced in float64 (`split_norms`): zeros are torch's too
        exact = exact & (np.asarray(raw, dtype=np.float64) != 0)
    if total_of is None:
        exact = (exact is not None and bool(exact.any())) or fixed != raw \
            or not TINY <= total32 < math.inf
        return StepNumbers(host, norms, combine(norms) if exact else total32 * inv, act_inv)
    picked = total_of.tolist()  # exact when a picked norm was repaired (or reduced so)
    exact = (exact is not None and bool(exact[total_of].any())) or any(
        fixed[k] != raw[k] for k in picked) or not TINY <= total32 < math.inf
    return StepNumbers(host, norms, combine([norms[k] for k in picked]) if exact
                       else total32 * inv, act_inv)


def read_step(grads: Sequence[Tensor], params: Sequence[Tensor], norms_dev: Tensor, *,
              scale: Tensor | None, scaled: bool, data: Collected | None,
              statistics: Sequence[Statistic], recording: bool, loss: Any = None,
              host_norms: list[float] | None = None,
              exact: np.ndarray | None = None,
              total_of: np.ndarray | None = None) -> StepNumbers:
    """`start_read` and `finish_read` with one blocking copy in between (``loss``: the
    user's loss of the step, a 0-d tensor or a float, copied along as ``"loss"``;
    ``host_norms``: the norms and their fp32 total, already read, as `read_norms` gives)."""
    if data is None and not (recording and statistics) and scale is None and (
            not isinstance(loss, Tensor) or loss.device.type == "cpu"):  # the norms only
        host_norms = read_norms(norms_dev, total_of) if host_norms is None else host_norms
        host = {"norms": host_norms[:-1], "total32": host_norms[-1:], "scale": [1.0]}
        if loss is not None:
            host["loss"] = [float(loss)]
        return finish_read(host, scaled, grads, exact, total_of)
    batch = start_read(grads, params, norms_dev, scale=scale, data=data, statistics=statistics,
                       recording=recording, extra=None if loss is None else {"loss": [loss]},
                       host_norms=host_norms, total_of=total_of)
    return finish_read(batch.fetch(), scaled, grads, exact, total_of)


def read_norms(norms_dev: Tensor, total_of: np.ndarray | None = None) -> list[float]:
    """The per-tensor norms and their fp32 total (torch's, as ``clip_grad_norm_`` computes
    it, `total_norm`; over the norms ``total_of`` picks, None: all), read in one copy:
    ``[n_0, ..., n_k, total]``."""
    total = total_norm(norms_dev, total_of).reshape(1)
    return torch.cat((norms_dev, total)).tolist()
