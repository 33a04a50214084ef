"""Why gradwatch cannot tell a net stuck on a saturated output from a converged one without the
loss: the gradients of the two look alike.

Run ``python scripts/stalled_vs_converged.py``. One 2-4-1 sigmoid net (float64), its output
sigmoid saturated near 1 (output bias 14), on two inputs, three ways: targets 1 with binary
cross-entropy on the probabilities (converged: right and confident), targets 0 with the summed
squared error (stuck: wrong and confident, the XOR nets' loss), targets 1 with the squared error
(converged). It prints each loss, the head's parameter- and output-gradient norms, the first
layer's gradient norm and gradwatch's findings.
"""

from __future__ import annotations

import torch
from torch import nn

from gradwatch import GradWatch


def case(targets: float, loss_kind: str) -> dict[str, float | list[str]]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 4), nn.Sigmoid(), nn.Linear(4, 1), nn.Sigmoid()).double()
    with torch.no_grad():
        net[2].bias.fill_(14.0)  # sigmoid(z) ~ 1 - 1e-6: saturated
    x = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    t = torch.full((2, 1), targets, dtype=torch.float64)
    with GradWatch(net) as watch:
        y = net(x)
        loss = (nn.functional.binary_cross_entropy(y, t) if loss_kind == "bce"
                else 0.5 * ((y - t) ** 2).sum())
        loss.backward()
        rec = watch.step()
        return {"loss": loss.item(), "head grad": rec.layers["2"].norm,
                "head output grad": rec.layers["2"].act_norm,
                "first layer grad": rec.layers["0"].norm,
                "findings": [f.kind for f in watch.diagnose()]}


def main() -> int:
    for name, targets, kind in (("converged, cross-entropy", 1.0, "bce"),
                                ("stuck, squared error", 0.0, "mse"),
                                ("converged, squared error", 1.0, "mse")):
        row = case(targets, kind)
        print(f"{name:26s} " + ", ".join(
            f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
