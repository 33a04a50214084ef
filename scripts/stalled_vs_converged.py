"""Why gradwatch cannot tell a net stuck on a saturated output from a converged one by its
gradients alone, and how the loss settles it.

Run ``python scripts/stalled_vs_converged.py``. One 2-4-1 sigmoid net (float64), its output
sigmoid saturated near 1 (output bias 14) or exactly at 1 (bias 40), on two inputs, three ways:
targets 1 with binary cross-entropy on the probabilities (converged: right and confident),
targets 0 with the summed squared error (stuck: wrong and confident, the XOR nets' loss),
targets 1 with the squared error (converged). It prints each loss, the head's parameter- and
output-gradient norms, the first layer's gradient norm and gradwatch's findings without and
with the loss passed to ``GradWatch.step(loss=...)``. At bias 14 the stuck net still gets a
gradient (1e-6, above ``Thresholds.vanishing``): no rule calls it stalled. At bias 40 no
gradient is left, and only the loss tells the stuck net (``stalled``) from the converged one.
"""

from __future__ import annotations

import torch
from torch import nn

from gradwatch import GradWatch


def case(targets: float, loss_kind: str, bias: float = 14.0,
         steps: int = 5) -> dict[str, float | list[str]]:
    """``steps`` identical steps (no update: the persistent rules need 4 of 5) watched twice,
    without and with the loss."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 4), nn.Sigmoid(), nn.Linear(4, 1), nn.Sigmoid()).double()
    with torch.no_grad():
        net[2].bias.fill_(bias)  # 14: sigmoid(z) ~ 1 - 1e-6, saturated; 40: exactly 1.0
    x = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    t = torch.full((2, 1), targets, dtype=torch.float64)
    out: dict[str, float | list[str]] = {}
    for key, pass_loss in (("findings", False), ("findings with the loss", True)):
        with GradWatch(net) as watch:
            for _ in range(steps):
                net.zero_grad()
                y = net(x)
                loss = (nn.functional.binary_cross_entropy(y, t) if loss_kind == "bce"
                        else 0.5 * ((y - t) ** 2).sum())
                loss.backward()
                rec = watch.step(loss=loss if pass_loss else None)
            out.update({"loss": loss.item(), "head grad": rec.layers["2"].norm,
                        "head output grad": rec.layers["2"].act_norm,
                        "first layer grad": rec.layers["0"].norm})
            out[key] = [f.kind for f in watch.diagnose()]
    return out


def main() -> int:
    cases = (("converged, cross-entropy", 1.0, "bce"), ("stuck, squared error", 0.0, "mse"),
             ("converged, squared error", 1.0, "mse"))
    for bias in (14.0, 40.0):
        for name, targets, kind in cases:
            row = case(targets, kind, bias)
            print(f"bias {bias:g}, {name:26s} " + ", ".join(
                f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
