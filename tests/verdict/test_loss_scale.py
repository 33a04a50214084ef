"""Verdicts and the loss: a gradient norm that is large only because the loss is (a loss
multiplied by a constant) is named as a possible cause of `exploding`, and dead units are
harmless only if the loss fell while they were dead. Each case is checked with plain torch
first."""

from __future__ import annotations

import contextlib
import warnings

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


def test_an_absolute_exploding_hit_names_a_loss_on_a_large_scale_as_a_cause():
    """The absolute bound cannot tell a loss x 1e6 (the same Adam run, every gradient 1e6 times
    larger) from an explosion, and a falling loss does not either (a ReLU RNN of spectral
    radius 3 explodes while its loss falls): the finding stays, and its cause and remedy name
    the loss's scale, with a mean-reduced loss instead of clipping."""
    plain, w1 = _classify(1.0)
    scaled, w6 = _classify(1e6)
    assert torch.allclose(plain, scaled, rtol=1e-4, atol=1e-6)  # plain torch: the same run
    assert w1.diagnose() == [] and w6.history[-1].total_norm > 1e4
    (f,) = w6.diagnose()
    assert f.kind == "exploding" and "> exploding 10000" in f.evidence
    assert "a loss on a large scale" in f.cause and "mean-reduced loss" in f.remedy


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
