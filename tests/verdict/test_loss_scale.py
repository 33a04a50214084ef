"""Verdicts that read the loss: a gradient norm that is large only because the loss is (a loss
multiplied by a constant, regression targets in the hundreds) is a note while the loss falls,
and dead units are harmless only if the loss fell while they were dead. Each case is checked
with plain torch first."""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from gradwatch import GradWatch


def _classify(scale: float, steps: int = 150):
    """Adam on a 3-layer MLP with the loss multiplied by ``scale`` (eps with it: Adam's steps do
    not depend on the loss's scale); the final weights and the watch."""
    torch.manual_seed(0)
    x = torch.randn(512, 20)
    y = (x[:, :4].argmax(1) + (x[:, 4] > 1).long()) % 4
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 4))
    opt = torch.optim.Adam(model.parameters(), 1e-3, eps=1e-8 * scale)
    with GradWatch(model, optimizer=opt) as watch:
        for i in range(steps):
            idx = torch.arange(i * 64, (i + 1) * 64) % 512
            opt.zero_grad()
            loss = F.cross_entropy(model(x[idx]), y[idx]) * scale
            loss.backward()
            watch.note_loss(loss)
            opt.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()]), watch


def test_a_loss_times_a_constant_is_no_explosion_alarm():
    plain, w1 = _classify(1.0)
    scaled, w6 = _classify(1e6)
    assert torch.allclose(plain, scaled, rtol=1e-4, atol=1e-6)  # plain torch: the same run
    assert w6.history[-1].total_norm > 1e4  # above the absolute bound, times the loss below
    assert w1.diagnose() == [] and w6.diagnose() == []
    assert [f.kind for f in w1.notes()] == [] and [f.kind for f in w6.notes()] == ["exploding"]
    assert "large scale" in w6.notes()[0].cause and w6.notes()[0].remedies == ()


def test_regression_on_targets_in_the_hundreds_is_no_explosion_alarm():
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = 300 + 40 * x[:, :1]
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), 1e-1)
    with GradWatch(model, optimizer=opt) as watch:
        for _ in range(200):
            opt.zero_grad()
            loss = F.mse_loss(model(x), y, reduction="sum")
            loss.backward()
            watch.note_loss(loss)
            opt.step()
    first, last = watch.history[0], watch.history[-1]
    assert first.total_norm > 1e5 and last.loss < first.loss / 50  # it learned
    assert watch.diagnose() == []


@pytest.mark.parametrize("losses, alarm", [
    ([10.0 * 0.7 ** k for k in range(12)], False),  # falling: a note
    ([1.0] * 12, True),  # flat
    ([None] * 12, True),  # not given
    ([10.0 * 0.7 ** k for k in range(11)] + [20.0], True)])  # falling, then a step above the start
def test_an_absolute_bound_hit_is_a_note_only_while_the_loss_falls(losses, alarm):
    """Gradients of total norm 1e5, above `Thresholds.exploding` = 1e4, on every step."""
    net = nn.Sequential(nn.Linear(5, 5), nn.Linear(5, 5))
    watch = GradWatch(net, activations=False)
    for loss in losses:
        for p in net.parameters():
            p.grad = torch.full_like(p, 1e5 / 60 ** 0.5)  # 60 entries: total norm 1e5
        rec = watch.step(loss=loss)
    assert rec.total_norm == pytest.approx(1e5, rel=1e-6)
    assert [f.kind for f in watch.diagnose()] == (["exploding"] if alarm else [])
    assert [f.kind for f in watch.notes()] == ([] if alarm else ["exploding"])


def _dead_run(lr: float, seed: int, steps: int = 150):
    """Pixel-like inputs left at 0..255 (not normalised) into a ReLU MLP: the first loss is
    inflated, and a large enough step kills most first-layer units."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(10, 196, generator=g)
    y = torch.randint(0, 10, (2048,), generator=g)
    x = (protos[y] + 0.3 * torch.rand(2048, 196, generator=g)).clamp(0, 1) * 255
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(196, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(),
                          nn.Linear(32, 10))
    opt = torch.optim.SGD(model.parameters(), lr)
    with _quiet(), GradWatch(model, optimizer=opt) as w:
        for i in range(steps):
            idx = torch.arange(i * 64, (i + 1) * 64) % 2048
            opt.zero_grad()
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            w.note_loss(loss)
            opt.step()
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
        dead = (torch.relu(model[0](x)).sum(0) == 0).float().mean().item()
    return w, accuracy, dead


@contextlib.contextmanager
def _quiet():
    """The non-finite and divergence warnings of a dying run are not what is tested here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def test_dead_units_after_the_loss_reached_chance_are_no_note():
    """The loss fell from its inflated first value to chance level (ln 10) and the net died on
    the way: most first-layer units fire on no input, accuracy is at chance. Units that died
    while the loss did not fall further are not harmless."""
    w, accuracy, dead = _dead_run(0.005, seed=0)
    assert accuracy < 0.15 and dead > 0.8  # plain torch: a dead net at chance
    assert "dead_units" in [f.kind for f in w.diagnose()]
    assert "dead_units" not in [f.kind for f in w.notes()]


def test_dead_units_while_the_net_learns_stay_a_note():
    w, accuracy, dead = _dead_run(0.002, seed=1)
    assert accuracy > 0.95 and 0.2 < dead < 0.6  # plain torch: it learned with them
    assert w.diagnose() == []
    (note,) = w.notes()
    assert note.kind == "dead_units" and "when dead units were first seen" in note.note
