"""Promises under faults and odd setups (issue: trustworthy under faults), each against plain
torch: clipping independent of `every`, skips counted, new parameters watched, closures refused,
the real head, NaN birth with reused modules, autograd.grad passes, pickling and copying,
sparse gradients zeroed, one-line errors."""

from __future__ import annotations

import copy
import io
import math
import pickle
import warnings

import pytest
import torch
from torch import nn

from conftest import batch, loss_of, mlp
from reference import AttentionNet
from gradwatch import GradWatch, NonFiniteGradientError, Status
from gradwatch.clip import AGC


def test_clipping_is_the_same_on_recorded_and_unrecorded_steps():
    """Finite entries of 1e20 overflow the fp32 norm; every step must still clip to norm 1."""
    model = nn.Linear(4, 4)
    with GradWatch(model, clip=1.0, every=2) as watch:
        norms = []
        for _ in range(4):
            for p in model.parameters():
                p.grad = torch.full_like(p, 1e20)
            watch.step()
            g = torch.cat([p.grad.double().flatten() for p in model.parameters()])
            norms.append(torch.linalg.vector_norm(g).item())
    assert norms == pytest.approx([1.0] * 4, rel=1e-5)  # recorded (0, 2) and not (1, 3)


def test_skip_at_an_unrecorded_step_is_recorded_counted_and_warned():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with GradWatch(model, optimizer=opt, on_nonfinite="skip", every=5) as watch:
        for step in range(4):
            opt.zero_grad()
            loss_of(model, *batch(seed=step)).backward()
            if step == 2:
                model[0].weight.grad[0, 0] = math.nan
                before = copy.deepcopy(model.state_dict())
                with pytest.warns(RuntimeWarning, match="step 2.*skipped"):
                    opt.step()
                for k, v in model.state_dict().items():
                    assert torch.equal(v, before[k])
            else:
                opt.step()
        assert [r.step for r in watch.history] == [0, 2] and watch.history[1].skipped
        text = watch.summary()
    assert "non-finite 1, skipped 1" in text


def test_raise_at_an_unrecorded_step_raises_there_before_the_weights_change():
    """on_nonfinite="raise" checks every step like "skip": with every=5 a NaN gradient at
    step 2 raises there, with the layer it was born in, and the optimizer never steps it
    (it stepped the NaN into every weight and raised only at step 5)."""
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with GradWatch(model, optimizer=opt, on_nonfinite="raise", every=5) as watch:
        for step in range(4):
            opt.zero_grad()
            loss_of(model, *batch(seed=step)).backward()
            if step == 2:
                model[0].weight.grad[0, 0] = math.nan
                before = copy.deepcopy(model.state_dict())
                with pytest.raises(NonFiniteGradientError, match="step 2"):
                    opt.step()
                for k, v in model.state_dict().items():
                    assert torch.equal(v, before[k])
                model[0].weight.grad[0, 0] = 0.0  # the user repairs it and goes on
            opt.step()
        assert [r.step for r in watch.history] == [0, 2] and watch.history[1].nonfinite
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_parameter_unfrozen_and_added_later_is_watched_and_skipped():
    model = mlp()
    model[4].requires_grad_(False)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    with GradWatch(model, optimizer=opt, on_nonfinite="skip") as watch:
        assert "4" not in watch.layer_names
        model[4].requires_grad_(True)
        opt.add_param_group({"params": list(model[4].parameters())})
        opt.zero_grad()
        loss_of(model, *batch()).backward()
        model[4].weight.grad[0, 0] = math.inf  # only the newly trainable layer goes bad
        before = model[4].weight.detach().clone()
        with pytest.warns(RuntimeWarning, match="non-finite"):
            opt.step()
        assert torch.equal(model[4].weight, before)  # no NaN/Inf reached the weights
        rec = watch.history[-1]
    assert rec.skipped and "4" in rec.layers and rec.layers["4"].status is Status.NONFINITE


def test_a_param_group_added_keeps_the_steps_output_gradients_and_a_freeze_warns_nothing():
    """Adding a param group changes what is stepped, not the layers: the step it happens at
    keeps its output-gradient norms (plain torch's). Freezing a layer rebuilds the set: that
    step has none, and no warning blames the hooks."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    opt = torch.optim.SGD(model[0].parameters(), lr=0.1)
    outs = {}

    def keep(i):
        def hook(module, args, y):
            if y.requires_grad:
                y.register_hook(lambda g: outs.__setitem__(i, g.norm()))
        return hook

    for i in (0, 2):
        model[i].register_forward_hook(keep(i))
    with GradWatch(model, optimizer=opt) as watch:
        for step in range(3):
            if step == 1:
                opt.add_param_group({"params": list(model[2].parameters())})
            if step == 2:
                model[0].requires_grad_(False)
            opt.zero_grad()
            model(torch.randn(5, 3)).square().sum().backward()
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                opt.step()
            rec = watch.history[-1]
            if step < 2:
                assert [rec.layers[n].act_norm for n in ("0", "2")] == [
                    pytest.approx(outs[i].item(), rel=1e-6) for i in (0, 2)]
        assert watch.layer_names == ("2",) and rec.layers["2"].act_norm is None
        assert list(watch._watched.stepped) == [True]


def test_closure_optimizers_are_refused_with_the_fix():
    model = mlp()
    opt = torch.optim.LBFGS(model.parameters(), max_iter=2)
    x, y = batch()

    def closure():
        opt.zero_grad()
        loss = loss_of(model, x, y)
        loss.backward()
        return loss

    with GradWatch(model, optimizer=opt):
        with pytest.raises(RuntimeError, match="closure.*watch.step\\(\\) inside your closure"):
            opt.step(closure)
    with GradWatch(model) as watch:  # the documented way: measure inside the closure

        def watched_closure():
            loss = closure()
            watch.step()
            return loss

        opt.step(watched_closure)
        assert watch.history and all(math.isfinite(r.total_norm) for r in watch.history)


def test_head_is_the_last_weight_layer_in_forward_order_not_the_last_hook():
    model = AttentionNet()
    x = torch.randn(2, 5, 8)
    with GradWatch(model, clip=AGC(0.01)) as watch:
        model(x).sum().backward()
        untouched = model.head.weight.grad.clone()
        watch.step()
        assert watch.head == "head"
        assert watch.layer_names.index("attn.out_proj") < watch.layer_names.index("head")
        assert torch.equal(model.head.weight.grad, untouched)  # AGC spares the real head


def test_tied_output_head_resolves_to_the_shared_embedding():
    emb = nn.Embedding(10, 6)
    body = nn.Linear(6, 6)
    out = nn.Linear(6, 10, bias=False)
    out.weight = emb.weight  # GPT-2 style tying: the head owns no parameter

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.body, self.out = emb, body, out

        def forward(self, t):
            return self.out(torch.tanh(self.body(self.emb(t))))

    model = Tied()
    with GradWatch(model) as watch:
        model(torch.randint(0, 10, (4, 3))).sum().backward()
        watch.step()
        assert watch.head == "emb"


class _Reused(nn.Module):
    """out(shared(birth(shared(inp(x))))): `shared` runs before and after `birth`."""

    def __init__(self):
        super().__init__()
        self.inp, self.shared, self.birth, self.out = (nn.Linear(4, 4) for _ in range(4))

    def forward(self, x):
        return self.out(self.shared(self.birth(self.shared(self.inp(x)))))


class _DivideByZero(nn.Linear):
    def forward(self, x):
        return super().forward(x) / 0.0  # inf/NaN born in this module's forward


def test_nan_born_in_forward_is_located_even_with_a_reused_module():
    model = _Reused()
    model.birth = _DivideByZero(4, 4)
    with GradWatch(model) as watch:
        with pytest.warns(RuntimeWarning, match="forward pass at 'birth'"):
            model(torch.randn(3, 4)).sum().backward()
            rec = watch.step()
    assert rec.nonfinite_origin == "forward" and rec.first_nonfinite == "birth"
    assert [f.kind for f in watch.diagnose()] == ["nonfinite_forward"]


@pytest.mark.parametrize("where", ["first_batch", "second_micro_batch", "weights"])
def test_nan_in_the_batch_is_told_apart_from_nan_born_in_a_module(where):
    """NaN in the data reaches the first module's input: the finding says the batch, with the
    remedy `check_data`. NaN weights in a later layer make that layer's output non-finite from
    a finite input: the layer, as before. Two micro-batches per step: the second one's NaN is
    found too. Plain torch confirms where the NaN is."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 1))
    batches = [torch.randn(4, 2, 3), torch.randn(4, 2, 3)]
    if where == "weights":
        with torch.no_grad():
            model[3].weight[0, 0] = math.inf
    else:
        batches[0 if where == "first_batch" else 1][1, 0, 2] = math.nan
    assert torch.isfinite(model[1](model[0](batches[0]))).all() == (where != "first_batch")
    with GradWatch(model) as watch:
        with pytest.warns(RuntimeWarning) as warned:
            for _ in range(2):  # the second step's warning says it again
                model.zero_grad()
                for x in batches:
                    model(x).sum().backward()
                rec = watch.step()
    (finding,) = watch.diagnose()
    assert finding.steps == 2 and len(warned) == 2
    assert finding.kind == "nonfinite_forward" and rec.nonfinite_origin == "forward"
    message = " | ".join(str(w.message) for w in warned)
    if where == "weights":  # (as an optimizer step that overflowed leaves them)
        assert rec.first_nonfinite == "3" and finding.remedies == ("fp32_weights", "lower_lr",
                                                                    "clip")
        assert "the output of `3` in the forward pass, whose weights were already non-finite" \
            in finding.evidence and "optimizer.step()" in finding.cause
        assert message.count("already in the weights of '3'") == 2
    else:
        assert rec.first_nonfinite == "0" and finding.remedies == ("check_data",)
        assert "the batch entering the model" in finding.evidence
        assert message.count("already in the batch entering '0'") == 2
        assert "isfinite" in finding.remedy


def test_weights_an_optimizer_step_made_nan_are_not_blamed_on_an_operation():
    """float16 AdamW with its default eps (1e-8 is 0 in float16): the first step divides 0 by 0
    (plain torch: NaN weights after one step from finite gradients). The next forward's NaN is
    born in the first layer's output, but no operation there is at fault: the finding names its
    weights and the optimizer step, not 'guard the operation'."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 3)).half()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(64, 20).half(), torch.randint(0, 3, (64,))
    with GradWatch(model, optimizer=opt) as watch, warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        for step in range(3):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x).float(), y).backward()
            finite = all(torch.isfinite(p.grad).all() for p in model.parameters())
            assert finite == (step == 0)
            opt.step()
            if step == 0:
                assert not all(torch.isfinite(p).all() for p in model.parameters())
    (finding,) = watch.diagnose()
    assert finding.kind == "nonfinite_forward" and finding.first_step == 1
    assert "weights of `0` were already NaN/Inf" in finding.cause
    assert "guard the operation" not in finding.remedy and "eps" in finding.remedy


class _BadBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * math.nan


class _BirthInBackward(nn.Linear):
    def forward(self, x):
        return super().forward(_BadBackward.apply(x))


def test_nan_born_in_backward_names_the_module_not_the_reused_one():
    model = _Reused()
    model.birth = _BirthInBackward(4, 4)
    with GradWatch(model) as watch:
        with pytest.warns(RuntimeWarning):
            model(torch.randn(3, 4)).sum().backward()
            rec = watch.step()
    assert rec.nonfinite_origin == "backward" and rec.first_nonfinite == "birth"
    assert [f.kind for f in watch.diagnose()] == ["nonfinite_backward"]


def test_nan_born_in_the_loss_is_said_so():
    model = mlp()
    with GradWatch(model) as watch:
        with pytest.warns(RuntimeWarning, match="born in the loss"):
            torch.log(model(batch()[0]) * 0.0).sum().backward()  # log(0) -> -inf loss
            rec = watch.step()
    assert rec.nonfinite_origin == "loss" and rec.first_nonfinite is None


def test_output_gradient_counts_only_the_backward_that_accumulates():
    """A gradient penalty's autograd.grad pass fires the same tensor hooks; it must not count."""
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    twin = copy.deepcopy(model)
    x = torch.randn(5, 3, requires_grad=True)

    def loss_and_penalty(net, keep=None):
        h = net[0](x)
        if keep is not None:
            keep.append(h)
        out = net[2](net[1](h))
        (gx,) = torch.autograd.grad(out.sum(), x, create_graph=True)
        return out.pow(2).mean() + gx.pow(2).sum()

    kept = []
    (true,) = torch.autograd.grad(loss_and_penalty(twin, kept), kept)  # dLoss/dh, exactly
    with GradWatch(model) as watch:
        loss_and_penalty(model).backward()
        rec = watch.step()
    assert rec.layers["0"].act_norm == pytest.approx(true.norm().item(), rel=1e-5)


def test_a_backward_into_some_parameters_counts_and_autograd_grad_into_them_does_not():
    """Output gradients come from the passes that accumulate into ``.grad``: one into some
    parameters only (``backward(inputs=...)``) counts, an ``autograd.grad`` pass asking for a
    parameter's gradient (a MAML-style inner step) does not. The hooks that tell them apart
    sit on the parameters on recorded steps only."""
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    x = torch.randn(5, 3)

    def param_hooks() -> int:
        return sum(len(getattr(p, "_post_accumulate_grad_hooks", None) or ())
                   for p in model.parameters())

    with GradWatch(model, every=2) as watch:
        h = model[0](x)
        h.retain_grad()
        model[2](model[1](h)).pow(2).mean().backward(inputs=[model[0].weight])
        torch.autograd.grad(model(x).sum(), [model[0].weight])  # accumulates into nothing
        assert param_hooks() > 0
        rec = watch.step()
        assert param_hooks() == 0  # step 1 is not recorded
    assert h.grad is not None and model[2].weight.grad is None
    assert rec.layers["0"].act_norm == pytest.approx(h.grad.norm().item(), rel=1e-6)


def test_watched_model_pickles_saves_and_deep_copies_without_live_hooks():
    model = mlp()
    with GradWatch(model) as watch:
        loss_of(model, *batch()).backward()
        watch.step()
        buf = io.BytesIO()
        torch.save(model, buf)  # inside the `with`: hooks are attached
        pickle.loads(pickle.dumps(model))
        twin = copy.deepcopy(model)
    assert not any(m._forward_hooks for m in model.modules())
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    for m in (loaded, twin):  # copies run, and feed nothing into any watch
        loss_of(m, *batch()).backward()
        # what was copied of gradwatch's hooks removed itself at the copy's first forward
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in m.modules())
        assert not any(p._post_accumulate_grad_hooks for p in m.parameters())
    assert len(watch.history) == 1
    fresh = GradWatch(twin)
    loss_of(twin, *batch(seed=1)).backward()
    rec = fresh.step()
    fresh.close()
    assert rec.layers["0"].act_norm is not None and len(watch.history) == 1


def test_sparse_embedding_with_zero_policy():
    emb = nn.Embedding(10, 3, sparse=True)
    opt = torch.optim.SGD(emb.parameters(), lr=0.1)
    with GradWatch(emb, optimizer=opt, on_nonfinite="zero") as watch:
        out = emb(torch.tensor([1, 2, 2]))
        (out * torch.tensor([[math.nan], [1.0], [1.0]])).sum().backward()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt.step()
        assert torch.isfinite(emb.weight).all()
        assert watch.history[0].nonfinite


@pytest.mark.parametrize("clip", [None, 1e-3, "value"])
def test_deferred_records_equal_immediate_ones(clip):
    """sync_records=False takes the accelerator path (copy started, record formed one step
    later) on the CPU: the records must be the same numbers, and nothing is lost at close."""
    from gradwatch.clip import Value

    policy = Value(1e-3) if clip == "value" else clip
    runs = []
    for sync in (True, False):
        torch.manual_seed(0)
        model = mlp()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        with GradWatch(model, optimizer=opt, clip=policy, sync_records=sync) as watch:
            seen = []
            for step in range(6):
                opt.zero_grad()
                loss_of(model, *batch(seed=step)).backward()
                opt.step()
                seen.append(len(watch._ledger.records))  # what loggers have been given so far
        runs.append(([r.to_dict() for r in watch.history], seen,
                     [p.detach().clone() for p in model.parameters()]))
    (sync_recs, sync_seen, sync_params), (late_recs, late_seen, late_params) = runs
    coefs = [[r.pop("clip_coef") for r in recs] for recs in (sync_recs, late_recs)]
    assert late_recs == sync_recs  # same numbers, same verdicts
    assert coefs[1] == pytest.approx(coefs[0], rel=1e-12)  # element-wise: post/pre on the device
    assert sync_seen == [1, 2, 3, 4, 5, 6] and late_seen == [0, 1, 2, 3, 4, 5]  # one step late
    for a, b in zip(sync_params, late_params):
        assert torch.equal(a, b)  # clipping with the device total changed nothing
    assert "update_ratio" in late_recs[0]["layers"]["0"]


class _LogAt(nn.Module):
    """log(x + eps): -inf where a ReLU output is 0 once eps is 0 (a forward-born non-finite)."""

    eps = 1.0

    def forward(self, x):
        return torch.log(x + self.eps)


@pytest.mark.parametrize("at", [3, 48])
@pytest.mark.parametrize("options", [{}, {"activations": False, "on_nonfinite": "zero"}])
def test_forward_birth_is_located_in_a_deep_net_before_and_after_a_batch_of_checks(
        at, options, monkeypatch):
    """Module outputs are checked in batches (`gradwatch.capture.collector.BATCH_TENSORS`, 32
    here): a birth inside a batch reduced during the forward pass (3) and one among the outputs
    still held at the end of the step (48) are both found; a finite step skips the held checks
    and says nothing."""
    monkeypatch.setattr("gradwatch.capture.collector.BATCH_TENSORS", 32)
    torch.manual_seed(0)
    blocks = [nn.Sequential(nn.Linear(4, 4), nn.ReLU()) for _ in range(50)]
    blocks[at] = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), _LogAt())  # log(relu(z)): -inf at 0
    model = nn.Sequential(*blocks)
    x = torch.randn(8, 4)
    with GradWatch(model, **options) as watch:
        model(x).sum().backward()  # log(relu(z) + 1): finite
        healthy = watch.step()
        model.zero_grad()
        blocks[at][2].eps = 0.0
        with pytest.warns(RuntimeWarning, match=f"forward pass at '{at}.2'"):
            model(x).sum().backward()
            rec = watch.step()
    assert healthy.first_nonfinite is None and healthy.nonfinite_origin is None
    assert rec.nonfinite_origin == "forward" and rec.first_nonfinite == f"{at}.2"


def test_a_run_that_stays_nan_warns_three_steps_then_once_that_it_stops():
    """Weights made NaN stay NaN: each later step is non-finite. Warning once per step (600
    warnings in a 600-step run) buried the first, which names the birth. Three steps are
    warned, then one line says the rest are not; a finite step starts over."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(16, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        watch = GradWatch(model, optimizer=opt)
        for step in range(12):
            if step == 2:
                with torch.no_grad():
                    model[0].weight[0, 0] = float("nan")  # NaN from here on, in the weights
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
        watch.close()
    said = [str(w.message) for w in caught if "non-finite gradient" in str(w.message)]
    assert len(watch.history) == 12 and all(r.nonfinite for r in list(watch.history)[2:])
    assert [m.split(":")[0] for m in said] == [f"non-finite gradient at step {k}"
                                               for k in (2, 3, 4, 5)]
    assert "not warned about one by one" in said[-1] and "step 2" in said[0]
