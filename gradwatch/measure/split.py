"""A vanishing net's gradient norms: the tensors whose norm was below float32's safe range at
the last measured step are reduced in float64 at once (one pass, not a float32 pass and a
float64 redo), and the step keeps torch's own norms and total wherever those are right."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from .batched import DTYPE, remember
from .norms import GROUPS, TINY, exact_norms_tensor, per_tensor_norms
from .read import total_norm

__all__ = ["NATIVE", "split_norms", "as_torch"]

NATIVE = "gradwatch_native"
"""Attribute of a `split_norms` result: the one dtype (float32 or float64) of all its
gradients, the dtype torch reduces them in; absent where they have several or another."""


def split_norms(grads: Sequence[Tensor], exact: np.ndarray) -> Tensor:
    """`per_tensor_norms` with the tensors marked in ``exact`` reduced in float64 directly
    (those whose norm was below `TINY` at the last measured step, exact zeros included: a
    vanishing net's input side), the others as torch does. A float64 vector on the CPU,
    marked `NATIVE` where its gradients share one dtype (`as_torch` then restores torch's
    norms and total)."""
    out = torch.empty(len(grads), dtype=torch.float64)
    idx64, idx32, at64, at32 = _split(exact)
    dtypes: set[Any] = set()
    if idx32:
        own = per_tensor_norms([grads[k] for k in idx32])
        dtypes.add(own.dtype if getattr(own, GROUPS, None) is None else None)
        out.index_copy_(0, at32, own.double())
    small = [grads[k] for k in idx64]
    dtypes.update(map(DTYPE, small))
    out.index_copy_(0, at64, exact_norms_tensor(small))
    if len(dtypes) == 1 and dtypes <= {torch.float32, torch.float64}:
        setattr(out, NATIVE, dtypes.pop())
    return out


_SPLITS: dict[bytes, tuple[list[int], list[int], Tensor, Tensor]] = {}


def _split(exact: np.ndarray) -> tuple[list[int], list[int], Tensor, Tensor]:
    """The positions ``exact`` marks and the others, as lists and as index tensors."""
    def make() -> tuple[list[int], list[int], Tensor, Tensor]:
        idx64, idx32 = np.flatnonzero(exact).tolist(), np.flatnonzero(~exact).tolist()
        return (idx64, idx32, torch.tensor(idx64, dtype=torch.int64),
                torch.tensor(idx32, dtype=torch.int64))

    key = np.packbits(exact).tobytes() + len(exact).to_bytes(8, "little")
    return remember(_SPLITS, key, make)


def as_torch(host_norms: list[float], grads: Sequence[Tensor], exact: np.ndarray,
             native: Any, sel: np.ndarray | None) -> tuple[list[float], np.ndarray | None]:
    """The norms of a `split_norms` step as torch gives them wherever torch's are right, read
    as ``[n_0, ..., n_k, total]`` (`gradwatch.measure.read.read_norms`), and the mask of those
    still reduced in float64 (None: none; zeros stay marked: nothing redoes them).

    A marked gradient whose float64 norm is back in float32's safe range (a zero-initialised
    head has made the layers below it nonzero) is reduced again as torch does. One whose norm
    is 0 holds only zeros, and torch's norm of it is 0 too. So when every marked norm is 0 or
    was redone, and the gradients share one dtype (``native``), the total is formed from these
    norms in that dtype as ``get_total_norm`` forms it (over ``sel``, the stepped gradients;
    None: all): clipping stays bit-identical to ``clip_grad_norm_``. A genuinely tiny norm
    (0 < n < `TINY`, where float32 loses digits) keeps the float64 value, and the total is
    then the exact float64 one (`gradwatch.measure.read.finish_read`); with several dtypes
    and only zeros, the float64 norm of these norms."""
    values = np.asarray(host_norms[:-1], dtype=np.float64)
    back = exact & (values >= TINY) & (values < math.inf)
    if back.any():
        idx = np.flatnonzero(back).tolist()
        for k, v in zip(idx, per_tensor_norms([grads[k] for k in idx]).tolist()):
            host_norms[k] = v
        exact = exact & ~back
    if native is not None and not values[exact].any():  # only zeros left: torch's total
        host_norms[-1] = total_norm(torch.tensor(host_norms[:-1], dtype=native), sel).item()
    return host_norms, exact if exact.any() else None
