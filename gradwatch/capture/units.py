"""Unit statistics of activation outputs: units that fired on some input of a window of
measured steps (rectifiers) or outputs at a bound (saturating activations), gathered during a
forward and counted for all call sites together in a few batched device operations."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch._utils import _flatten_dense_tensors

from .collected import BATCH_TENSORS, UnitEntry
from .hooks import _bounds
from ..measure.batched import Segments

__all__ = ["UnitBatch", "UnitHooks", "UnitWindow", "UNIT_EVERY", "UNIT_WINDOW", "SAMPLE"]

UNIT_EVERY = 4
"""Dead and saturated units are measured on every 4th recorded step (step // every % 4 == 0;
one reduction per rectifier call and a few batched operations per forward; the activation
modules are hooked on those steps only), update/weight ratios (two copies of sampled weights)
on those and on the first 4 recorded steps; the rules that read them judge over the steps
they were measured on."""

UNIT_WINDOW = 4
"""A rectifier's unit is dead when it fired on none of the inputs of the last 4 measured steps
(the forwards of every 4th recorded step, `UNIT_EVERY`; of those measured so far at the start):
one small batch where a unit happens to be silent (a classifier layer at batch 8) is not a dead
unit. The dead-units rule holds on `Thresholds.persistence` (4) measured steps in a row, so its
first verdict already reads a full window."""


SAMPLE = 4096
"""Saturation is counted on an evenly strided sample of at most this many outputs per call."""

_CACHE = 64  # segment-length tensors kept per distinct layout (dynamic shapes: bounded)


class UnitWindow:
    """Per activation call site (layer, activation module, output shape): the index of the
    measured step at which each unit last fired, a device tensor updated in place (no host
    synchronisation), so that a unit counts as alive when it fired on any input of the last
    ``span`` measured steps (of the steps measured so far, at the start of a run). While the
    sites of a step stay the same, their tensors are views into one flat buffer and a step
    updates and counts them all at once (`alive_many`)."""

    def __init__(self, span: int = UNIT_WINDOW) -> None:
        self.span = span
        self.index = 0  # the measured step now (set before each measured forward)
        self._last: dict[tuple, Tensor] = {}
        self._layout: tuple | None = None  # the site keys the flat buffer holds, in order
        self._flat: Tensor | None = None
        self._segments: Segments | None = None

    def _site(self, key: tuple, top: Tensor) -> Tensor:
        last = self._last.get(key)
        if last is None:  # first seen: no unit fired yet
            last = torch.full(top.shape, self.index - self.span, dtype=torch.int64,
                              device=top.device)
        elif last.device != top.device:  # the model moved (or a resumed window)
            last = last.to(top.device)
        self._last[key] = last
        return last

    def alive(self, site: tuple[int, int], top: Tensor) -> Tensor:
        """The count of units alive within the window (a 0-d device tensor), given ``top``, the
        per-unit largest output of this step's batch at call ``site``."""
        k = self.index
        last = self._site((*site, *top.shape), top)
        last.masked_fill_(top > 0, k)
        return torch.count_nonzero(last > k - self.span)

    def alive_many(self, sites: list[tuple[int, int]], tops: list[Tensor]) -> Tensor:
        """`alive` for several distinct sites whose ``tops`` share a dtype and device, as one
        float64 vector of counts: a handful of operations whatever the number of sites."""
        keys = tuple((*site, *top.shape) for site, top in zip(sites, tops))
        flat = self._flat
        if keys != self._layout or flat is None or flat.device != tops[0].device:
            parts = [self._site(key, top).reshape(-1) for key, top in zip(keys, tops)]
            flat = self._flat = torch.cat(parts)
            sizes = [t.numel() for t in parts]
            for key, top, view in zip(keys, tops, flat.split(sizes)):
                self._last[key] = view.view(top.shape)
            self._segments = Segments(sizes, flat.device)
            self._layout = keys
        k = self.index
        flat.masked_fill_(_flatten_dense_tensors(tops) > 0, k)
        return self._segments.sums((flat > k - self.span).double())

    def clear(self) -> None:
        self._last.clear()
        self._layout = self._flat = self._segments = None

    def carry(self, old: UnitWindow, layers: dict[int, int], modules: dict[int, int]) -> None:
        """Takes over ``old``'s call sites when the watched set was rebuilt (a layer frozen or
        added), re-keyed by the new indices of their layer and module (``layers``,
        ``modules``: old index -> new); the sites of a layer no longer watched are dropped.
        The other layers' windows go on as if nothing happened."""
        self.clear()
        self.index = old.index
        for key, last in old._last.items():
            layer, module = layers.get(key[0]), modules.get(key[1])
            if layer is not None and module is not None:
                self._last[(layer, module, *key[2:])] = last

    def state_dict(self) -> list[list]:
        """Each call site's key and its units' last firing (host copies: `GradWatch.state_dict`
        calls it between steps, never in a hot loop)."""
        return [[list(key), last.cpu().tolist()] for key, last in self._last.items()]

    def load_state_dict(self, sites: list[list]) -> None:
        self.clear()
        for key, last in sites:
            key = tuple(int(v) for v in key)
            self._last[key] = torch.tensor(last, dtype=torch.int64).reshape(key[2:])


class UnitBatch:
    """The unit statistics of the activation outputs of a forward, counted together.

    `add` keeps, per call, the per-unit maximum over the batch (rectifiers; one reduction)
    or the output itself (saturating modules with at most `SAMPLE` outputs; larger outputs are
    sampled and counted at once). `finish` then counts every site in a few batched
    operations and returns ``(entries, counts)``: a `UnitEntry` per call and one float64 device
    vector of counts aligned with them. A held output changed in place before `finish` (its
    version moved) is left out of that step's statistics."""

    def __init__(self, window: UnitWindow) -> None:
        self.window = window
        self._segments: dict[tuple[Any, ...], Segments] = {}
        self.clear()

    def clear(self) -> None:
        self._rect: list[tuple[int, tuple[int, int], Tensor, int]] = []  # + measured step
        self._sat: list[tuple[UnitEntry, Tensor, int, float, float]] = []  # + y, version, lo, hi
        self._ready: list[tuple[UnitEntry, Tensor]] = []  # counted at once: large outputs

    def __len__(self) -> int:
        return len(self._rect) + len(self._sat) + len(self._ready)

    def add(self, kind: str, y: Tensor, module: nn.Module, conv: bool, layer: int,
            site: tuple[int, int]) -> None:
        """Notes the output ``y`` of an activation module of ``kind`` ("rectifier" or
        "saturating") at call ``site`` (a convolution's channels are its units when ``conv``,
        else the last dimension); a 0-d or empty output is skipped."""
        if y.dim() == 0 or not y.numel():
            return
        if kind == "rectifier":
            unit_dim = 1 if conv else y.dim() - 1
            other = tuple(d for d in range(y.dim()) if d != unit_dim)
            top = y.detach().amax(dim=other) if other else y.detach().clone()
            self._rect.append((layer, site, top, self.window.index))
            return
        lo, hi = _bounds(module)
        if y.numel() <= SAMPLE and not y.is_inference():  # (no version counter there)
            self._sat.append((UnitEntry(layer, "sat_frac", y.numel(), site), y, y._version,
                              lo, hi))
            return
        flat = y.detach().reshape(-1)
        flat = flat[::-(-flat.numel() // SAMPLE)]
        self._ready.append((UnitEntry(layer, "sat_frac", flat.numel(), site),
                            torch.count_nonzero(_saturated(flat, lo, hi))))

    def finish(self) -> tuple[list[UnitEntry], Tensor | None]:
        entries: list[UnitEntry] = []
        counts: list[Tensor] = []
        with torch.inference_mode(False), torch.no_grad():  # the window's tensors stay normal
            # tensors even when a forward ran, or the step is measured, under inference mode
            self._count_rectifiers(entries, counts)
            self._count_saturated(entries, counts)
        if self._ready:
            entries += [entry for entry, _ in self._ready]
            counts.append(torch.stack([c for _, c in self._ready]).double())
        self.clear()
        if not counts:
            return entries, None
        return entries, counts[0] if len(counts) == 1 else torch.cat(
            [c.to(counts[0].device) for c in counts])

    def _count_rectifiers(self, entries: list, counts: list[Tensor]) -> None:
        rect = self._rect
        if not rect:
            return
        window = self.window
        tops = [top for _, _, top, _ in rect]
        entries += [UnitEntry(layer, "dead_frac", top.numel(), (*site, *top.shape))
                    for layer, site, top, _ in rect]
        if len({site for _, site, _, _ in rect}) == len(rect) and len(
                {(t.dtype, t.device) for t in tops}) == 1 and all(
                k == window.index for _, _, _, k in rect):
            counts.append(window.alive_many([site for _, site, _, _ in rect], tops))
            return
        now, alive = window.index, []  # a site twice, or forwards of several measured steps
        for _, site, top, k in rect:  # (an iteration the AMP scaler skipped): in call order
            window.index = k
            alive.append(window.alive(site, top))
        window.index = now
        counts.append(torch.stack(alive).double())

    def _count_saturated(self, entries: list, counts: list[Tensor]) -> None:
        groups: dict[tuple, list[tuple[UnitEntry, Tensor]]] = {}
        for entry, y, version, lo, hi in self._sat:
            if y._version == version:  # else changed in place since: not what the module gave
                groups.setdefault((y.dtype, y.device, lo, hi), []).append((entry, y))
        for (_, _, lo, hi), items in groups.items():
            ys = [y for _, y in items]
            sizes = tuple(entry.n for entry, _ in items)
            flat = _saturated(_flatten_dense_tensors(ys), lo, hi).double()
            entries += [entry for entry, _ in items]
            if len(ys) == 1:
                counts.append(flat.sum().reshape(1))
                continue
            key = (flat.device.type, flat.device.index, *sizes)
            segments = self._segments.get(key)
            if segments is None:
                if len(self._segments) >= _CACHE:
                    self._segments.clear()
                segments = self._segments[key] = Segments(list(sizes), flat.device)
            counts.append(segments.sums(flat))


class UnitHooks:
    """The part of `gradwatch.capture.collector.Collector` that hands activation outputs to
    its `UnitBatch` (``unit_batch``) and their counts to ``data``
    (a `gradwatch.capture.collected.Collected`)."""

    unit_batch: UnitBatch
    data: Any
    conv_like: list[bool]
    weighted: list[bool]
    owner_of: list[int]
    _last_layer: int

    def _unit_stats(self, kind: str, y: Tensor, module: nn.Module, index: int) -> None:
        """Notes an activation's output for the batched unit statistics (`UnitBatch`): the
        units that fired within the window (rectifiers), or the outputs within 1% of a bound
        (saturating modules)."""
        conv = kind == "rectifier" and y.dim() >= 3 and self._from_conv()
        self.unit_batch.add(kind, y, module, conv, self._last_layer, (self._last_layer, index))
        if len(self.unit_batch) >= BATCH_TENSORS:
            self._flush_units()

    def _flush_units(self) -> None:
        entries, counts = self.unit_batch.finish()
        if counts is not None:
            self.data.units += entries
            self.data.unit_counts.append(counts)

    def _from_conv(self) -> bool:
        """Whether an activation's units are channels (dim 1): the last module that applied a
        weight before it (``weighted``: a convolution, a Linear, a module using a weight
        layer's matrix) is a convolution. Normalisations, pooling and the parametrization
        that makes a weight (it completes before its convolution) in between are passed
        over: Conv → BatchNorm → ReLU counts channels. Without such a module, the module of
        the last layer decides."""
        for index in reversed(self.data.completed):
            if self.weighted[index]:
                return self.conv_like[index]
        for index in reversed(self.data.completed):
            if self.owner_of[index] == self._last_layer:
                return self.conv_like[index]
        return False


def _saturated(flat: Tensor, lo: float, hi: float) -> Tensor:
    """Which outputs are within 1% of a bound (softmax-like, ``lo`` = -inf: near one-hot),
    compared in float32 at least (in bfloat16, 0.5 - y and 0.49 round together near the band's
    edge)."""
    if flat.dtype in (torch.float16, torch.bfloat16):
        flat = flat.float()
    if lo == -math.inf:
        return flat >= 0.99
    return (flat - (lo + hi) / 2).abs_() >= 0.49 * (hi - lo)
