"""The documented ``clip_gradient_norm(grads, max_norm=0.25)`` against gradwatch and torch."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..clip import GlobalNorm
from .nets import DeepMLP
from ..monitor import GradWatch
from .common import Claim, Context, ExperimentResult

__all__ = ["clip_gradient_norm", "compare_clipping", "run_clip_reference"]


def clip_gradient_norm(grads: list[np.ndarray], max_norm: float = 0.25) -> list[np.ndarray]:
    """The documented reference, in float64 numpy: ``g <- g * max_norm / (||g|| + 1e-6)``
    over the global norm of all gradients, applied when that factor is below 1."""
    total = np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads))
    factor = max_norm / (total + 1e-6)
    return [g * factor if factor < 1 else g.copy() for g in grads]


def compare_clipping(seed: int, scale: float, max_norm: float = 0.25) -> dict[str, float]:
    """Largest relative differences between the three clippings of one MLP gradient."""
    torch.manual_seed(seed)
    model = DeepMLP(3, width=32, activation="tanh", init="xavier", in_features=20)
    x, y = torch.randn(16, 20) * scale, torch.randint(0, 10, (16,))
    params = list(model.parameters())

    def backward() -> None:
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()

    backward()
    raw = [p.grad.detach().numpy().copy() for p in params]
    ref = clip_gradient_norm(raw, max_norm)
    torch_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    by_torch = [p.grad.detach().numpy().copy() for p in params]
    backward()
    with GradWatch(model, clip=GlobalNorm(max_norm), activations=False) as watch:
        rec = watch.step()
    by_watch = [p.grad.detach().numpy().copy() for p in params]
    scale_ref = max(float(np.abs(g).max()) for g in ref)

    def diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
        return max(float(np.abs(u - v).max()) for u, v in zip(a, b)) / scale_ref

    total = float(np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in raw)))
    return {"seed": seed, "input_scale": scale, "total_norm": total,
            "clipped": bool(max_norm / (total + 1e-6) < 1),
            "gradwatch_vs_reference": diff(by_watch, ref), "torch_vs_reference": diff(by_torch, ref),
            "gradwatch_vs_torch": diff(by_watch, by_torch),
            "norm_gradwatch_vs_torch": abs(rec.total_norm - torch_norm) / torch_norm,
            "gradwatch_clip_coef": rec.clip_coef}


def run_clip_reference(ctx: Context) -> ExperimentResult:
    """Agreement of gradwatch's global-norm policy, ``clip_grad_norm_`` and the reference."""
    res = ExperimentResult("clip_reference", "Clipping reference: clip_gradient_norm(max_norm=0.25)")
    rows = [compare_clipping(seed, scale) for seed in range(max(3, ctx.budget.seeds))
            for scale in (0.01, 1.0, 100.0)]
    res.data["cases"] = rows
    worst = {k: max(r[k] for r in rows) for k in ("gradwatch_vs_reference", "torch_vs_reference",
                                                  "gradwatch_vs_torch", "norm_gradwatch_vs_torch")}
    res.data["worst"] = worst
    n_clip = sum(r["clipped"] for r in rows)
    res.claims.append(Claim(
        claim="clip_gradient_norm(grads, 0.25) = gradwatch GlobalNorm(0.25) = torch clip_grad_norm_",
        source="identical clipped gradients",
        measured=(f"{len(rows)} cases ({n_clip} clipped): max rel. diff gradwatch–reference "
                  f"{worst['gradwatch_vs_reference']:.1e}, torch–reference "
                  f"{worst['torch_vs_reference']:.1e}, gradwatch–torch "
                  f"{worst['gradwatch_vs_torch']:.1e}; gradwatch's pre-clip total norm vs torch's: max "
                  f"rel. diff {worst['norm_gradwatch_vs_torch']:.1e}"),
        reproduced=max(worst.values()) < 1e-6, seeds=len(rows),
        behaved=sum(max(r[k] for k in worst) < 1e-6 for r in rows),
        spread=f"worst case over {len(rows)} cases", budget=f"{len(rows)} gradients, one step each",
        verdict="n/a (clipping check)"))
    res.notes.append("Gradients of a small tanh MLP on random inputs scaled by 0.01, 1 and 100, so "
                     "some cases fall under the threshold and some are clipped; the reference "
                     "runs in float64 numpy, torch and gradwatch in float32.")
    return res
