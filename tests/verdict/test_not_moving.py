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


def _nth_measured(n: int) -> int:
    """The recorded step of the n-th measured update ratio (every=1): the first 4 recorded
    steps, then every 4th."""
    steps = [s for s in range(100) if s < UNIT_EVERY or s % UNIT_EVERY == 0]
    return steps[n - 1]


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
    assert f.first_step == _nth_measured(bound) == 16  # the 8th measured update ratio
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
        assert note.first_step == _nth_measured(Thresholds().not_moving) == 16 \
            and "delayed warm-up" in note.note


class _Factorisation(nn.Module):
    """Two embedding tables only (a matrix-factorisation recommender): a batch moves the rows
    it looks up, which the update ratio's fixed sample of each table does not read."""

    def __init__(self, sparse: bool) -> None:
        super().__init__()
        self.user = nn.Embedding(20_000, 16, sparse=sparse)
        self.item = nn.Embedding(10_000, 16, sparse=sparse)
        nn.init.normal_(self.user.weight, std=0.1)
        nn.init.normal_(self.item.weight, std=0.1)

    def forward(self, u, i):
        return (self.user(u) * self.item(i)).sum(-1)


@pytest.mark.parametrize("sparse,make", [
    (False, lambda p: torch.optim.SGD(p, lr=10.0)),
    (True, lambda p: torch.optim.SparseAdam(list(p), lr=0.05)),
])
def test_tables_that_move_where_the_sample_does_not_look_are_not_called_still(sparse, make):
    """The tables move at every step (plain torch: ‖ΔW‖/‖W‖ > 0), but no sampled entry has a
    gradient: their update ratio is not measured (None), not 0, and `not_moving` stays quiet."""
    torch.manual_seed(1)
    model = _Factorisation(sparse)
    opt = make(model.parameters())
    pool_u, pool_i = torch.randint(0, 20_000, (300,)), torch.randint(0, 10_000, (300,))
    target = torch.randn(300)
    moved = []
    with GradWatch(model, optimizer=opt) as watch:
        for step in range(8 * UNIT_EVERY + 1):
            k = torch.randint(0, 300, (64,))
            opt.zero_grad()
            loss = F.mse_loss(model(pool_u[k], pool_i[k]), target[k])
            loss.backward()
            watch.note_loss(loss)
            before = model.user.weight.detach().clone()
            opt.step()
            moved.append(not torch.equal(before, model.user.weight))
        findings = [f.kind for f in watch.diagnose()] + [f.kind for f in watch.notes()]
    assert all(moved)
    measured = [r.step for r in watch.history if r.step % UNIT_EVERY == 0]
    assert len(measured) >= 8
    for r in watch.history:
        assert r.layers["user"].values.get("update_ratio") is None
    assert "not_moving" not in findings


def test_a_table_whose_sampled_rows_are_looked_up_still_shows_lr_0():
    """The same tables at a learning rate of 0, with batches that look up the sampled rows
    (row 0 is in the sample): the ratio is a measured 0 and `not_moving` is found."""
    torch.manual_seed(1)
    model = _Factorisation(False)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with GradWatch(model, optimizer=opt) as watch:
        for step in range(12 * UNIT_EVERY + 1):
            u, i = torch.randint(0, 4, (64,)), torch.randint(0, 4, (64,))
            opt.zero_grad()
            F.mse_loss(model(u, i), torch.randn(64)).backward()
            opt.step()
        found = [f.kind for f in watch.diagnose()]
    assert watch.history[0].layers["user"].values["update_ratio"] == 0.0
    assert "not_moving" in found


def test_a_layer_whose_gradient_is_0_everywhere_keeps_a_measured_0():
    """A bias-free layer fed zeros gets a gradient of exact zeros (4096 entries, sampled): SGD
    leaves it where it was, and its ratio is a measured 0, not 'not measured'."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64, bias=False),
                          nn.Linear(64, 3))
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.fill_(-1.0)  # the ReLU gives zeros: layer 2 sees only zeros
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with GradWatch(model, optimizer=opt) as watch:
        for _ in range(2):
            opt.zero_grad()
            F.cross_entropy(model(torch.randn(16, 8)), torch.randint(0, 3, (16,))).backward()
            assert not model[2].weight.grad.any()
            opt.step()
    assert watch.history[0].layers["2"].values["update_ratio"] == 0.0
    assert watch.history[0].layers["3"].values["update_ratio"] > 0
