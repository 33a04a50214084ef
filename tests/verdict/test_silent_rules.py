"""Issue 24's rule-level silent bugs on built models, plain torch as the oracle: gradients that
are exactly 0 while gradient enters the model, a loss that climbs, layers beyond the user's
absolute bound, and vanishing behind skip connections."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from gradwatch import GradWatch
from gradwatch.bench.nets import IdentityChain
from gradwatch.record.records import Status
from gradwatch.verdict.thresholds import Thresholds


class _LoRA(nn.Module):
    def __init__(self, d_in: int, d_out: int, *, zero_a: bool) -> None:
        super().__init__()
        self.base = nn.Linear(d_in, d_out).requires_grad_(False)
        self.A, self.B = nn.Linear(d_in, 4, bias=False), nn.Linear(4, d_out, bias=False)
        nn.init.zeros_(self.B.weight)
        if zero_a:
            nn.init.zeros_(self.A.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.B(self.A(x))


def _adapted(zero_a: bool) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(_LoRA(16, 32, zero_a=zero_a), nn.Tanh(), _LoRA(32, 32, zero_a=zero_a),
                         nn.Tanh(), _LoRA(32, 4, zero_a=zero_a))


def _train_adapters(zero_a: bool, steps: int = 12):
    model = _adapted(zero_a)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    g = torch.Generator().manual_seed(1)
    grads = []
    with GradWatch(model, optimizer=opt) as watch:
        for _ in range(steps):
            x, y = torch.randn(8, 16, generator=g), torch.randint(0, 4, (8,), generator=g)
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            grads.append({n: float(torch.linalg.vector_norm(p.grad))
                          for n, p in model.named_parameters() if p.requires_grad})
            watch.note_loss(loss)
            opt.step()  # the watch records the step here
        return watch.diagnose(), watch.history[-1], grads


def test_adapters_with_both_factors_zero_get_exactly_zero_forever():
    """LoRA with A = B = 0: plain torch gives every adapter tensor a gradient of exactly 0 at
    every step (the head is one of them) while gradient reaches the frozen layers' outputs;
    the standard init (A random, B = 0) gives A exactly 0 at step 0 only and stays quiet."""
    found, rec, grads = _train_adapters(zero_a=True)
    assert all(v == 0.0 for step in grads for v in step.values())
    (zero,) = [f for f in found if f.kind == "zero_gradient"]
    assert set(zero.layers) == {f"{i}.{ab}" for i in (0, 2, 4) for ab in "AB"}
    assert "exactly 0" in zero.evidence and "A random, B = 0" in zero.remedy
    assert rec.layers["4.B"].act_norm > 0.05  # the gradient enters the model
    assert rec.layers["4.B"].status is Status.DEAD
    found, _, grads = _train_adapters(zero_a=False)
    assert grads[0]["0.A.weight"] == 0.0 and all(s["0.A.weight"] > 0 for s in grads[1:])
    assert found == []


def test_zero_gradient_leaves_relu_zeros_and_a_converged_net_alone():
    """A ReLU MLP's exact-zero entries are no whole layer at 0; a net fed a zero loss gets no
    gradient anywhere (nothing enters: no verdict)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                        nn.Linear(32, 3))
    with GradWatch(net) as watch:
        for _ in range(8):
            net.zero_grad()
            out = net(torch.randn(16, 8))
            assert (net[0].weight.grad is None)
            (F.cross_entropy(out, torch.randint(0, 3, (16,)))).backward()
            assert float((net[2].weight.grad == 0).float().mean()) > 0  # zero entries
            watch.step()
        assert not watch.diagnose()
        for _ in range(8):
            net.zero_grad()
            (net(torch.randn(16, 8)) * 0.0).sum().backward()
            watch.step()
        assert not any(f.kind == "zero_gradient" for f in watch.diagnose())


def _sgd_run(*, zero_grad: bool, steps: int = 30):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(20, 5, generator=g)
    losses = []
    with GradWatch(net, optimizer=opt) as watch:
        for _ in range(steps):
            x = torch.randn(32, 20, generator=g)
            if zero_grad:
                opt.zero_grad()
            loss = F.cross_entropy(net(x), (x @ w).argmax(1))
            loss.backward()
            watch.note_loss(loss)
            opt.step()
            losses.append(float(loss))
        return watch.diagnose(), losses


def test_a_forgotten_zero_grad_makes_the_loss_climb_and_it_is_named():
    """Without zero_grad() the gradient accumulates and momentum amplifies it: the loss
    ends far above where it started (plain losses), and loss_rising says so with the gradient
    evidence; the same loop with zero_grad() learns and is quiet."""
    found, losses = _sgd_run(zero_grad=False)
    assert sorted(losses[-5:])[2] >= 1.5 * sorted(losses[:5])[2]
    rising = [f for f in found if f.kind == "loss_rising"]
    assert rising and "total gradient norm" in rising[0].evidence
    assert "zero_grad" in rising[0].remedies
    found, losses = _sgd_run(zero_grad=True)
    assert sum(losses[-5:]) < sum(losses[:5]) and found == []


def test_noisy_and_scheduled_losses_are_not_rising():
    """Minibatch noise and a cyclic learning rate move the loss up and down, never to 1.5x the
    start's median; a negative loss has no ratio."""
    from gradwatch.verdict.judge import Judge
    from gradwatch.verdict.rules import StepView

    def verdicts(losses):
        judge = Judge(Thresholds())
        for step, loss in enumerate(losses):
            judge.judge(StepView(step, ["a", "b", "c"], ["weight"] * 3, [1.0] * 3, [None] * 3,
                                 [{}] * 3, 2, 1.7, loss=loss))
        return [f.kind for f in judge.diagnose()]
    g = torch.Generator().manual_seed(0)
    noisy = (2.3 * torch.exp(-torch.arange(60) / 20) + 0.8 * torch.rand(60, generator=g)).tolist()
    cyclic = [2.0 + 0.8 * ((t % 10) / 5 - 1) ** 2 for t in range(60)]
    assert verdicts(noisy) == [] and verdicts(cyclic) == []
    assert verdicts([2.0] * 5 + [3.2] * 6) == ["loss_rising"]
    assert verdicts([-2.0] * 5 + [-0.5] * 6) == []


@pytest.mark.parametrize("c, th, status", [(2.0, Thresholds(exploding=1e3), Status.EXPLODING),
                                           (0.5, Thresholds(vanishing=1e-7), Status.VANISHING)])
def test_every_layer_past_the_users_absolute_bound_carries_the_status(c, th, status):
    """The bench's seed-001 chain, 100 linear layers W = c I: every layer's gradient is
    c^99 * 4 in plain torch (2.5e30, 6.3e-30), beyond the bound the user set, so every layer
    carries the status, not only the input-side evidence layers of the depth trend."""
    model = IdentityChain(100, width=4, c=c)
    with GradWatch(model, activations=True, thresholds=th) as watch:
        for _ in range(5):
            model.zero_grad()
            model(torch.ones(1, 4)).sum().backward()
            rec = watch.step()
    norms = [float(torch.linalg.vector_norm(m.weight.grad.double())) for m in model.layers]
    assert norms == pytest.approx([4 * c ** 99] * 100, rel=1e-5)
    assert all(n > th.exploding for n in norms) or all(n < th.vanishing for n in norms)
    assert [s.status for s in rec.layers.values()] == [status] * 100
    (found,) = watch.diagnose()
    assert len(found.layers) == 100


def test_vanishing_behind_skip_connections_is_seen_at_the_first_layer():
    """A resnet18 with sigmoid for every ReLU and no batch norm: each residual sum passes a
    sigmoid, so the skips do not carry the gradient. In plain autograd the gradient reaching
    the first conv's output is orders below the logits' (< 1e-3), while the input third's
    largest layer norm (a layer the skips feed) stays above that bound; the vanishing finding
    names the first layer."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=10, norm_layer=nn.Identity)
    for m in list(net.modules()):
        for name, child in list(m.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(m, name, nn.Sigmoid())
    g = torch.Generator().manual_seed(0)
    kept = {}

    def keep(name):
        def hook(_m, _i, out):
            out.register_hook(lambda gr: kept.__setitem__(name, float(gr.norm())))
        return hook
    net.conv1.register_forward_hook(keep("first"))
    net.fc.register_forward_hook(keep("logits"))
    with GradWatch(net) as watch:
        for _ in range(6):
            net.zero_grad()
            x, y = torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 10, (4,), generator=g)
            F.cross_entropy(net(x), y).backward()
            watch.step()
    assert kept["first"] / kept["logits"] < 1e-3
    rec = watch.history[-1]
    assert rec.layers["conv1"].act_norm == pytest.approx(kept["first"], rel=1e-4)
    (found,) = [f for f in watch.diagnose() if f.kind == "vanishing"]
    assert "conv1" in found.layers and "first layer" in found.evidence


class _AuxNet(nn.Module):
    """A trunk and head, and an auxiliary head used only when ``aux`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.head, self.aux = nn.Linear(8, 16), nn.Linear(16, 2), nn.Linear(16, 2)
        self.use_aux = False

    def forward(self, x):
        h = torch.tanh(self.l1(x))
        out = self.head(h)
        return out + self.aux(h) if self.use_aux else out


@pytest.mark.parametrize("zero_weights", [False, True])
def test_a_layer_used_only_on_unrecorded_steps_is_no_zero_gradient(zero_weights):
    """``zero_grad(set_to_none=False)`` leaves the auxiliary head a .grad of exactly 0 on the
    steps it does not run: no backward pass added to it (plain torch: its weight's gradient is
    0 and untouched there). With every=2 and the head used on odd steps only, every recorded
    step saw that left-over 0: a false zero_gradient and status dead. A trunk that does run
    and gets exactly 0 through a zeroed head is still named."""
    torch.manual_seed(0)
    net = _AuxNet()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(0)
    with GradWatch(net, optimizer=opt, every=2) as watch:
        for step in range(24):
            net.use_aux = step % 2 == 1
            opt.zero_grad(set_to_none=False)
            x = torch.randn(16, 8, generator=g)
            F.cross_entropy(net(x), torch.randint(0, 2, (16,), generator=g)).backward()
            if step >= 2 and not net.use_aux:  # plain torch: a 0 nobody added to
                assert float(net.aux.weight.grad.abs().max()) == 0.0
            opt.step()
        assert watch.diagnose() == []
        assert all(rec.layers["aux"].status is Status.OK for rec in watch.history
                   if "aux" in rec.layers)
    if zero_weights:  # the trunk's weights at 0 and tanh: l1 gets exactly 0 on every step
        torch.manual_seed(0)
        net = _AuxNet()
        with torch.no_grad():
            net.head.weight.zero_()
            net.aux.weight.zero_()
        opt = torch.optim.SGD(net.l1.parameters(), lr=0.05)
        with GradWatch(net, optimizer=opt, every=2) as watch:
            for step in range(24):
                net.use_aux = step % 2 == 1
                opt.zero_grad(set_to_none=False)
                x = torch.randn(16, 8, generator=g)
                net(x).square().mean().backward()
                opt.step()
            found = [f for f in watch.diagnose() if f.kind == "zero_gradient"]
            assert found and found[0].layers == ("l1",)


def test_a_rise_the_loss_fell_back_from_becomes_a_note():
    """A fine-tune starts at a small loss; its warm-up lifts it 2.4x, then it ends far below
    its start: an alarm while it is up, a note once it is back under loss_falling x the start
    (it stayed an alarm to the end). A loss that stays up stays an alarm."""
    from gradwatch.verdict.judge import Judge
    from gradwatch.verdict.rules import StepView

    def judge_of(losses):
        judge = Judge(Thresholds())
        for step, loss in enumerate(losses):
            judge.judge(StepView(step, ["a", "b", "c"], ["weight"] * 3, [1.0] * 3, [None] * 3,
                                 [{}] * 3, 2, 1.7, loss=loss))
        return judge

    rise = [0.012] * 5 + [0.028] * 10
    (alarm,) = judge_of(rise).diagnose()
    assert alarm.kind == "loss_rising"
    judge = judge_of(rise + [0.003] * 10)
    assert judge.diagnose() == []
    (note,) = judge.diagnose(notes=True)
    assert note.kind == "loss_rising" and note.first_step == alarm.first_step
    assert "fell back" in note.evidence and note.steps > alarm.steps
    assert [f.kind for f in judge_of(rise + [0.011] * 10).diagnose()] == ["loss_rising"]


def test_vanishing_through_time_is_a_note_while_the_loss_falls():
    """A GRU read at its last state over 40 steps: the gradient reaching the first step is
    below 1e-6 of the last from initialisation on (plain torch), yet the task (the last token)
    needs no long memory and the loss falls: a note. The same net on a task it cannot learn
    (the first token) keeps the alarm."""
    def run(label_at):
        torch.manual_seed(0)
        emb, rnn, head = nn.Embedding(10, 16), nn.GRU(16, 32, batch_first=True), nn.Linear(32, 10)
        model = nn.ModuleDict({"emb": emb, "rnn": rnn, "head": head})
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        g = torch.Generator().manual_seed(0)
        with GradWatch(model, optimizer=opt) as watch:
            for _ in range(40):
                x = torch.randint(0, 10, (32, 40), generator=g)
                opt.zero_grad()
                loss = F.cross_entropy(head(rnn(emb(x))[0][:, -1]), x[:, label_at])
                loss.backward()
                watch.note_loss(loss)
                opt.step()
            return watch.diagnose(), watch.notes(), watch.history[-1]
    found, notes, rec = run(-1)
    assert rec.layers["rnn"].values.get("time_ratio", 1.0) < 1e-6 or any(
        n.kind == "vanishing_through_time" for n in notes)
    assert not any(f.kind == "vanishing_through_time" for f in found)
    assert [n.kind for n in notes] == ["vanishing_through_time"]
    found, notes, _ = run(0)
    assert "vanishing_through_time" in [f.kind for f in found]


def test_a_step_past_the_exploding_bound_is_no_vanishing_one():
    """On the way to a NaN the input side got 1e-10 of the output side's gradient while the
    total was 5e29 (the probe's MNIST MLP at lr 2): it is exploding, not vanishing (both were
    reported). The same depth profile at a total of ~1 is a vanishing one."""
    from gradwatch.verdict.judge import Judge
    from gradwatch.verdict.rules import StepView

    def kinds(scale):
        judge = Judge(Thresholds())
        norms = [1e-10 * scale] * 2 + [1e-5 * scale] * 2 + [scale] * 2
        for step in range(8):
            judge.judge(StepView(step, list("abcdef"), ["weight"] * 6, norms, [None] * 6,
                                 [{}] * 6, 5, float(np.linalg.norm(norms))))
        return [f.kind for f in judge.diagnose()]
    assert kinds(1.0) == ["vanishing"]
    assert "vanishing" not in kinds(5e29)


def test_gradients_erased_after_backward_are_named_as_such():
    """``clip_grad_norm_(max_norm=0)`` zeroes every gradient after the backward pass that
    filled them: every layer's gradient is exactly 0 while its output got one. The cause and
    the remedy name erasure between backward and the step, not zero-initialised factors (there
    are none in this net; a factor of a zero product, LoRA's A, gets no output gradient)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
    with GradWatch(model, optimizer=opt) as watch:
        for _ in range(10):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.0)
            assert all(p.grad.abs().max() == 0 for p in model.parameters())  # plain torch
            watch.note_loss(loss)
            opt.step()
    (f,) = watch.diagnose()
    assert f.kind == "zero_gradient" and f.layers == ("0", "2")
    assert "erased between loss.backward() and optimizer.step()" in f.cause
    assert f.remedies == ("zero_grad",) and "max_norm=0" in f.remedy
    assert watch.history[-1].layers["2"].act_norm > 0  # the output gradient was not 0
    summary = watch.summary()  # the status is "dead", not "dead units" (a tanh net has none)
    assert "dead units" not in summary and "    dead " in summary
