"""Rule logic on hand-made step views (pure functions: no model), and the one fact a rule needs
from the forward pass (which layers ran more than once) learnt from a real model."""

from __future__ import annotations

import statistics

import pytest
import torch
from torch import nn

from gradwatch import GradWatch
from gradwatch.verdict.judge import Judge
from gradwatch.verdict.rules import StepView, depth_trend
from gradwatch.verdict.thresholds import Thresholds


def _view(step: int, norms: list[float], *, shared: list[bool] | None = None,
          values: list[dict] | None = None) -> StepView:
    n = len(norms)
    return StepView(step=step, names=[f"l{i}" for i in range(n)], roles=["weight"] * n,
                    norms=norms, act=[None] * n, values=values or [{} for _ in range(n)],
                    head=n - 1, total=sum(v * v for v in norms) ** 0.5, shared=shared or [])


def test_depth_trend_leaves_out_layers_shared_across_depth():
    """A module applied at several depths (ALBERT's one shared layer) has no single depth: its
    gradient sums over all of them. Left in, two small shared projections make the input side
    of this net look vanishing; left out, the trend is the other five layers'."""
    norms = [1e-6, 2e-6, 0.5, 1.0, 2.0, 1.5, 1.0]
    shared = [True, True, False, False, False, False, False]
    (what, vanish, median, idx, _), *_ = depth_trend(_view(0, norms))
    assert what == "gradient" and list(idx) == list(range(7))
    ref = statistics.median(norms[-2:])  # k = 7 // 3
    assert vanish == max(norms[:2]) / ref and median == statistics.median(norms[:2]) / ref
    (_, vanish, median, idx, rel), *_ = depth_trend(_view(0, norms, shared=shared))
    assert list(idx) == [2, 3, 4, 5, 6] and vanish == median == 0.5 / 1.0  # k = 5 // 3 = 1
    assert list(rel) == [v / 1.0 for v in norms[2:]]


def _vanishing(norms: list[float], steps: int = 5) -> bool:
    judge = Judge(Thresholds())
    for step in range(steps):
        judge.judge(_view(step, norms))
    return any(f.kind == "vanishing" for f in judge.diagnose())


def test_vanishing_needs_the_whole_input_side_starved_not_its_typical_layer():
    """Layers small by design sit beside big ones at the same depth: in ConvBERT's forward order
    the first third of the weight layers is an input projection, then the attention query/key
    projections and the span-based convolution that only feed attention logits (output
    gradients ~1e-6 to 1e-8 while attention is near uniform) and the value projection. Their
    median is 3.9e-4 of the output side's, the projection's 1.8: no vanishing. A chain whose
    every input-side layer is starved is."""
    convbert_like = [5.6e-3, 1.2e-6, 1.8e-4, 2.2e-8, 1.4e-7, 1.2e-6, 1.3e-5,  # input third
                     1.6e-4, 6e-3, 3.7e-4, 3.1e-3, 1.9e-6, 9.7e-5, 3.9e-8,
                     2.4e-7, 1.6e-6, 1.1e-5, 8.6e-5, 3.1e-3, 3.5e-4, 3.1e-3, 2e-2, 0.22]
    (_, vanish, median, _, _), = depth_trend(_view(0, convbert_like))
    assert median < Thresholds().relative_vanishing < vanish
    assert not _vanishing(convbert_like)
    chain = [1e-9 * 10 ** i for i in range(10)]  # a gradient shrinking 10x per layer
    assert depth_trend(_view(0, chain))[0].starved < Thresholds().relative_vanishing
    assert _vanishing(chain)


def _dead_finding(shares: list[float]) -> bool:
    judge = Judge(Thresholds())
    for step, share in enumerate(shares):
        judge.judge(_view(step, [1.0, 1.0, 1.0], values=[{"dead_frac": share}, {}, {}]))
    return any(f.kind == "dead_units" for f in judge.diagnose())


def test_dead_units_hold_while_units_stay_dead_not_when_they_come_back():
    """Dying is absorbing (a dead unit gets no gradient): a share (already over the capture's
    window of measured steps) that stays or grows is a finding after `persistence` measured
    steps; one that fell by a quarter or more within the window (units came back) is not, even
    above the bound."""
    assert _dead_finding([1.0, 1.0, 1.0, 1.0])
    assert _dead_finding([0.6, 0.7, 0.8, 0.9])
    assert _dead_finding([0.8, 0.7, 0.65, 0.62])  # within a quarter of the window's worst
    assert not _dead_finding([0.6, 0.7, 0.8])  # not yet persistent
    assert not _dead_finding([1.0, 0.5, 0.5, 0.5])  # a test_nfnet squeeze-excitation fc1
    assert not _dead_finding([0.4, 0.45, 0.3, 0.49])  # below the bound
    # the memory is the window: a fall older than `window` measured steps no longer vetoes
    assert not _dead_finding([1.0] + [0.6] * 7) and _dead_finding([1.0] + [0.6] * 8)


class _SharedBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp, self.block, self.head = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x))
        for _ in range(3):  # one layer applied at three depths
            h = torch.tanh(self.block(h))
        return self.head(h)


def test_a_module_run_at_several_depths_is_known_as_shared():
    torch.manual_seed(0)
    model = _SharedBlock()
    with GradWatch(model) as watch:
        model(torch.randn(5, 4)).sum().backward()
        rec = watch.step()
        forward = watch._watched.forward
        names = [watch._watched.layers[i].name for i in forward.repeated]
    assert names == ["block"]
    assert rec.layers["block"].norm == pytest.approx(torch.linalg.vector_norm(
        torch.cat([p.grad.reshape(-1) for p in model.block.parameters()])).item(), rel=1e-6)


def test_remedy_plans_keep_what_goes_together():
    """A deep sigmoid net's vanishing finding names "ReLU with He init" as one plan, and its
    flat codes are every plan's codes once; the plans survive to_dict/from_dict."""
    from gradwatch.verdict.diagnosis import format_findings
    from gradwatch.record.records import Finding

    torch.manual_seed(0)
    layers = []
    for _ in range(12):
        layers += [nn.Linear(16, 16), nn.Sigmoid()]
    net = nn.Sequential(*layers, nn.Linear(16, 2))
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Linear):
                m.weight.normal_(0, 0.1)
    watch = GradWatch(net)
    for _ in range(6):
        net.zero_grad()
        nn.functional.cross_entropy(net(torch.randn(8, 16)), torch.randint(0, 2, (8,))).backward()
        watch.step()
    (found,) = watch.diagnose()
    assert found.kind == "vanishing"
    assert found.plans == (("relu", "he_init"), ("normalization",), ("residual",))
    assert found.remedies == ("relu", "he_init", "normalization", "residual")
    assert Finding.from_dict(found.to_dict()) == found
    assert "[relu+he_init, normalization, residual]" in format_findings([found])
    old = {k: v for k, v in found.to_dict().items() if k != "plans"}  # a record from before
    assert Finding.from_dict(old).plans == tuple((c,) for c in found.remedies)


class _DroppedBranches(nn.Module):
    """Residual ReLU blocks whose branches are dropped on a fixed schedule (stochastic depth
    made deterministic): a dropped branch's layers get a gradient of exactly 0 at that step,
    while their units are alive."""

    def __init__(self, depth: int = 6) -> None:
        super().__init__()
        self.inp, self.head = nn.Linear(8, 32), nn.Linear(32, 3)
        self.fc1 = nn.ModuleList(nn.Linear(32, 32) for _ in range(depth))
        self.fc2 = nn.ModuleList(nn.Linear(32, 32) for _ in range(depth))
        self.acts = nn.ModuleList(nn.ReLU() for _ in range(depth))
        self.step = 0

    def forward(self, x):
        h = self.inp(x)
        for i, (a, act, b) in enumerate(zip(self.fc1, self.acts, self.fc2)):
            if (self.step + i) % 2:  # every block is dropped on every other step
                h = h + 0.0 * b(act(a(h)))
            else:
                h = h + b(act(a(h)))
        return self.head(h)


def test_layers_of_a_dropped_branch_are_not_dead_units():
    torch.manual_seed(0)
    model = _DroppedBranches()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 8, generator=g), torch.randint(0, 3, (32,), generator=g)
    fired = [torch.zeros(32, dtype=torch.bool) for _ in model.acts]
    def seen(k):
        def hook(module, args, out):
            fired[k] |= (out > 0).any(0)
        return hook

    hooks = [act.register_forward_hook(seen(k)) for k, act in enumerate(model.acts)]
    with GradWatch(model, optimizer=opt) as watch:
        for step in range(40):
            model.step = step
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            watch.note_loss(loss)
            opt.step()
    for h in hooks:
        h.remove()
    assert all(f.float().mean() > 0.9 for f in fired)  # plain torch: the units fire
    assert any(r.layers["fc1.0"].norm == 0 for r in watch.history)
    assert [f.kind for f in watch.diagnose() + watch.notes()] == []
