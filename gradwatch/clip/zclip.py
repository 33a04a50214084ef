"""ZClip (Kumar, Owen, Roy Chowdhury & Güra, "ZClip: Adaptive Spike Mitigation for LLM
Pre-Training", 2025), as the authors' ``zclip`` package (v1.0.0) computes it."""

from __future__ import annotations

import math
from typing import Any, Literal

from ..verdict.scalars import as_int, as_real
from ._base import ClipPolicy, check_flag, check_norms, check_positive, clip_with_norm_

__all__ = ["ZClip"]

_MODES = ("zscore", "percentile")
_CLIP_OPTIONS = ("adaptive_scaling", "mean")


class ZClip(ClipPolicy):
    """Z-score spike clipping against EMA statistics of the global gradient norm g.

    Warm-up: the first ``warmup`` finite norms give μ (their mean) and σ² (their population
    variance); meanwhile nothing is clipped, or, with ``max_grad_norm``, everything is clipped
    as ``clip_grad_norm_(params, max_grad_norm)``. Afterwards, each step:

    - ``mode="zscore"`` (default): z = (g − μ)/(σ + eps). If z > ``z_threshold`` the step is a
      spike and its threshold t is μ + z_threshold·σ / (z / z_threshold) (= μ + z_threshold²σ/z,
      the paper's reciprocal rule) times ``clip_factor`` for ``clip_option="adaptive_scaling"``,
      or μ for ``clip_option="mean"``.
    - ``mode="percentile"``: t = μ + z_threshold·σ; a spike is g > t (``clip_option`` unused).

    The gradient is clipped to min(t, max_grad_norm) (t = g when no spike; no cap when
    ``max_grad_norm`` is None) when g exceeds it, with `clip_with_norm_` (the arithmetic of
    ``clip_grad_norm_``). Then μ ← αμ + (1 − α)t and σ² ← ασ² + (1 − α)(t − μ)² with the *new*
    μ, where t is the spike threshold (not capped by ``max_grad_norm``) or g; with
    ``skip_update_on_spike=True`` spikes leave μ, σ² unchanged.

    The option names and every formula, operation order included, are those of the authors'
    package, whose ``z_thresh`` and ``warmup_steps`` are ``z_threshold`` and ``warmup`` here.
    Two deliberate differences: ``max_grad_norm`` defaults to None (the package's default 1.0
    caps every step at norm 1, a fixed clip that suits its LLM setting but not every model),
    and a non-finite norm neither enters the statistics nor the warm-up (the package would
    poison μ and σ² with it); such a gradient is scaled as ``clip_grad_norm_`` would scale it.
    ``clip="auto"`` is ``ZClip()``.

    Args:
        alpha: EMA momentum α of μ and σ², in (0, 1).
        z_threshold: The z-score above which a step is a spike (the package's ``z_thresh``).
        warmup: Finite norms collected before the statistics start (``warmup_steps``).
        max_grad_norm: Optional cap on the clipping threshold, also applied during warm-up.
        eps: Added to σ in the z-score.
        mode: ``"zscore"`` or ``"percentile"`` (see above).
        clip_option: ``"adaptive_scaling"`` or ``"mean"``, for ``mode="zscore"``.
        clip_factor: Multiplies the adaptive-scaling threshold (the package multiplies the whole
            threshold μ + z_threshold²σ/z, although its documentation says only the σ term);
            0.5-0.9 clips more aggressively.
        skip_update_on_spike: Leave μ and σ² unchanged on spikes.
    """

    needs_host_norm = True

    def __init__(self, alpha: float = 0.97, z_threshold: float = 2.5, warmup: int = 25, *,
                 max_grad_norm: float | None = None, eps: float = 1e-6,
                 mode: Literal["zscore", "percentile"] = "zscore",
                 clip_option: Literal["adaptive_scaling", "mean"] = "adaptive_scaling",
                 clip_factor: float = 1.0, skip_update_on_spike: bool = False) -> None:
        alpha = as_real("alpha", alpha, "in (0, 1)", lambda v: 0 < v < 1)
        warmup = as_int("warmup", warmup)
        if mode not in _MODES:
            raise ValueError(f"Expected `mode` to be one of {_MODES}, but got {mode!r}.")
        if clip_option not in _CLIP_OPTIONS:
            raise ValueError(f"Expected `clip_option` to be one of {_CLIP_OPTIONS}, but got "
                             f"{clip_option!r}.")
        self.alpha, self.warmup = alpha, warmup
        self.z_threshold = check_positive("z_threshold", z_threshold)
        self.max_grad_norm = None if max_grad_norm is None else check_positive(
            "max_grad_norm", max_grad_norm, fix="or None for no cap")
        self.eps = check_positive("eps", eps)
        self.mode, self.clip_option = mode, clip_option
        self.clip_factor = check_positive("clip_factor", clip_factor)
        self.skip_update_on_spike = check_flag("skip_update_on_spike", skip_update_on_spike)
        self.mean: float | None = None
        self.var = 0.0
        self._warm: list[float] = []

    def threshold(self, norm: float) -> float | None:
        """The norm a step of global norm ``norm`` is clipped to now (before the
        ``max_grad_norm`` cap), or None when it is no spike or the warm-up is not over."""
        if self.mean is None:
            return None
        std = self.var ** 0.5
        if self.mode == "percentile":
            t = self.mean + self.z_threshold * std
            return t if norm > t else None
        z = (norm - self.mean) / (std + self.eps)
        if not z > self.z_threshold:
            return None
        if self.clip_option == "mean":
            return self.mean
        eta = z / self.z_threshold  # the package's operation order, for identical floats
        return (self.mean + (self.z_threshold * std) / eta) * self.clip_factor

    def clip_(self, grads, total_norm, *, params, is_output):
        g = float(total_norm)
        if not math.isfinite(g):
            return clip_with_norm_(grads, 1.0, g)  # as torch does with a non-finite norm
        if self.mean is None:
            self._warm.append(g)
            if len(self._warm) >= self.warmup:
                n = len(self._warm)
                self.mean = sum(self._warm) / n
                self.var = sum((x - self.mean) ** 2 for x in self._warm) / n
                self._warm = []
            if self.max_grad_norm is None:
                return 1.0
            return clip_with_norm_(grads, self.max_grad_norm, g)
        spike = self.threshold(g)
        target = g if spike is None else spike
        if self.max_grad_norm is not None:
            target = min(target, self.max_grad_norm)
        coef = clip_with_norm_(grads, target, g) if g > target else 1.0
        if spike is None or not self.skip_update_on_spike:
            kept = g if spike is None else spike
            self.mean = self.alpha * self.mean + (1 - self.alpha) * kept
            self.var = self.alpha * self.var + (1 - self.alpha) * (kept - self.mean) ** 2
        return coef

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "var": self.var, "warm": list(self._warm)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"mean", "var", "warm"} - set(state)
        if missing:
            raise ValueError(f"Expected a ZClip state with keys 'mean', 'var', 'warm', but "
                             f"{sorted(missing)} are missing; fix by passing what "
                             f"ZClip.state_dict() returned.")
        mean = None if state["mean"] is None else as_real("ZClip state['mean']", state["mean"],
                                                          "to be a finite number or None",
                                                          math.isfinite)
        var = as_real("ZClip state['var']", state["var"], "to be a finite number >= 0",
                      lambda v: 0 <= v < math.inf)
        warm = check_norms("ZClip state['warm']", state["warm"], "ZClip")
        self.mean, self.var, self._warm = mean, var, warm

    def __repr__(self) -> str:
        cap = "" if self.max_grad_norm is None else f", max_grad_norm={self.max_grad_norm:g}"
        mode = "" if self.mode == "zscore" else f", mode={self.mode!r}"
        return (f"ZClip(alpha={self.alpha:g}, z_threshold={self.z_threshold:g}, "
                f"warmup={self.warmup}{cap}{mode}, mean={self.mean})")
