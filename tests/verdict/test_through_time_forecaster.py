"""A one-step forecaster needs only its last inputs: its through-time gradient fades as any
LSTM's does and, when its loss cannot fall far, the alarm stands (the gradients and the loss
cannot tell it from a long-memory task the net fails). The finding says how to turn the check
off, and the threshold does."""

from __future__ import annotations

import torch
from torch import nn

from gradwatch import GradWatch, Thresholds


class _Forecaster(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn, self.out = nn.LSTM(1, 16, batch_first=True), nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.rnn(x)[0][:, -1])


def _run(thresholds: Thresholds) -> GradWatch:
    torch.manual_seed(0)
    model = _Forecaster()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    with GradWatch(model, optimizer=opt, thresholds=thresholds) as watch:
        for _ in range(10):
            x = torch.zeros(16, 51)
            x[:, 0] = torch.randn(16, generator=g)
            for t in range(1, 51):  # AR(1), coefficient 0.5
                x[:, t] = 0.5 * x[:, t - 1] + torch.randn(16, generator=g)
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x[:, :-1, None]), x[:, -1:])
            loss.backward()
            watch.note_loss(loss)
            opt.step()
    return watch


def test_the_forecasters_finding_says_how_to_turn_the_check_off():
    (found,) = [f for f in _run(Thresholds()).diagnose() if f.kind == "vanishing_through_time"]
    assert "one-step forecaster" in found.remedy and "time_vanishing=None" in found.remedy
    quiet = _run(Thresholds(time_vanishing=None))
    assert quiet.diagnose() == [] and not any(r.flagged for r in quiet.history)
