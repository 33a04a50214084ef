"""Numbers as gradwatch's arguments take them: a Python number, a numpy scalar (or 0-d array)
and a 0-d tensor alike; a wrong type is a TypeError, a wrong value a ValueError, each naming
the argument and what was got."""

from __future__ import annotations

import numbers
from typing import Any, Callable

import numpy as np
import torch

__all__ = ["ArgumentTypeError", "plain_number", "as_int", "as_real"]


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type (a string, None, a float where an int is wanted): a
    TypeError, and a ValueError too, which gradwatch raised for some of these before (code
    that catches ValueError keeps working)."""


def plain_number(value: Any) -> Any:
    """``value`` as a Python number when it is a numpy scalar or a 0-d numpy array or tensor
    of a real or integer dtype (a tensor is read with ``.item()``); anything else unchanged."""
    if isinstance(value, torch.Tensor):
        if value.dim() == 0 and value.dtype != torch.bool and not value.dtype.is_complex:
            return value.item()
        return value
    if isinstance(value, (np.ndarray, np.generic)) and value.ndim == 0 \
            and value.dtype.kind in "iuf":
        return value.item()
    return value


def _got(value: Any) -> str:
    return f"{type(value).__name__} {value!r:.60}"


def as_int(name: str, value: Any, *, minimum: int = 1, fix: str = "") -> int:
    """``value`` as an int >= ``minimum``: a TypeError (`ArgumentTypeError`) unless it is an
    integer (a bool is not), a ValueError when it is below ``minimum``; ``fix`` ends both."""
    v = plain_number(value)
    expected = f"Expected `{name}` to be an int >= {minimum}, but got"
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise ArgumentTypeError(f"{expected} {_got(value)}{'; ' + fix if fix else ''}.")
    if v < minimum:
        raise ValueError(f"{expected} {int(v)!r}{'; ' + fix if fix else ''}.")
    return int(v)


def as_real(name: str, value: Any, expected: str, ok: Callable[[float], bool] | None = None,
            *, fix: str = "") -> float:
    """``value`` as a float: a TypeError (`ArgumentTypeError`) unless it is a real number (a
    bool is not), a ValueError when ``ok`` refuses it. The message is "Expected `name`
    {expected}, but got ..." (``expected``: "in (0, 1)", "to be a finite number > 0")."""
    v = plain_number(value)
    head = f"Expected `{name}` {expected}, but got"
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise ArgumentTypeError(f"{head} {_got(value)}{'; ' + fix if fix else ''}.")
    v = float(v)
    if ok is not None and not ok(v):
        raise ValueError(f"{head} {v!r}{'; ' + fix if fix else ''}.")
    return v
