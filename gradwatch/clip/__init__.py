"""Clipping policies, each applied with the norm gradwatch measured and logged.

Every policy has ``clip_(grads, total_norm, *, params, is_output)``, which changes ``grads``
in place and returns the factor the gradients were scaled by (a float, or a 0-d tensor when the
norm stayed on the device) or ``None`` when the policy scales entries, units or tensors
differently, and a ``state_dict``/``load_state_dict`` pair.
"""

from __future__ import annotations

import math
import numbers

from ..verdict.scalars import as_real, plain_number
from ._base import ClipPolicy, clip_with_norm_, factor_dtype
from .agc import AGC
from .autoclip import AutoClip
from .fixed import GlobalNorm, PerTensorNorm, Value
from .zclip import ZClip

__all__ = ["ClipPolicy", "GlobalNorm", "Value", "PerTensorNorm", "AGC", "AutoClip", "ZClip",
           "clip_with_norm_", "factor_dtype", "make_policy"]


def make_policy(clip: float | str | ClipPolicy | None) -> ClipPolicy | None:
    """Turns the ``clip=`` argument of `GradWatch` into a policy (or None for no clipping).

    Args:
        clip: ``None``; a max global norm (`GlobalNorm`); ``"auto"`` (`ZClip` with its
            defaults); or a `ClipPolicy`, returned as is.

    Returns:
        The policy, or None.
    """
    if clip is None or isinstance(clip, ClipPolicy):
        return clip
    if isinstance(clip, str):
        if clip == "auto":
            return ZClip()
        raise ValueError(f"Expected `clip` to be a max norm, \"auto\", a gradwatch.clip policy or "
                         f"None, but got the string {clip!r}. Use clip=\"auto\" for ZClip.")
    if isinstance(clip, type) and issubclass(clip, ClipPolicy):
        raise TypeError(f"Expected `clip` to be a max norm, \"auto\", a gradwatch.clip policy or "
                        f"None, but got the class {clip.__name__}; pass an instance: "
                        f"clip={clip.__name__}(...).")
    number = plain_number(clip)
    if isinstance(number, numbers.Real) and not isinstance(number, bool):
        return GlobalNorm(as_real("clip", number, "to be a max norm > 0 (finite), \"auto\", a "
                                  "gradwatch.clip policy or None", lambda v: 0 < v < math.inf,
                                  fix="e.g. clip=1.0"))
    raise TypeError(f"Expected `clip` to be a max norm, \"auto\", a gradwatch.clip policy or None, "
                    f"but got {type(clip).__name__} {clip!r:.60}.")
