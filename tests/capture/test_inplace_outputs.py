"""A layer's output written in place through a view (wav2vec2's SpecAugment masking:
``hidden[mask] = embedding`` on a Linear's 3-D output) still has its output-gradient norm: the
gradient w.r.t. what the layer gave, checked against plain torch on an out-of-place copy."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradwatch import GradWatch


class _Masked(nn.Module):
    def __init__(self, inplace: bool) -> None:
        super().__init__()
        self.proj, self.out = nn.Linear(8, 8), nn.Linear(8, 2)
        self.emb = nn.Parameter(torch.randn(8))
        self.inplace = inplace
        self.kept: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        mask = torch.zeros(x.shape[:2], dtype=torch.bool)
        mask[:, ::2] = True
        if self.inplace:
            h[mask] = self.emb  # the Linear's output (a view of addmm's) written in place
        else:
            self.kept = h
            h.retain_grad()
            h = h.clone()
            h[mask] = self.emb
        return self.out(h).sum(1)


@pytest.mark.parametrize("steps", [3])
def test_an_output_written_in_place_through_a_view_keeps_its_output_gradient(steps):
    torch.manual_seed(0)
    model = _Masked(inplace=True)
    ref = _Masked(inplace=False)
    ref.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    watch = GradWatch(model, optimizer=opt)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(4, 6, 8, generator=g)
        for m, o in ((model, opt), (ref, ref_opt)):
            o.zero_grad()
            m(x).square().mean().backward()
        expected = torch.linalg.vector_norm(ref.kept.grad, dtype=torch.float64).item()
        assert ref.kept.grad[:, ::2].abs().sum() == 0 and expected > 0  # masked rows get none
        opt.step()
        ref_opt.step()
        assert watch.history[-1].layers["proj"].act_norm == pytest.approx(expected, rel=1e-6)
        assert watch.history[-1].layers["proj"].norm == pytest.approx(torch.linalg.vector_norm(
            torch.cat([p.grad.reshape(-1) for p in ref.proj.parameters()])).item(), rel=1e-6)
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
