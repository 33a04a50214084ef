"""One update larger than the weights in a run that trains is a note, not an alarm: Adagrad's
first update is the learning rate times the gradient's sign in every entry (lr 0.05 against a
784-wide layer's default weights of about 0.02), and the loss falls from there. A run whose
large updates go on, and whose loss does not fall, keeps its alarm."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from gradwatch import GradWatch


def _run(make_opt, steps: int = 60):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                          nn.Linear(128, 10))
    opt = make_opt(model.parameters())
    g = torch.Generator().manual_seed(1)
    protos = torch.randn(10, 784, generator=g)
    ratios, losses = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with GradWatch(model, optimizer=opt) as watch:
            for i in range(steps):
                y = torch.randint(0, 10, (64,), generator=g)
                x = protos[y] + 0.5 * torch.randn(64, 784, generator=g)
                before = [p.detach().clone() for p in (model[0].weight, model[2].weight)]
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                watch.note_loss(loss)
                opt.step()
                losses.append(loss.item())
                ratios.append([((p.detach() - b).norm() / b.norm()).item()
                               for p, b in zip((model[0].weight, model[2].weight), before)])
    return watch, ratios, losses


def test_an_adaptive_optimizers_first_large_update_in_a_run_that_trains_is_a_note():
    watch, ratios, losses = _run(lambda p: torch.optim.Adagrad(p, lr=0.05))
    # plain torch: the first update is larger than the weights, the later ones are not
    assert min(ratios[0]) > 1 and max(max(r) for r in ratios[10:]) < 0.5
    assert sum(losses[-5:]) < 0.25 * sum(losses[:5])
    assert "divergence" not in [f.kind for f in watch.diagnose()]
    (note,) = [f for f in watch.notes() if f.kind == "divergence"]
    assert note.first_step == 0 and "loss fell" in note.note
    assert watch.history[0].layers["0"].status == "diverging"  # the step itself keeps it


def test_large_updates_without_a_falling_loss_stay_an_alarm():
    watch, ratios, losses = _run(lambda p: torch.optim.SGD(p, lr=50.0), steps=30)
    assert max(max(r) for r in ratios) > 1
    kinds = [f.kind for f in watch.diagnose()]
    assert "divergence" in kinds
    assert "divergence" not in [f.kind for f in watch.notes()]
