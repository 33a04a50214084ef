"""The loss the user passes (`GradWatch.step(loss=)`, `note_loss`): recorded as it is, and what
the rules read from it: a net stalled with no gradient (not a converged one), and a NaN loss
whose gradients stayed finite."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from gradwatch import GradWatch, JsonlLogger, StepRecord, Thresholds
from gradwatch.io.logschema import check_record_dict


def _saturated_net() -> nn.Sequential:
    """A small sigmoid MLP whose output sigmoid is pinned at 1 (output bias 40, float64)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 4), nn.Sigmoid(), nn.Linear(4, 4), nn.Sigmoid(),
                        nn.Linear(4, 1), nn.Sigmoid()).double()
    with torch.no_grad():
        net[4].bias.fill_(40.0)
    return net


def _train(target: float, *, steps: int = 6, pass_loss: bool = True,
           **kw) -> tuple[GradWatch, list[float]]:
    net = _saturated_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.randn(8, 2, dtype=torch.float64)
    t = torch.full((8, 1), target, dtype=torch.float64)
    watch, losses = GradWatch(net, **kw), []
    for _ in range(steps):
        opt.zero_grad()
        loss = 0.5 * ((net(x) - t) ** 2).sum()
        loss.backward()
        losses.append(loss.item())
        watch.step(loss=loss if pass_loss else None)
        opt.step()
    return watch, losses


def test_a_net_stalled_on_wrong_saturated_outputs_is_found_a_converged_one_is_not():
    stuck, losses = _train(0.0)  # target 0, output pinned at 1: loss 4, gradient exactly 0
    assert [r.loss for r in stuck.history] == pytest.approx(losses, rel=0, abs=0)
    assert losses[0] == pytest.approx(4.0) and all(r.total_norm == 0.0 for r in stuck.history)
    found = stuck.diagnose()
    assert [f.kind for f in found] == ["stalled"]
    assert found[0].layers == ("4",) and found[0].first_step == 3  # 4 of the 5-step window
    assert "logit_loss" in found[0].remedies
    assert stuck.history[-1].layers["4"].status.value == "vanishing"

    done, losses = _train(1.0)  # target 1: right and confident, loss ~0, gradient ~0 as well
    assert max(losses) < 1e-20 and done.diagnose() == []
    assert not any(r.flagged for r in done.history)

    blind, _ = _train(0.0, pass_loss=False)  # without the loss the two look alike
    assert blind.diagnose() == [] and all(r.loss is None for r in blind.history)


def test_a_net_watched_from_a_converged_start_is_not_stalled():
    """Its loss is tiny but its own highest: the gradient, of the loss's order, says converged."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(),
                        nn.Linear(4, 1)).double()
    x = torch.randn(16, 2, dtype=torch.float64)
    with torch.no_grad():
        t = net(x) + 1e-8  # targets the net meets to 1e-8
    watch = GradWatch(net)
    for _ in range(6):
        net.zero_grad()
        loss = ((net(x) - t) ** 2).mean()
        loss.backward()
        rec = watch.step(loss=loss)
    assert loss.item() < 1e-15 and 0 < rec.layers["4"].act_norm < 1e-7  # below `vanishing`
    assert watch.diagnose() == [] and not rec.flagged


def test_a_huge_loss_on_logits_with_an_order_one_gradient_is_not_stalled():
    """Cross-entropy on logits blown up to ~1e8 (an exploding net): the loss is huge, its
    gradient bounded (softmax minus one-hot), tiny next to the loss but no stall."""
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 3))
    with torch.no_grad():
        net[2].weight.mul_(1e9)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    watch = GradWatch(net, thresholds=Thresholds(relative_exploding=None, exploding=1e30))
    for _ in range(6):
        net.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        rec = watch.step(loss=loss)
    signal = rec.layers["2"].act_norm
    assert loss.item() > 1e7 and 1e-7 * loss.item() > signal > 1e-3
    assert "stalled" not in [f.kind for f in watch.diagnose()]


def test_a_loss_that_has_halved_is_not_stalled():
    """Same zero gradient, but the loss is below `stalled_loss` x its highest: not judged."""
    net = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 3), nn.Linear(3, 1))
    watch = GradWatch(net, activations=False)
    for loss in (2.0, 0.9, 0.9, 0.9, 0.9, 0.9):
        for p in net.parameters():
            p.grad = torch.zeros_like(p)
        watch.step(loss=loss)
    assert watch.diagnose() == []
    for _ in range(5):  # back up to the highest: now it is
        for p in net.parameters():
            p.grad = torch.zeros_like(p)
        watch.step(loss=1.5)
    assert [f.kind for f in watch.diagnose()] == ["stalled"]


def test_a_nan_loss_with_finite_gradients_is_reported_as_born_in_the_loss():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    watch = GradWatch(net)
    loss = nn.functional.cross_entropy(net(torch.randn(5, 4)), torch.full((5,), -100))
    loss.backward()  # every label ignored: a mean over nothing, gradients exactly 0
    assert math.isnan(loss.item()) and all(p.grad.abs().max() == 0 for p in net.parameters())
    with pytest.warns(RuntimeWarning, match="non-finite loss at step 0"):
        rec = watch.step(loss=loss)
    assert math.isnan(rec.loss) and rec.total_norm == 0.0 and not rec.nonfinite
    kinds = [f.kind for f in watch.diagnose()]
    assert kinds == ["nonfinite_loss"] and "every gradient is finite" in \
        watch.diagnose()[0].evidence


def test_note_loss_with_the_optimizer_and_the_loss_belongs_to_one_step(tmp_path):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    path = tmp_path / "run.jsonl"
    watch = GradWatch(net, optimizer=opt, loggers=[JsonlLogger(path)])
    x, y = torch.randn(6, 3), torch.randn(6, 2)
    want = []
    for k in range(3):
        opt.zero_grad()
        loss = ((net(x) - y) ** 2).mean()
        loss.backward()
        if k != 1:
            watch.note_loss(loss)
        want.append(loss.item() if k != 1 else None)
        opt.step()
    watch.close()
    got = [r.loss for r in watch.history]
    assert got[1] is None and got[0] == pytest.approx(want[0], rel=1e-7) \
        and got[2] == pytest.approx(want[2], rel=1e-7)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows = [r for r in rows if "step" in r]
    assert [r["loss"] for r in rows] == got and all(check_record_dict(r) is None for r in rows)
    assert StepRecord.from_dict(rows[0]).loss == got[0]


def test_a_deferred_record_carries_its_loss():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    watch = GradWatch(net, sync_records=False)
    losses = []
    for _ in range(3):
        net.zero_grad()
        loss = net(torch.randn(5, 3)).pow(2).mean()
        loss.backward()
        losses.append(loss.item())
        watch.step(loss=loss)
    assert [r.loss for r in watch.history] == pytest.approx(losses, rel=1e-7)


def test_unrecorded_steps_drop_their_loss():
    net = nn.Linear(2, 2)
    watch = GradWatch(net, every=2)
    for k in range(4):
        net.zero_grad()
        loss = net(torch.ones(1, 2)).sum()
        loss.backward()
        watch.step(loss=float(k) if k < 2 else np.float32(k))  # numpy scalars are numbers
    assert [(r.step, r.loss) for r in watch.history] == [(0, 0.0), (2, 2.0)]


@pytest.mark.parametrize("bad, error, words", [
    (torch.ones(3), ValueError, "shape \\(3,\\)"), ("0.5", TypeError, "got str"),
    (True, TypeError, "got bool"), (torch.ones(1, dtype=torch.complex64), TypeError, "complex")])
def test_a_bad_loss_is_refused_naming_it(bad, error, words):
    watch = GradWatch(nn.Linear(2, 2))
    with pytest.raises(error, match=f"`loss`.*{words}"):
        watch.note_loss(bad)
    watch.close()
    with pytest.raises(RuntimeError, match="after close"):
        watch.note_loss(1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        watch.close()


def test_the_highest_loss_survives_a_resume():
    """A resumed watch keeps the run's highest loss: a loss at a third of it is no stall."""
    net = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 3), nn.Linear(3, 1))

    def zero_grad_steps(watch: GradWatch, loss: float, n: int) -> None:
        for _ in range(n):
            for p in net.parameters():
                p.grad = torch.zeros_like(p)
            watch.step(loss=loss)

    first = GradWatch(net, activations=False)
    zero_grad_steps(first, 3.0, 1)
    state = first.state_dict()
    first.close()
    resumed, fresh = GradWatch(net, activations=False), GradWatch(net, activations=False)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    zero_grad_steps(resumed, 1.0, 5)
    zero_grad_steps(fresh, 1.0, 5)
    assert resumed.diagnose() == [] and [f.kind for f in fresh.diagnose()] == ["stalled"]


def test_a_converged_net_whose_loss_has_a_floor_is_not_stalled():
    """Label smoothing 0.7 over 4 classes: the loss cannot fall below 0.89x its start, and a
    memorised batch drives the head's gradient to float32's rounding floor (below 1e-7 from
    about step 480): converged, not stalled (the gradient is ~1e-7 of the loss, not ~0)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                        nn.Linear(32, 4))
    x, y = torch.randn(16, 8), torch.randint(0, 4, (16,))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    watch = GradWatch(net, optimizer=opt, every=10)
    for _ in range(700):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y, label_smoothing=0.7)
        loss.backward()
        watch.note_loss(loss)
        opt.step()
    last = watch.history[-5:]
    assert all(r.loss > 0.85 * watch.history[0].loss for r in last)
    assert all(0 < r.layers["4"].act_norm < 1e-7 for r in last)
    assert watch.diagnose() == []


def test_outputs_pinned_near_zero_are_stalled_though_their_gradient_is_not_exactly_zero():
    """Sigmoid outputs at sigmoid(-40) ~ 4e-18 (float32 keeps it), targets 1, squared error:
    the gradient underflows to ~1e-18, not 0, far below a converged net's rounding floor."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1))
    with torch.no_grad():
        net[4].bias.fill_(-40.0)
    watch = GradWatch(net)
    x = torch.randn(8, 4)
    for _ in range(6):
        net.zero_grad()
        loss = ((torch.sigmoid(net(x)) - 1.0) ** 2).mean()
        loss.backward()
        rec = watch.step(loss=loss)
    assert 0 < rec.layers["4"].act_norm < 1e-15 and loss.item() == pytest.approx(1.0)
    assert [f.kind for f in watch.diagnose()] == ["stalled"]


@pytest.mark.parametrize("activations", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_the_recorded_loss_is_the_loss_tensors_own_value(dtype, activations):
    """A float32 model's loss in another dtype is recorded exactly (read apart from the
    float32 norms, never rounded to their dtype), with or without activation hooks."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    watch = GradWatch(net, activations=activations)
    loss = net(torch.randn(5, 3)).pow(2).mean()
    loss.backward()
    value = (loss.detach().double() + 1 / 3).to(dtype)  # 1/3: not a float32 number in float64
    record = watch.step(loss=value)
    assert record.loss == value.item()
    expected = torch.linalg.vector_norm(torch.stack(
        [torch.linalg.vector_norm(p.grad) for p in net.parameters()])).item()
    assert record.total_norm == expected


def test_a_finite_loss_whose_backward_is_nan_is_not_called_a_nan_loss():
    """A focal loss (1 - p) ** 0.5 at p = 1: the loss value is finite, its slope infinite, so
    the gradient entering the model is NaN. The cause names the loss's backward, not a NaN
    loss (which this loss never is)."""
    net = nn.Sequential(nn.Linear(2, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[60.0, 0.0], [-60.0, 0.0]]))
        net[0].bias.zero_()
    watch = GradWatch(net)
    p = torch.softmax(net(torch.tensor([[2.0, 0.0]])), 1)[0, 0]
    loss = -(1 - p) ** 0.5 * torch.log(p)
    loss.backward()
    assert p.item() == 1.0 and math.isfinite(loss.item())  # plain torch: finite loss ...
    assert torch.isnan(net[0].weight.grad).all()  # ... NaN gradient
    with pytest.warns(RuntimeWarning, match="born in the loss"):
        watch.step(loss=loss)
    (f,) = watch.diagnose()
    assert f.kind == "nonfinite_loss" and "the loss is finite but the gradient" in f.cause
    assert "the loss is NaN" not in f.cause and "clamp_min" in f.remedy
