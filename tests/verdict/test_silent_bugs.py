"""The silent bugs: a part of the model no gradient reaches, and gradients never zeroed. Each
case is confirmed with plain torch first; the healthy variants next to them stay quiet."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from gradwatch import GradWatch, Thresholds


class _Net(nn.Module):
    """embed -> enc -> head; ``cut`` says how the forward pass treats the encoder's output."""

    def __init__(self, cut: str = "") -> None:
        super().__init__()
        self.embed, self.enc, self.head = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 3)
        self.unused = nn.Linear(16, 16)  # never called: not a bug gradwatch should name
        self.cut = cut

    def forward(self, x):
        if self.cut == "no_grad":
            with torch.no_grad():
                h = torch.relu(self.enc(torch.relu(self.embed(x))))
        else:
            h = torch.relu(self.enc(torch.relu(self.embed(x))))
            if self.cut == "detach":
                h = h.detach()
            elif self.cut == "data":
                h = h.data
        return self.head(h)


def _train(model, opt, *, steps=12, zero="before", accumulate=1, watch_kw=None):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 8, generator=g), torch.randint(0, 3, (32,), generator=g)
    with GradWatch(model, optimizer=opt, **(watch_kw or {})) as watch:
        for _ in range(steps):
            if zero == "before":
                opt.zero_grad()
            for _ in range(accumulate):
                out = model(x)
                if zero == "after_forward":
                    opt.zero_grad(set_to_none=False)
                loss = F.cross_entropy(out, y) / accumulate
                loss.backward()
            watch.note_loss(loss)
            opt.step()
    return watch


@pytest.mark.parametrize("cut", ["detach", "no_grad", "data"])
def test_a_detached_encoder_is_named(cut):
    model = _Net(cut)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    F.cross_entropy(model(torch.randn(4, 8)), torch.zeros(4, dtype=torch.long)).backward()
    assert model.embed.weight.grad is None and model.enc.weight.grad is None  # plain torch
    assert model.head.weight.grad is not None and model.embed.weight.requires_grad
    watch = _train(model, opt)
    found = {f.kind: f for f in watch.diagnose()}
    assert list(found) == ["no_gradient"]
    f = found["no_gradient"]
    assert f.layers == ("embed", "enc") and f.first_step == 4  # the 5th step in a row
    assert "detach()" in f.remedy and "`embed`" in f.evidence and f.remedies == ("reconnect",)


def test_frozen_unused_and_out_of_the_optimizer_layers_stay_quiet():
    frozen = _Net()
    for p in [*frozen.embed.parameters(), *frozen.enc.parameters()]:
        p.requires_grad_(False)
    assert _train(frozen, torch.optim.Adam(frozen.head.parameters(), lr=1e-2)).diagnose() == []
    outside = _Net("detach")  # the cut-off part is not stepped: frozen by the optimizer
    assert _train(outside, torch.optim.Adam(outside.head.parameters(), lr=1e-2)).diagnose() == []
    healthy = _Net()  # `unused` requires grad and is stepped but never runs
    watch = _train(healthy, torch.optim.Adam(healthy.parameters(), lr=1e-2))
    assert healthy.unused.weight.grad is None and watch.diagnose() == []


class _Pooled(nn.Module):
    """An encoder whose pooler runs after it but whose output the loss never reads (as a
    token-level head skips a BERT pooler): harmless, and not a cut."""

    def __init__(self) -> None:
        super().__init__()
        self.enc, self.pool, self.head = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 3)

    def forward(self, x):
        h = torch.relu(self.enc(x))
        self.pooled = torch.tanh(self.pool(h))  # computed, never used by the loss
        return self.head(h)


def test_a_module_whose_output_the_loss_does_not_read_is_a_note_not_an_alarm():
    """No finding and no status: the pooler is often meant to be unused. But a note says the
    loss does not read it, from the no_gradient-th recorded step on (before: nothing at all, so
    a loss computed from the wrong head went unseen)."""
    model = _Pooled()
    watch = _train(model, torch.optim.Adam(model.parameters(), lr=1e-2))
    assert model.pool.weight.grad is None and model.enc.weight.grad is not None
    assert watch.diagnose() == []
    (note,) = watch.notes()
    assert note.kind == "unused_output" and note.layers == ("pool",)
    assert note.first_step == 4 and note.steps == 8 and note.remedies == ("reconnect",)
    assert "no gradient on 5 recorded steps in a row" in note.evidence
    frozen = _Pooled()  # frozen on purpose, or left out of the optimizer: nothing to say
    frozen.pool.requires_grad_(False)
    assert _train(frozen, torch.optim.Adam(frozen.parameters(), lr=1e-2)).notes() == []
    outside = _Pooled()
    opt = torch.optim.Adam([*outside.enc.parameters(), *outside.head.parameters()], lr=1e-2)
    assert _train(outside, opt).notes() == []


class _WrongHead(nn.Module):
    """The loss reads the auxiliary head; the real output head runs last and is never read."""

    def __init__(self) -> None:
        super().__init__()
        self.enc, self.aux, self.head = nn.Linear(8, 16), nn.Linear(16, 3), nn.Linear(16, 3)

    def forward(self, x):
        h = torch.relu(self.enc(x))
        self.out = self.head(h)  # what the loss should read
        return self.aux(h)


def test_a_loss_computed_from_the_wrong_head_names_the_head_it_skips():
    model = _WrongHead()
    watch = _train(model, torch.optim.Adam(model.parameters(), lr=1e-2))
    assert model.head.weight.grad is None  # plain torch: the head never trains
    assert [(n.kind, n.layers) for n in watch.notes()] == [("unused_output", ("head",))]
    assert watch.diagnose() == []
    other = _WrongHead()
    off = _train(other, torch.optim.Adam(other.parameters(), lr=1e-2),
                 watch_kw={"thresholds": Thresholds(no_gradient=None)})
    assert off.notes() == []


def test_a_bound_of_none_turns_the_rule_off():
    model = _Net("detach")
    watch = _train(model, torch.optim.Adam(model.parameters(), lr=1e-2),
                   watch_kw={"thresholds": Thresholds(no_gradient=None)})
    assert watch.diagnose() == []


def test_gradients_never_zeroed_are_named():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    watch = _train(model, opt, zero="never")
    found = {f.kind: f for f in watch.diagnose()}
    assert "not_zeroed" in found and found["not_zeroed"].first_step == 3
    assert found["not_zeroed"].remedies == ("zero_grad",)


@pytest.mark.parametrize("write", ["assign", "copy", "backward"])
def test_gradients_from_autograd_grad_written_each_step_are_not_not_zeroed(write):
    """``torch.autograd.grad`` adds nothing to ``.grad``: a loop that writes its result into
    ``.grad`` each step (assigned, or copied in place) needs no ``zero_grad()``. Only a pass
    that adds to the gradient is looked at; the control adds with ``backward()`` and never
    zeroes."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    with GradWatch(model, optimizer=opt) as watch:
        for step in range(10):
            x, y = torch.randn(8, 6, generator=g), torch.randn(8, 3, generator=g)
            loss = F.mse_loss(model(x), y)
            params = list(model.parameters())
            if write == "backward":
                loss.backward()
            else:
                grads = torch.autograd.grad(loss, params)
                for p, grad in zip(params, grads):
                    if write == "assign" or p.grad is None:
                        p.grad = grad
                    else:
                        p.grad.copy_(grad)
            rec_norms = [torch.linalg.vector_norm(p.grad.double()).item() for p in params]
            opt.step()
            last = watch.history[-1]
            assert last.layers["0"].norm == pytest.approx(
                float(torch.linalg.vector_norm(torch.tensor(rec_norms[:2]))), rel=1e-6)
    kinds = [f.kind for f in watch.diagnose()]
    assert kinds == (["not_zeroed"] if write == "backward" else [])


@pytest.mark.parametrize("assigned", [True, False])
def test_gradients_set_by_hand_beside_accumulated_ones_are_gradients(assigned):
    """The encoder's gradients are assigned (``p.grad = 0.5 * g`` from ``autograd.grad``)
    while the head's accumulate through ``backward(inputs=head)``: the encoder has gradients,
    so no ``no_gradient``. The control leaves the encoder's zeroed-in-place gradients alone:
    it gets none, and is named."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                          nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    enc = list(model[0].parameters()) + list(model[2].parameters())
    head = list(model[4].parameters())
    g = torch.Generator().manual_seed(1)
    for p in enc:
        p.grad = torch.zeros_like(p)  # held, zeroed in place each step: 0 unless assigned
    with GradWatch(model, optimizer=opt) as watch:
        for step in range(8):
            x, y = torch.randn(8, 6, generator=g), torch.randn(8, 3, generator=g)
            opt.zero_grad(set_to_none=False)
            loss = F.mse_loss(model(x), y)
            g_enc = torch.autograd.grad(loss, enc, retain_graph=True)
            loss.backward(inputs=head)
            if assigned:
                for p, grad in zip(enc, g_enc):
                    p.grad = 0.5 * grad
            norm0 = torch.linalg.vector_norm(torch.cat([p.grad.reshape(-1) for p in enc[:2]]))
            opt.step()
            assert watch.history[-1].layers["0"].norm == pytest.approx(norm0.item(), rel=1e-6)
    found = [(f.kind, f.layers) for f in watch.diagnose()]
    assert found == ([] if assigned else [("no_gradient", ("0", "2"))])


@pytest.mark.parametrize("zero, accumulate", [("before", 1), ("after_forward", 1), ("before", 4)])
def test_zeroing_patterns_and_accumulation_within_a_step_stay_quiet(zero, accumulate):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    watch = _train(model, opt, zero=zero, accumulate=accumulate)
    assert watch.diagnose() == []


def test_the_check_reads_the_same_gradient_plain_torch_accumulates():
    """Without zero_grad, the gradient after two backward passes is the sum of both: the check's
    premise, in plain torch."""
    torch.manual_seed(0)
    lin = nn.Linear(3, 2)
    x = torch.randn(4, 3)
    lin(x).sum().backward()
    first = lin.weight.grad.clone()
    lin(x).sum().backward()
    assert torch.allclose(lin.weight.grad, 2 * first)


class _Gan(nn.Module):
    """A generator and a discriminator in one module, as many GAN codes keep them."""

    def __init__(self) -> None:
        super().__init__()
        self.G = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8))
        self.D = nn.Sequential(nn.Linear(8, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))


def _gan_steps(gan: _Gan, watch_d: bool, *, zero_d: bool = True, steps: int = 10):
    """The pytorch/examples DCGAN loop: D steps on real and fake, then G's loss flows back
    through D (adding to D's gradients) before D's next ``zero_grad()``. Returns the watch and,
    in plain torch, how many of D's steps used a gradient that still held the previous step's."""
    torch.manual_seed(1)
    opt_d = torch.optim.Adam(gan.D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(gan.G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    real, z = torch.randn(16, 8), torch.randn(16, 4)
    ones, zeros = torch.ones(16, 1), torch.zeros(16, 1)
    watch = GradWatch(gan.D if watch_d else gan.G, optimizer=opt_d if watch_d else opt_g)
    stale_steps = 0
    for _ in range(steps):
        if zero_d:
            gan.D.zero_grad()
        before = None if gan.D[0].weight.grad is None else gan.D[0].weight.grad.clone()
        fake = gan.G(z)
        (bce(gan.D(real), ones) + bce(gan.D(fake.detach()), zeros)).backward()
        if before is not None and zero_d:
            assert before.abs().sum() > 0  # G's pass left a gradient in D, reset by zero_grad
        stale_steps += before is not None and not zero_d
        opt_d.step()
        gan.G.zero_grad()
        bce(gan.D(fake), ones).backward()
        opt_g.step()
    watch.close()
    return watch, stale_steps


def test_a_gan_whose_generator_loss_runs_through_the_discriminator_is_not_not_zeroed():
    """G's backward adds to D's gradients after D's step; D's ``zero_grad()`` comes before D's
    next backward, so D never steps a stale gradient: no finding. Forget that ``zero_grad()``
    and D steps the sum of all its gradients: found."""
    watch, stale = _gan_steps(_Gan(), watch_d=True)
    assert stale == 0 and [f.kind for f in watch.diagnose()] == []
    watch, stale = _gan_steps(_Gan(), watch_d=True, zero_d=False)
    assert stale == 9  # plain torch: every step after the first
    found = {f.kind: f for f in watch.diagnose()}
    assert "not_zeroed" in found and found["not_zeroed"].first_step == 3


def test_not_zeroed_reads_the_gradients_the_optimizer_steps():
    """A backbone left out of the optimizer (its gradients grow, never zeroed, never stepped)
    is not `not_zeroed`; a head whose optimizer is never zeroed, beside a backbone whose
    optimizer is, is."""
    def run(zero_head: bool, backbone_opt: bool) -> set[str]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        head = torch.optim.SGD(model[2].parameters(), lr=0.05)
        back = torch.optim.SGD(model[0].parameters(), lr=0.05) if backbone_opt else None
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(32, 8, generator=g), torch.randint(0, 3, (32,), generator=g)
        with GradWatch(model, optimizer=head) as watch:
            for _ in range(12):
                if zero_head:
                    head.zero_grad()
                if back is not None:
                    back.zero_grad()
                F.cross_entropy(model(x), y).backward()
                if back is not None:
                    back.step()
                head.step()
        return {f.kind for f in watch.diagnose()}

    assert run(zero_head=True, backbone_opt=False) == set()
    assert "not_zeroed" in run(zero_head=False, backbone_opt=True)
    assert run(zero_head=True, backbone_opt=True) == set()


class _Tagger(nn.Module):
    """A token classifier whose first parameter is an embedding with a padding row 0 (BERT's
    layout: the batch never writes row 0, so the first gradient entries are 0 at every step)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16, padding_idx=0)  # (row 0: the first 16 entries)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 3)

    def forward(self, tokens):
        return self.head(self.norm(self.emb(tokens)).mean(1))


@pytest.mark.parametrize("zero", [False, True])
def test_not_zeroed_is_found_behind_an_embeddings_padding_row(zero):
    """Without ``zero_grad()`` every gradient carries over (plain torch: the head's gradient
    after 6 steps is the sum of the 6 steps'); the check does not read the padding row,
    which no batch writes, and finds it. With ``zero_grad()``: quiet."""
    torch.manual_seed(0)
    model = _Tagger()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    with GradWatch(model, optimizer=opt) as watch:
        for _ in range(8):
            tokens = torch.randint(1, 50, (16, 6), generator=g)
            if zero:
                opt.zero_grad()
            F.cross_entropy(model(tokens), torch.randint(0, 3, (16,), generator=g)).backward()
            assert not model.emb.weight.grad[0].any()  # the padding row
            opt.step()
    kinds = {f.kind for f in watch.diagnose()}
    assert ("not_zeroed" in kinds) is not zero


def _summing_output_grads(into: dict, key: str):
    """A forward hook adding the squared output gradient of every backward pass to into[key]."""
    def hook(module, args, out):
        out.register_hook(lambda g: into.__setitem__(key, into.get(key, 0.0)
                                                     + g.double().square().sum().item()))
    return hook


@pytest.mark.parametrize("watch_step", [0, 3])
def test_a_backward_thrown_away_by_zero_grad_is_not_in_act_norm(watch_step):
    """A backward pass whose gradients ``zero_grad()`` throws away before the pass that is
    stepped (a probe batch, a skipped one) reaches no parameter: its output gradients must not
    count either (act_norm was the root-sum-square of both passes: 15.3 for plain torch's
    0.193). Parameter norms were right all along."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    seen: dict[str, float] = {}
    model[2].register_forward_hook(_summing_output_grads(seen, "sq"))
    g = torch.Generator().manual_seed(0)
    with GradWatch(model, optimizer=opt) as watch:
        for step in range(watch_step + 1):
            opt.zero_grad()
            model(torch.randn(16, 8, generator=g)).square().mean().mul(100).backward()
            opt.zero_grad()
            seen.clear()
            model(torch.randn(16, 8, generator=g)).square().mean().backward()
            opt.step()
        assert watch.history[-1].layers["2"].act_norm == pytest.approx(seen["sq"] ** 0.5,
                                                                       rel=1e-6)


class _RaiseOnce(torch.autograd.Function):
    """Identity whose backward raises while ``fire`` is set (a backward that fails half-way,
    after the layers behind it already accumulated)."""

    fire = False

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        return x.clone()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        if _RaiseOnce.fire:
            raise RuntimeError("backward failed")
        return grad


class _StemHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.head = nn.Linear(6, 16), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(_RaiseOnce.apply(torch.relu(self.stem(x))))


@pytest.mark.parametrize("thrown", ["head only", "raised half-way"])
def test_a_thrown_away_pass_that_never_reached_the_first_layer_is_not_in_act_norm(thrown):
    """A pass through the head alone (an auxiliary loss on the head's parameters), or one whose
    backward raised before it reached the stem, then ``zero_grad()``: the head's act_norm is
    the stepped pass's alone, as plain torch's output gradient."""
    torch.manual_seed(0)
    model = _StemHead()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen: dict[str, float] = {}
    model.head.register_forward_hook(_summing_output_grads(seen, "sq"))
    g = torch.Generator().manual_seed(0)
    with GradWatch(model, optimizer=opt) as watch:
        for step in range(3):
            x, y = torch.randn(8, 6, generator=g), torch.randn(8, 3, generator=g)
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            if thrown == "head only":
                (10 * loss).backward(inputs=list(model.head.parameters()))
            else:
                _RaiseOnce.fire = True
                try:
                    (10 * loss).backward()
                except RuntimeError:
                    pass
                finally:
                    _RaiseOnce.fire = False
            opt.zero_grad()
            seen.clear()
            F.mse_loss(model(x), y).backward()
            opt.step()
            assert watch.history[-1].layers["head"].act_norm == pytest.approx(
                seen["sq"] ** 0.5, rel=1e-6)


def test_a_discriminator_watch_leaves_out_the_generator_pass_through_it():
    """pytorch/examples DCGAN order, a watch on D: the generator's loss flows through D after
    D's step; D's zero_grad() throws that pass away. D's act_norm is plain torch's over the
    passes it steps (it read sqrt(D² + G²): 0.233 for 0.201)."""
    gan = _Gan()
    torch.manual_seed(1)
    opt_d = torch.optim.Adam(gan.D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(gan.G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    real, z = torch.randn(16, 8), torch.randn(16, 4)
    ones, zeros = torch.ones(16, 1), torch.zeros(16, 1)
    sq: dict[str, float] = {}
    gan.D[2].register_forward_hook(_summing_output_grads(sq, "d"))
    with GradWatch(gan.D, optimizer=opt_d) as watch:
        for _ in range(4):
            gan.D.zero_grad()
            sq.clear()
            fake = gan.G(z)
            (bce(gan.D(real), ones) + bce(gan.D(fake.detach()), zeros)).backward()
            stepped = sq["d"] ** 0.5
            opt_d.step()
            assert watch.history[-1].layers["2"].act_norm == pytest.approx(stepped, rel=1e-6)
            gan.G.zero_grad()
            bce(gan.D(fake), ones).backward()  # through D: thrown away at D's next zero_grad
            opt_g.step()


def test_a_discriminator_frozen_for_the_generator_pass_leaves_it_out():
    """pix2pix/CycleGAN order, one watch on the whole GAN stepped by D's optimizer: D is
    frozen (``requires_grad_(False)``) while the generator's loss flows through it, so that
    pass adds nothing to D's gradients (it does to G's, which the watch also holds). D's
    act_norm is plain torch's over D's own pass (it read 0.0586 for 0.0476 in a probe)."""
    gan = _Gan()
    whole = nn.ModuleDict({"G": gan.G, "D": gan.D})
    torch.manual_seed(1)
    opt_d = torch.optim.Adam(gan.D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(gan.G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    ones, zeros = torch.ones(16, 1), torch.zeros(16, 1)
    sq: dict[str, float] = {}
    gan.D[2].register_forward_hook(_summing_output_grads(sq, "d"))
    g = torch.Generator().manual_seed(2)
    with GradWatch(whole, optimizer=opt_d) as watch:
        for _ in range(4):
            real, z = torch.randn(16, 8, generator=g), torch.randn(16, 4, generator=g)
            gan.D.requires_grad_(True)
            opt_d.zero_grad()
            fake = gan.G(z)
            sq.clear()
            (bce(gan.D(real), ones) + bce(gan.D(fake.detach()), zeros)).backward()
            stepped = sq["d"] ** 0.5
            opt_d.step()
            assert watch.history[-1].layers["D.2"].act_norm == pytest.approx(stepped, rel=1e-6)
            gan.D.requires_grad_(False)
            opt_g.zero_grad()
            bce(gan.D(fake), ones).backward()  # through the frozen D
            opt_g.step()


def _gradless_run(form: str, *, activations: bool = True, every: int = 1, steps: int = 12):
    """A loop whose optimizer steps parameters that have no gradient (``form``), with the
    weights before and after, and the warnings."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.warns(RuntimeWarning) as caught:
        with GradWatch(model, optimizer=opt, activations=activations, every=every) as watch:
            for _ in range(steps):
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                if form == "rewrap":  # the loss rebuilt from a number: no graph to the weights
                    loss = torch.tensor(loss.item(), requires_grad=True)
                loss.backward()
                if form == "zero_after_backward":
                    opt.zero_grad()
                watch.note_loss(loss)
                opt.step()
    unchanged = all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    return watch, unchanged, [str(w.message) for w in caught]


@pytest.mark.parametrize("form", ["rewrap", "zero_after_backward"])
@pytest.mark.parametrize("activations", [True, False])
def test_no_gradient_anywhere_is_a_finding_not_an_empty_diagnosis(form, activations):
    watch, unchanged, warned = _gradless_run(form, activations=activations)
    assert unchanged  # plain torch: the optimizer stepped nothing
    (f,) = watch.diagnose()
    assert f.kind == "no_gradient" and f.layers == ("0", "2")
    assert (f.first_step, f.steps) == (4, 8)  # the 5th recorded step in a row, and on
    assert "no watched layer has a gradient" in f.evidence and "zero_grad()" in f.cause
    assert f.remedies == ("reconnect", "zero_grad")
    assert watch.history[-1].total_norm == 0.0 and not watch.history[-1].layers
    assert any("at optimizer.step()" in m and "zero_grad() after backward" in m for m in warned)
    assert not any("Call it after loss.backward()" in m for m in warned)  # (wrong advice here)


def test_no_gradient_anywhere_counts_recorded_steps_under_every():
    watch, _, _ = _gradless_run("zero_after_backward", every=3, steps=30)
    (f,) = watch.diagnose()
    assert f.kind == "no_gradient" and (f.first_step, f.steps) == (12, 6)
    assert watch.summary().startswith("GradWatch: 30 steps, 10 recorded")


class _PositionalNet(nn.Module):
    """A parameter on the model itself read first (a ViT's position embedding), then a detach
    half-way: the embedding, the layer before the cut and the model's own parameter get no
    gradient (plain torch: their .grad stays None)."""

    def __init__(self) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.randn(1, 4, 8) * 0.02)
        self.embed = nn.Linear(8, 8)
        self.mid = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = self.mid(self.embed(x) + self.pos).detach()
        return self.head(torch.relu(h)).mean(1)


def test_a_models_own_parameter_cut_off_with_the_input_side_is_no_gradient():
    """The model's own parameter (layer "(root)") is read before the cut, like the layers
    there: it is named in `no_gradient` with them, not in the `unused_output` note (its module
    completes last, after the head)."""
    torch.manual_seed(0)
    model = _PositionalNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with GradWatch(model, optimizer=opt) as watch:
        for _ in range(8):
            opt.zero_grad()
            F.cross_entropy(model(torch.randn(16, 4, 8)), torch.randint(0, 3, (16,))).backward()
            opt.step()
    assert model.pos.grad is None and model.embed.weight.grad is None
    (f,) = watch.diagnose()
    assert f.kind == "no_gradient" and set(f.layers) == {"embed", "mid", "(root)"}
    assert not [n for n in watch.notes() if n.kind == "unused_output"]
