"""Measuring one step: every device value of the step goes to the host in one copy, by name."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from ..capture.distributed import is_dtensor
from ..capture.hooks import Collected, Collector
from .norms import TINY, combine, repair_norms
from .statistics import Statistic

__all__ = ["HostBatch", "InFlight", "UpdateTracker", "StepNumbers", "start_read", "finish_read",
           "read_step", "read_norms", "device_total",
           "locate_nonfinite", "layer_values"]


class HostBatch:
    """Gathers named device values and copies them to the host in ONE transfer.

    ``add(name, values)`` takes a tensor or a list of floats and 0-d tensors; `fetch`
    returns ``{name: [float, ...]}``. Python floats never travel.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._parts: list[Tensor] = []
        self._slots: dict[str, tuple[Any, ...]] = {}
        self._size = 0

    def _part(self, t: Tensor) -> None:
        if not t.is_floating_point():
            t = t.double()  # counts: exact, and never promoted to float32 by the others
        self._parts.append(t if t.device == self.device else t.to(self.device))

    def add(self, name: str, values: Tensor | Sequence[Any]) -> None:
        if isinstance(values, Tensor):
            n = values.numel()
            self._part(values.reshape(-1))
            self._slots[name] = (self._size, n)
            self._size += n
            return
        items = list(values)
        where = [k for k, v in enumerate(items) if isinstance(v, Tensor)]
        if where:
            self._part(torch.stack([items[k].reshape(()) for k in where]))
        self._slots[name] = (self._size, items, where)
        self._size += len(where)

    def fetch(self) -> dict[str, list[float]]:
        """Copies and waits (one blocking device-to-host copy)."""
        return self.start(blocking=True).result()

    def start(self, *, blocking: bool = False) -> InFlight:
        """Starts the copy. On CUDA without ``blocking`` it goes ``non_blocking`` into pinned
        memory and returns at once; `InFlight.result` waits for it (the next step, normally
        long done)."""
        parts = self._parts
        dev = None if not parts else parts[0] if len(parts) == 1 else torch.cat(parts)
        event = None
        if dev is None:
            host = None
        elif dev.device.type == "cuda" and not blocking:
            host = torch.empty(dev.shape, dtype=dev.dtype, pin_memory=True)
            host.copy_(dev, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        else:
            host = dev.cpu() if blocking else dev.to("cpu", copy=True)
        return InFlight(self._slots, host, event)


class InFlight:
    """A started device-to-host copy of a `HostBatch`; `result` gives the named values."""

    def __init__(self, slots: dict[str, tuple[Any, ...]], host: Tensor | None,
                 event: Any) -> None:
        self._slots, self._host, self._event = slots, host, event

    def result(self) -> dict[str, list[float]]:
        if self._event is not None:
            self._event.synchronize()
        host = self._host.tolist() if self._host is not None else []
        out = {}
        for name, slot in self._slots.items():
            if len(slot) == 2:  # a tensor's values
                start, n = slot
                out[name] = host[start:start + n]
                continue
            start, items, where = slot
            values = list(items)
            for k, pos in enumerate(where):
                values[pos] = host[start + k]
            out[name] = values
        return out


class UpdateTracker:
    """‖Δθ‖/‖θ‖ per layer across ``optimizer.step()`` from fixed samples (see
    `gradwatch.measure.statistics.UpdateRatio`): one batched copy into a flat buffer before the step,
    one after, and one row-wise sum, whatever the number of layers.

    A tensor of more than ``sample`` entries is read in 16 evenly spaced runs of
    ``sample // 16`` consecutive entries (a few cache lines each, not one per entry), each
    read entry standing for numel / (entries read).
    """

    RUNS = 16

    def __init__(self, params: Sequence[Tensor], layer_of: Sequence[int], n_layers: int,
                 sample: int) -> None:
        self.params, self.layer_of, self.n_layers, self.sample = params, layer_of, n_layers, sample
        self._views: list[Tensor] | None = None
        self._ptrs: list[int] = []
        self._measured = False

    def _usable(self, p: Tensor) -> bool:
        return not is_dtensor(p) and p.is_contiguous() and p.numel() > 0

    def _sample_view(self, p: Tensor) -> Tensor:
        flat = p.detach().view(-1)
        if flat.numel() <= self.sample:
            return flat
        spacing = flat.numel() // self.RUNS
        return flat[:spacing * self.RUNS].view(self.RUNS, spacing)[:, :self.sample // self.RUNS]

    def _build(self) -> None:
        self._sampled = [p for p in self.params if self._usable(p)]
        self._layers = [layer for p, layer in zip(self.params, self.layer_of) if self._usable(p)]
        self._ptrs = [p.data_ptr() for p in self._sampled]
        views = [self._sample_view(p) for p in self._sampled]
        self._views = views
        if not views or len({v.device for v in views}) > 1:
            self._views = []
            return
        device, sizes = views[0].device, [v.numel() for v in views]
        # each tensor's sample sits in a row of `width` entries, zero-padded: the per-tensor
        # sums are then one row-wise sum (segment_reduce is ~65 us for 15 K entries on a CPU)
        width = max(sizes)
        self._flat = [torch.zeros(len(views), width, dtype=torch.float32, device=device)
                      for _ in range(2)]  # before, after
        self._bufs = [[row[:n].view(v.shape) for row, n, v in zip(flat, sizes, views)]
                      for flat in self._flat]
        self._weights = _on(device, [p.numel() / v.numel() for p, v in zip(self._sampled, views)],
                            torch.float32)

    def before(self) -> None:
        """Snapshot the sampled entries (call right before ``optimizer.step()``)."""
        if self._views is None or [p.data_ptr() for p in self._sampled] != self._ptrs:
            self._build()  # first use, or a parameter's storage was replaced
        self._measured = bool(self._views)
        if self._measured:
            torch._foreach_copy_(self._bufs[0], self._views)

    def after(self) -> dict[int, float | None] | None:
        """The estimated ‖Δθ‖/‖θ‖ of each layer, θ before the step (call right after
        ``optimizer.step()``)."""
        sums = self.after_device()
        return None if sums is None else self.ratios(sums.tolist())

    def after_device(self) -> Tensor | None:
        """The per-tensor (‖Δθ‖², ‖θ‖²) sums of `after`, left on the device (for a deferred
        record)."""
        if not self._measured:
            return None
        self._measured = False
        before, now = self._flat
        torch._foreach_copy_(self._bufs[1], self._views)
        sums = torch.stack([now.sub_(before), before]).square_().sum(-1)  # padding adds 0
        return sums * self._weights

    def ratios(self, sums: Sequence[Sequence[float]]) -> dict[int, float | None]:
        """Per-layer ‖Δθ‖/‖θ‖ from per-tensor (‖Δθ‖², ‖θ‖²) sums."""
        d2, w2 = sums
        per_layer: dict[int, list[float]] = {}
        for layer, a, b in zip(self._layers, d2, w2):
            acc = per_layer.setdefault(layer, [0.0, 0.0])
            acc[0] += a
            acc[1] += b
        return {i: math.sqrt(a / b) if b > 0 else None for i, (a, b) in per_layer.items()}


def _on(device: torch.device, values: list[Any], dtype: torch.dtype) -> Tensor:
    """A tensor of ``values`` on ``device`` without a blocking host-to-device copy (on CUDA
    from pinned memory, ``non_blocking``)."""
    t = torch.tensor(values, dtype=dtype)
    if device.type == "cpu":
        return t
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def device_total(norms_dev: Tensor, grads: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """The total norm on the device, with the float64 repair `repair_norms` does on the host
    (so clipping gives the same result whether or not a step is recorded), and the exact
    float64 per-tensor norms; no host sync (one extra pass over the gradients)."""
    total32 = torch.linalg.vector_norm(norms_dev)
    dense = [g.coalesce()._values() if g.is_sparse else g for g in grads]
    if all(g.numel() for g in dense):
        exact = torch.stack(torch._foreach_norm(dense, 2, dtype=torch.float64))
    else:
        exact = torch.stack([torch.linalg.vector_norm(g, dtype=torch.float64) for g in dense])
    exact = exact.to(norms_dev.device)
    good = torch.isfinite(norms_dev).all() & (norms_dev.min() >= TINY)
    return torch.where(good, total32.double(), torch.linalg.vector_norm(exact)), exact


def layer_values(data: Collected, host: dict[str, list[float]], inv_scale: float
                 ) -> tuple[dict[int, float], dict[int, dict[str, float | None]], dict[int, int]]:
    """Output-gradient norms (accumulating backward passes only), unit and time statistics."""
    events = [(e, v) for e, v in _event_values(data, host)
              if not data.tasks or e[2] in data.tasks]
    act: dict[int, list[float]] = {}
    backward: dict[int, int] = {}
    for (layer, is_output, *_), v in events:
        if is_output:
            act.setdefault(layer, []).append(v)
            backward.setdefault(layer, len(backward))
    values: dict[int, dict[str, float | None]] = {}
    for k, (layer, stat, _, n) in enumerate(data.units):
        count = host["units"][k]
        share = 1.0 - count / n if stat == "dead_frac" else count / n  # alive / saturated
        row = values.setdefault(layer, {})
        row[stat] = max(share, row.get(stat, 0.0))
    for layer, vals in zip(data.time, _chunks(host.get("time", []), data.time)):
        values.setdefault(layer, {})["time_ratio"] = min(vals)
    return ({i: combine(v) * inv_scale for i, v in act.items()}, values, backward)


def _event_values(data: Collected, host: dict[str, list[float]]
                  ) -> list[tuple[tuple[int, bool, int, int], float]]:
    """Each backward event with its gradient's norm (output and input events are reduced
    apart; see `gradwatch.capture.hooks.Collector.take`)."""
    outs, ins = iter(host.get("act_out", [])), iter(host.get("act_in", []))
    return [(e, next(outs if e[1] else ins, math.nan)) for e in data.events]


def _chunks(flat: list[float], groups: dict[Any, list[Any]]) -> list[list[float]]:
    out, k = [], 0
    for vals in groups.values():
        out.append(flat[k:k + len(vals)])
        k += len(vals)
    return out


def locate_nonfinite(collector: Collector, data: Collected, host: dict[str, list[float]],
                     layer_names: Sequence[str], norms: dict[int, float],
                     order: Sequence[int]) -> tuple[str | None, str | None]:
    """(origin, birth) of a non-finite step: the first module in forward order whose output
    went non-finite; else in backward order the first output gradient that went non-finite
    (the gradient entering the model: the loss) or a module whose input gradient went
    non-finite while its output gradient was finite; else the parameter gradients."""
    for module, total in zip(data.forward_bad, host.get("forward", [])):
        if not math.isfinite(total):
            return "forward", collector.names[module]
    events = [(e, v) for e, v in _event_values(data, host)
              if not data.tasks or e[2] in data.tasks]
    for k, ((layer, is_output, _, gid), v) in enumerate(events):
        if math.isfinite(v):
            continue
        if is_output and k == 0:
            return "loss", None
        # the same bad gradient reaches a module's input: it went bad inside that module's
        # backward; reaching only outputs, it went bad between modules (at this output)
        same = list(itertools.takewhile(lambda e: e[3] == gid, (e for e, _ in events[k:])))
        inside = next((e[0] for e in same if not e[1]), None)
        return "backward", layer_names[inside if inside is not None else layer]
    for i in sorted(order, key=lambda i: -order.index(i)):
        if i in norms and not math.isfinite(norms[i]):
            return "backward", layer_names[i]
    return None, None


def use_statistics(statistics: Sequence[Statistic], grads: Sequence[Tensor],
                   params: Sequence[Tensor], batch: HostBatch) -> None:
    """Adds each user statistic's per-tensor values to the step's host copy."""
    for s in statistics:
        tensors = grads if s.reads == "grad" else [p.detach() for p in params]
        batch.add(f"stat:{s.name}", s.per_tensor(tensors))


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
               host_norms: list[float] | None = None) -> HostBatch:
    """Gathers everything a step's record needs into one `HostBatch` (nothing copied yet;
    ``host_norms``: the norms and their total already read, `read_norms`)."""
    batch = HostBatch(norms_dev.device)
    if host_norms is not None:
        batch.add("norms", host_norms[:-1])
        batch.add("total32", host_norms[-1:])
    else:
        batch.add("norms", norms_dev)
        batch.add("total32", torch.linalg.vector_norm(norms_dev).reshape(1))
    batch.add("scale", [scale.double()] if scale is not None else [1.0])
    if data is not None:
        batch.add("act_out", _joined(data.out_norms))
        batch.add("act_in", _joined(data.in_norms))
        batch.add("forward", _joined(data.forward_norms))
        batch.add("units", [t for _, _, t, _ in data.units])
        batch.add("time", [v for vals in data.time.values() for v in vals])
    if recording:
        use_statistics(statistics, grads, params, batch)
    for name, values in (extra or {}).items():
        batch.add(name, values)
    return batch


def _joined(chunks: list[Tensor]) -> Tensor | list[float]:
    return torch.cat(chunks) if chunks else []


def finish_read(host: dict[str, list[float]], scaled: bool,
                grads: Sequence[Tensor] | None = None) -> StepNumbers:
    """Forms the norms from the copied values. Healthy steps log (and clip with) torch's own
    fp32 total, so clipping is bit-identical to ``clip_grad_norm_``; steps whose fp32 norms
    over- or underflow get exact float64 norms: recomputed from ``grads``, or copied along
    (``"exact"``) when the record is formed a step later."""
    raw = host["norms"]
    act_inv = 1.0 / host["scale"][0]
    inv = act_inv if scaled else 1.0
    if "exact" in host:
        fixed = [n if TINY <= n < math.inf else e for n, e in zip(raw, host["exact"])]
    else:
        fixed = repair_norms(raw, grads)
    norms = fixed if inv == 1.0 else [n * inv for n in fixed]
    total32 = host["total32"][0]
    exact = fixed != raw or not TINY <= total32 < math.inf
    return StepNumbers(host, norms, combine(norms) if exact else total32 * inv, act_inv)


def read_step(grads: Sequence[Tensor], params: Sequence[Tensor], norms_dev: Tensor, *,
              scale: Tensor | None, scaled: bool, data: Collected | None,
              statistics: Sequence[Statistic], recording: bool, loss: Any = None,
              host_norms: list[float] | None = None) -> StepNumbers:
    """`start_read` and `finish_read` with one blocking copy in between (``loss``: the
    user's loss of the step, a 0-d tensor or a float, copied along as ``"loss"``;
    ``host_norms``: the norms and their fp32 total, already read, as `read_norms` gives)."""
    if data is None and not (recording and statistics) and scale is None and (
            not isinstance(loss, Tensor) or loss.device.type == "cpu"):  # the norms only
        host_norms = read_norms(norms_dev) if host_norms is None else host_norms
        host = {"norms": host_norms[:-1], "total32": host_norms[-1:], "scale": [1.0]}
        if loss is not None:
            host["loss"] = [float(loss)]
        return finish_read(host, scaled, grads)
    batch = start_read(grads, params, norms_dev, scale=scale, data=data, statistics=statistics,
                       recording=recording, extra=None if loss is None else {"loss": [loss]},
                       host_norms=host_norms)
    return finish_read(batch.fetch(), scaled, grads)


def read_norms(norms_dev: Tensor) -> list[float]:
    """The per-tensor norms and their fp32 total (torch's, as ``clip_grad_norm_`` computes
    it), read in one copy: ``[n_0, ..., n_k, total]``."""
    return torch.cat((norms_dev, torch.linalg.vector_norm(norms_dev).reshape(1))).tolist()
