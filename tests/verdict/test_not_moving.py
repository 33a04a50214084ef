"""Weights the optimizer never moves (`not_moving`): a learning rate of 0, and a LambdaLR
factor of 0, each confirmed with plain torch (the weights after training are the ones before);
a backbone frozen by a param group at lr 0 beside a head that trains, and the end of a schedule
after the weights moved (a note), stay quiet."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from gradwatch import GradWatch, Thresholds
from gradwatch.capture.units import UNIT_EVERY


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                         nn.Linear(32, 3))


def _train(model, opt, steps, *, lr_at=None, **watch_kw):
    g = torch.Generator().manual_seed(0)
    before = [p.detach().clone() for p in model.parameters()]
    with GradWatch(model, optimizer=opt, **watch_kw) as watch:
        for step in range(steps):
            if lr_at is not None:
                for group in opt.param_groups:
                    group["lr"] = lr_at(step)
            x, y = torch.randn(16, 8, generator=g), torch.randint(0, 3, (16,), generator=g)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        found = {f.kind: f for f in watch.diagnose()}
        notes = {f.kind: f for f in watch.notes()}
    moved = [not torch.equal(b, p) for b, p in zip(before, model.parameters())]
    return found, notes, moved


@pytest.mark.parametrize("make", [
    lambda m: torch.optim.Adam(m.parameters(), lr=0.0),
    lambda m: torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD(m.parameters(), lr=0.1),
                                                lambda step: step // 1000).optimizer,
], ids=["adam_lr0", "lambdalr_integer_division"])
def test_an_optimizer_that_moves_no_weight_is_named(make):
    model = _model()
    found, _, moved = _train(model, make(model), steps=40)
    assert not any(moved)  # plain torch: every weight is the one it started with
    bound = Thresholds().not_moving
    f = found["not_moving"]
    assert f.first_step == (bound - 1) * UNIT_EVERY == 28  # the 8th measured update ratio
    assert f.layers == ("0", "2", "4") and f.remedies == ("check_lr", "fp32_weights")
    assert f"on {bound} measured steps in a row" in f.evidence and "lr" in f.remedy
    assert list(found) == ["not_moving"]


def test_a_backbone_frozen_by_a_zero_lr_group_stays_quiet():
    model = _model()
    opt = torch.optim.Adam([{"params": model[0].parameters(), "lr": 0.0},
                            {"params": [*model[2].parameters(), *model[4].parameters()]}],
                           lr=1e-3)
    found, notes, moved = _train(model, opt, steps=40)
    assert moved == [False, False, True, True, True, True]
    assert "not_moving" not in found and "not_moving" not in notes


def test_weights_that_moved_then_stop_are_a_note_and_a_bound_of_none_is_off():
    """lr 1e-2 for 12 steps, then 0 (a schedule's end): a note, not an alarm."""
    def lr_at(step):
        return 1e-2 if step < 12 else 0.0

    model = _model()
    found, notes, moved = _train(model, torch.optim.SGD(model.parameters()), 60, lr_at=lr_at)
    assert all(moved) and "not_moving" not in found
    note = notes["not_moving"]
    assert note.first_step == 12 + (Thresholds().not_moving - 1) * UNIT_EVERY == 40
    assert "moved earlier" in note.note
    model = _model()
    found, notes, _ = _train(model, torch.optim.Adam(model.parameters(), lr=0.0), 40,
                             thresholds=Thresholds(not_moving=None))
    assert "not_moving" not in found and "not_moving" not in notes
    with pytest.raises(ValueError, match="not_moving"):
        Thresholds(not_moving=0)


@pytest.mark.parametrize("hold, alarm", [(60, False), (300, True)])
def test_a_learning_rate_held_at_0_then_warmed_up_ends_as_a_note(hold, alarm):
    """lr 0 for the first ``hold`` steps, then a linear warm-up: the streak is an alarm while it
    lasts; once the weights move and the loss has fallen it becomes a note (the run trains).
    Held for the whole run, it stays an alarm."""
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.0 if s < hold else min(1.0, (s - hold + 1) / 50))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g)
    with GradWatch(model, optimizer=opt) as watch:
        for _ in range(300):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            watch.note_loss(loss)
            opt.step()
            sched.step()
    first, last = watch.history[0].loss, loss.item()
    assert (last < 0.5 * first) != alarm  # plain torch: it trained after the hold, or never
    assert [f.kind for f in watch.diagnose()] == (["not_moving"] if alarm else [])
    assert [f.kind for f in watch.notes()] == ([] if alarm else ["not_moving"])
    if not alarm:
        (note,) = watch.notes()
        assert note.first_step == 28 and "delayed warm-up" in note.note
