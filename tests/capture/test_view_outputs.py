"""Output-gradient norms of layers whose output is a view: the gradient w.r.t. what the layer
returned, as a tensor hook on it reads it in plain torch, not the gradient of the data it
views (which sums every other use of that data)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradwatch import GradWatch


class _Router(nn.Module):
    """An MoE-style router: it keeps its flat logits for an auxiliary loss and returns a 3-D
    view of them. The output gradient is the returned view's alone, not the sum over every use
    of the logits."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 4) * 0.3)
        self.logits: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        self.logits = x.reshape(b * t, d) @ self.w
        return self.logits.view(b, t, 4)


def test_an_output_viewing_data_with_other_uses_reads_only_its_own_gradient():
    torch.manual_seed(0)
    inp, router = nn.Linear(8, 8), _Router()
    model = nn.ModuleDict({"inp": inp, "router": router})
    watch = GradWatch(model)
    out = router(inp(torch.randn(2, 3, 8)))
    out.retain_grad()
    aux = torch.logsumexp(router.logits, -1).pow(2).mean() * 10
    (out.softmax(-1).pow(2).sum() + aux).backward()
    record = watch.step()
    expected = torch.linalg.vector_norm(out.grad, dtype=torch.float64).item()
    assert record.layers["router"].act_norm == pytest.approx(expected, rel=1e-6)
    watch.close()


class _Reshape(nn.Module):
    """A layer whose output only reshapes its input (its parameter feeds the loss elsewhere):
    the output is a view whose base is the input, so its own gradient is hooked, not the
    input's (which sums every consumer of the input)."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], -1)  # (two inputs: hooked tensor by tensor)


def test_an_output_that_reshapes_its_input_reads_its_own_gradient():
    torch.manual_seed(0)
    inp, reshape, head = nn.Linear(8, 12), _Reshape(), nn.Linear(12, 2)
    model = nn.ModuleDict({"inp": inp, "reshape": reshape, "head": head})
    watch = GradWatch(model)
    x = torch.randn(5, 8)
    h = inp(x)
    out = reshape(h, torch.ones(5))
    out.retain_grad()
    loss = head(out).square().mean() + (reshape.gain * h).square().mean()  # h used twice
    loss.backward()
    record = watch.step()
    expected = torch.linalg.vector_norm(out.grad, dtype=torch.float64).item()
    assert record.layers["reshape"].act_norm == pytest.approx(expected, rel=1e-6)
    watch.close()
