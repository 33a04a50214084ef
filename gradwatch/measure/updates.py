"""The update/weight ratio across optimizer.step(), from fixed samples of each weight."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor
from ..capture.distributed import is_dtensor
from .host import to_device

__all__ = ['UpdateTracker']


class UpdateTracker:
    """‖Δθ‖/‖θ‖ per layer across ``optimizer.step()`` from fixed samples (see
    `gradwatch.measure.statistics.UpdateRatio`): one batched copy into a flat buffer before the step,
    one after, and one row-wise sum, whatever the number of layers.

    A tensor of more than ``sample`` entries is read in 16 evenly spaced runs of
    ``sample // 16`` consecutive entries (a few cache lines each, not one per entry), each
    read entry standing for numel / (entries read). Entries are taken in memory order, so a
    dense tensor in another layout (a channels_last conv weight) is read like a contiguous
    one; a complex entry is read as its (real, imaginary) pair, so the norms are of |·|. The
    buffers hold every sampled dtype exactly (float32, float64 with a float64 tensor), so
    Δθ is formed at the parameters' own precision.

    An optimizer whose step replaces a parameter's storage (``p.data = p.data - lr * p.grad``)
    is read after the step from the new storage, the same entries; the sums are float32 (for
    float32 weights), and the few steps whose squares overflow (|θ| above ~1.8e19, the weights
    still finite) are summed again in float64 on the host.
    """

    RUNS = 16

    def __init__(self, params: Sequence[Tensor], layer_of: Sequence[int], n_layers: int,
                 sample: int) -> None:
        self.params, self.layer_of, self.n_layers, self.sample = params, layer_of, n_layers, sample
        self._views: list[Tensor] | None = None
        self._ptrs: list[int] = []
        self._measured = False
        self._read: tuple[Tensor, Tensor, Tensor] | None = None  # (θ, Δθ, weights) just read

    def _usable(self, p: Tensor) -> bool:
        return not is_dtensor(p) and p.numel() > 0 and _in_memory_order(p) is not None

    def _sample_view(self, p: Tensor) -> Tensor:
        """The entries of ``p`` that are read: all of them up to `sample`, else the 16 runs (in
        memory order, counted in ``p``'s own entries, complex ones included)."""
        flat = _in_memory_order(p.detach())
        if flat.numel() <= self.sample:
            return flat
        spacing = flat.numel() // self.RUNS
        return flat[:spacing * self.RUNS].view(self.RUNS, spacing)[:, :self.sample // self.RUNS]

    def _build(self) -> None:
        usable = [self._usable(p) for p in self.params]
        self._sampled = [p for p, ok in zip(self.params, usable) if ok]
        self._layers = [layer for layer, ok in zip(self.layer_of, usable) if ok]
        self._ptrs = self._storage()
        self._layouts = [(p.shape, p.stride(), p.dtype) for p in self._sampled]
        picked = [self._sample_view(p) for p in self._sampled]
        # the (real, imaginary) pairs of a complex sample: ‖·‖² over them is Σ|z|²
        views = [torch.view_as_real(v) if v.is_complex() else v for v in picked]
        self._views = views
        if not views or len({v.device for v in views}) > 1:
            self._views = []
            return
        device, sizes = views[0].device, [v.numel() for v in views]
        dtype = _exact_dtype([v.dtype for v in views])
        # each tensor's sample sits in a row of `width` entries, zero-padded: the per-tensor
        # sums are then one row-wise sum (segment_reduce is ~65 us for 15 K entries on a CPU)
        width = max(sizes)
        self._flat = [torch.zeros(len(views), width, dtype=dtype, device=device)
                      for _ in range(2)]  # before, after
        self._bufs = [[row[:n].view(v.shape) for row, n, v in zip(flat, sizes, views)]
                      for flat in self._flat]
        self._weights = to_device([p.numel() / v.numel() for p, v in zip(self._sampled, picked)],
                                  dtype, device)

    def _storage(self) -> list[int]:
        """Where each sampled tensor's entries start now: another address, another storage."""
        return list(map(Tensor.data_ptr, self._sampled))

    def _views_after_rebind(self) -> list[Tensor] | None:
        """The views to read after a step that replaced storage (``p.data = p.data - lr * g``):
        those taken before it read the orphaned storage (Δθ = 0). Each replaced tensor's same
        entries are read from its new storage, through a copy in the old layout when the step
        changed the layout, dtype or device; None when it changed a shape (no Δθ)."""
        views = list(self._views)
        for k, (p, ptr, (shape, stride, dtype)) in enumerate(
                zip(self._sampled, self._ptrs, self._layouts)):
            if p.data_ptr() == ptr:
                continue
            if p.shape != shape or p.is_complex() != dtype.is_complex:
                return None
            new = p.detach()
            if new.stride() != stride or new.dtype != dtype or new.device != views[k].device:
                new = torch.empty_strided(shape, stride, dtype=dtype,
                                          device=views[k].device).copy_(new)
            v = self._sample_view(new)
            views[k] = torch.view_as_real(v) if v.is_complex() else v
        return views

    def before(self) -> None:
        """Snapshot the sampled entries (call right before ``optimizer.step()``)."""
        if self._views is None or self._storage() != self._ptrs:
            self._build()  # first use, or a parameter's storage was replaced
        self._measured, self._read = bool(self._views), None
        if self._measured:
            torch._foreach_copy_(self._bufs[0], self._views)

    def after(self) -> np.ndarray | None:
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
        views = self._views if self._storage() == self._ptrs else self._views_after_rebind()
        if views is None:
            return None
        before, now = self._flat
        torch._foreach_copy_(self._bufs[1], views)
        sums = torch.stack([now.sub_(before), before]).square_().sum(-1)  # padding adds 0
        self._read = (before, now, self._weights)
        return sums * self._weights

    def ratios(self, sums: Any) -> np.ndarray:
        """Per-layer ‖Δθ‖/‖θ‖ from per-tensor (‖Δθ‖², ‖θ‖²) sums: an array over the watched
        layers, NaN where no tensor was sampled or the weights are all 0."""
        d2, w2 = (np.asarray(s, dtype=np.float64) for s in sums)
        if not math.isfinite(d2.sum() + w2.sum()):  # float32 squares overflow above ~1.8e19
            with np.errstate(invalid="ignore"):  # inf/inf: weights that are not finite, NaN
                return self._blind(self._layer_ratios(*self._float64_sums(d2, w2)))
        return self._blind(self._layer_ratios(d2, w2))

    def _blind(self, ratios: np.ndarray) -> np.ndarray:
        """``ratios`` with NaN (not measured) for each layer whose ratio is exactly 0 although
        its sample could not show the move its gradient makes: every sampled tensor of it has
        a nonzero gradient only outside the entries read, as when a batch looks up rows of an
        embedding table that the sample does not read (a sparse update: the table moved where
        the sample does not look). A layer whose gradient is 0 everywhere keeps its measured 0,
        and a tensor read whole (`sample` entries or fewer) sees its gradient wherever it is.
        Looked at only where a ratio is 0, so a moving model pays nothing. (A record formed a
        step later, on the sync-free path, reads the gradients there then: the next step's,
        which tell the same of a layer whose batches miss its sample.)"""
        if not (ratios == 0).any():
            return ratios
        shows = np.zeros(self.n_layers, dtype=bool)
        for p, layer in zip(self._sampled, self._layers):
            if ratios[layer] == 0 and not shows[layer]:
                shows[layer] = not self._misses(p)
        out = ratios.copy()
        out[(ratios == 0) & ~shows] = math.nan
        return out

    def _misses(self, p: Tensor) -> bool:
        """Whether the sampled entries of ``p`` cannot show the move its gradient makes: the
        gradient is nonzero, but not at any sampled entry (or where they cannot be told: a
        sparse gradient with entries, or one in another layout than ``p``)."""
        g = p.grad
        if p.numel() <= self.sample or g is None:
            return False
        if g.is_sparse:
            return bool(g._nnz())
        if g.shape != p.shape or g.stride() != p.stride():
            return bool(g.ne(0).any())
        return not bool(self._sample_view(g).ne(0).any()) and bool(g.ne(0).any())

    def _float64_sums(self, d2: np.ndarray, w2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The sums again in float64 from the entries just read (kept until the next `before`):
        finite for finite weights, where float32 squares gave inf/inf (a NaN ratio) or a finite
        ‖Δθ‖² over an infinite ‖θ‖² (a false 0). Rare, so a wait on the device is no matter."""
        if self._read is None:
            return d2, w2
        before, delta, weights = (t.to("cpu", torch.float64) for t in self._read)
        return ((delta.square().sum(-1) * weights).numpy(),
                (before.square().sum(-1) * weights).numpy())

    def _layer_ratios(self, d2: np.ndarray, w2: np.ndarray) -> np.ndarray:
        """Per-layer ‖Δθ‖/‖θ‖ from per-tensor float64 sums."""
        layers = np.asarray(self._layers, dtype=np.int64)
        a = np.bincount(layers, d2, minlength=self.n_layers)
        b = np.bincount(layers, w2, minlength=self.n_layers)
        ok = (np.bincount(layers, minlength=self.n_layers) > 0) & (b > 0)
        out = np.full(self.n_layers, np.nan)
        out[ok] = np.sqrt(a[ok] / b[ok])
        return out


def _in_memory_order(t: Tensor) -> Tensor | None:
    """A 1-D view of ``t``'s entries in the order they lie in memory, or None when they are not
    one dense block (overlapping or with gaps). A norm over all entries does not depend on
    their order, and the same view reads the same entries before and after the step."""
    order = sorted(range(t.dim()), key=lambda d: -t.stride(d))  # the outermost dimension first
    dense = t.permute(order)
    return dense.view(-1) if dense.is_contiguous() else None


def _exact_dtype(dtypes: Sequence[torch.dtype]) -> torch.dtype:
    """The buffer dtype, one that holds every sampled entry exactly: float64 when a tensor is
    float64 (float32 widens to it exactly), else float32 (half precision and float8 widen to it
    exactly). On a device without float64 no tensor is float64, so none is asked for."""
    return torch.float64 if torch.float64 in dtypes else torch.float32
