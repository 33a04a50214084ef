"""torch.compile (backend "aot_eager": dynamo + AOT autograd without inductor's C++ build, which
takes ~40 s per model on a 2-core CPU) and odd models, each against a plain-torch reference."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from torch import nn

from conftest import regression_batch, tanh_net
from gradwatch import GradWatch
from reference import grad_norm, norm, output_grads, param_grad_norms

BACKEND = "aot_eager"


def _net() -> nn.Sequential:
    return tanh_net(6, 16, 3)


def _no_act_warnings(caught) -> list:
    return [w for w in caught if "activation hooks did not run" in str(w.message)]


# ----------------------------------------------------------------------------- torch.compile


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Dynamo caches graphs across model instances (hooks included): isolate every test."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compiled_model_gets_correct_norms_and_clipping():
    """GradWatch attached before torch.compile: everything matches an eager twin clipped with
    clip_grad_norm_, activation-gradient norms included (the hooks are traced in)."""
    model, twin = _net(), _net()
    opt, opt_twin = (torch.optim.SGD(m.parameters(), lr=0.1) for m in (model, twin))
    watch = GradWatch(model, optimizer=opt, clip=0.1)
    compiled = torch.compile(model, backend=BACKEND)
    for step in range(2):
        x, y = regression_batch(step)
        opt.zero_grad()
        nn.functional.mse_loss(compiled(x), y).backward()
        opt.step()
        opt_twin.zero_grad()
        h = twin[0](x)
        h.retain_grad()
        nn.functional.mse_loss(twin[2](twin[1](h)), y).backward()
        expected = param_grad_norms(twin)
        total = torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.1)
        opt_twin.step()
        rec = watch.history[-1]
        assert rec.total_norm == pytest.approx(total.item(), rel=1e-6) and rec.clip_coef < 1
        for name, value in expected.items():
            assert rec.layers[name].norm == pytest.approx(value, rel=1e-6)
        assert rec.layers["0"].act_norm == pytest.approx(norm([h.grad]), rel=1e-6)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    watch.close()


def test_fullgraph_compile_with_parameter_norms_only():
    """fullgraph=True cannot trace gradwatch's output-gradient hooks (dynamo raises Unsupported:
    they write Python state), so such models use activations=False; parameter norms and clipping
    still match clip_grad_norm_ on an eager twin, and no warning is given."""
    model, twin = _net(), _net()
    watch = GradWatch(model, clip=0.1, activations=False)
    compiled = torch.compile(model, backend=BACKEND, fullgraph=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for step in range(2):
            x, y = regression_batch(step)
            for m, fn in ((model, compiled), (twin, twin)):
                m.zero_grad()
                nn.functional.mse_loss(fn(x), y).backward()
            rec = watch.step()
            total = torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.1)
            assert rec.total_norm == pytest.approx(total.item(), rel=1e-6)
            assert all(s.act_norm is None for s in rec.layers.values())
            for p, q in zip(model.parameters(), twin.parameters()):
                torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=0)


def test_attaching_to_an_optimized_module_is_detected_and_unwrapped():
    model = _net()
    compiled = torch.compile(model, backend=BACKEND)
    compiled(regression_batch()[0])  # it has run: hooks added from now on are ignored
    with pytest.warns(UserWarning, match="compiled with torch.compile"):
        watch = GradWatch(compiled)
    assert set(watch.layer_names) == {"0", "2"}  # no "_orig_mod." prefix
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(3):  # warned once, not at every step
            model.zero_grad()
            x, y = regression_batch(step)
            nn.functional.mse_loss(compiled(x), y).backward()
            rec = watch.step()
    assert len(_no_act_warnings(caught)) == 1
    assert rec.layers["0"].norm == pytest.approx(grad_norm(model[0].parameters()), rel=1e-6)


def test_attaching_to_the_inner_model_after_its_compiled_wrapper_ran_warns_at_first_step():
    """The inner module carries no mark of compilation; the missing hooks are noticed at the
    first recorded step."""
    model = _net()
    compiled = torch.compile(model, backend=BACKEND)
    compiled(regression_batch()[0])
    watch = GradWatch(model)
    x, y = regression_batch()
    nn.functional.mse_loss(compiled(x), y).backward()
    with pytest.warns(UserWarning, match="activation hooks did not run"):
        rec = watch.step()
    assert rec.layers["2"].act_norm is None
    assert rec.layers["2"].norm == pytest.approx(grad_norm(model[2].parameters()), rel=1e-6)


def test_module_compiled_in_place_is_detected():
    model = _net()
    model[2].compile(backend=BACKEND)
    with pytest.warns(UserWarning, match="'2'"):
        GradWatch(model).close()


# ----------------------------------------------------------------------------- odd models


def _tied(bias: bool) -> nn.ModuleDict:
    torch.manual_seed(0)
    emb, head = nn.Embedding(10, 4), nn.Linear(4, 10, bias=bias)
    head.weight = emb.weight  # tied, as in language models
    return nn.ModuleDict({"emb": emb, "head": head})


@pytest.mark.parametrize("bias", [False, True], ids=["head-owns-nothing", "head-owns-bias"])
def test_tied_weights_count_once(bias):
    """The shared weight belongs to its first owner, with the gradient of both uses summed; a
    tied head without a bias owns nothing new and is no layer; clipping equals clip_grad_norm_
    over the deduplicated parameters."""
    model, twin = _tied(bias), _tied(bias)
    watch = GradWatch(model, clip=0.5)
    assert watch.layer_names == (("emb", "head") if bias else ("emb",))
    idx = torch.tensor([1, 2, 2, 7])
    for m in (model, twin):
        nn.functional.cross_entropy(m["head"](m["emb"](idx)), idx).backward()
    assert len(list(model.parameters())) == 1 + bias  # emb.weight (= head.weight), head.bias
    expected = param_grad_norms(twin)
    assert expected["emb"] == pytest.approx(twin["emb"].weight.grad.norm().item(), rel=1e-6)
    head_bias = grad_norm([twin["head"].bias]) if bias else None
    rec = watch.step()
    total = torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.5)  # parameters() dedups
    assert list(rec.layers) == list(expected) == list(watch.layer_names)
    assert rec.total_norm == pytest.approx(total.item(), rel=1e-6) and rec.clip_coef < 1
    assert rec.layers["emb"].norm == pytest.approx(expected["emb"], rel=1e-6)  # both uses
    if bias:
        assert rec.layers["head"].norm == pytest.approx(head_bias, rel=1e-6)  # its bias only
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=0)


def test_frozen_and_unused_layers_are_left_out():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.frozen, self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 3), nn.Linear(6, 3)
            self.frozen.requires_grad_(False)

        def forward(self, x, use_b):
            h = self.frozen(x)
            return self.b(h) if use_b else self.a(h)

    torch.manual_seed(0)
    model = Branchy()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with GradWatch(model, optimizer=opt) as watch:
        assert watch.layer_names == ("a", "b")  # frozen is not watched; b, unused yet, is
        for use_b in (False, True):
            opt.zero_grad()  # set_to_none: the unused layer has no gradient at all
            x, y = regression_batch()
            nn.functional.mse_loss(model(x, use_b), y).backward()
            expected = grad_norm(model.parameters())
            used = grad_norm((model.b if use_b else model.a).parameters())
            opt.step()
            rec = watch.history[-1]
            assert list(rec.layers) == (["b"] if use_b else ["a"])  # no gradient: left out
            assert rec.layers["b" if use_b else "a"].norm == pytest.approx(used, rel=1e-6)
            assert rec.total_norm == pytest.approx(expected, rel=1e-6)
            assert rec.flagged == ()


def test_sparse_embedding_gradients():
    torch.manual_seed(0)
    emb = nn.Embedding(20, 5, sparse=True)
    model = nn.Sequential(emb, nn.Linear(5, 2))
    twin = nn.Sequential(nn.Embedding(20, 5, sparse=True), nn.Linear(5, 2))
    twin.load_state_dict(model.state_dict())
    idx = torch.tensor([[1, 3, 3, 3], [0, 19, 1, 1]])  # repeated rows: coalescing sums them
    watch = GradWatch(model, clip=0.01)
    for m in (model, twin):
        m(idx).pow(2).mean().backward()
    assert emb.weight.grad.is_sparse
    rec = watch.step()
    assert rec.layers["0"].norm == pytest.approx(norm([twin[0].weight.grad]), rel=1e-6)
    total = torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.01)
    assert rec.total_norm == pytest.approx(total.item(), rel=1e-6)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad.to_dense(), q.grad.to_dense(), rtol=1e-6, atol=0)


def test_zero_size_parameters():
    class WithEmpty(nn.Module):
        def __init__(self):
            super().__init__()
            self.empty = nn.Linear(0, 4)  # weight is 4 x 0
            self.fc = nn.Linear(6, 4)
            self.nothing = nn.Parameter(torch.zeros(0))

        def forward(self, x):
            return self.fc(x) + self.empty(x[:, :0]) + self.nothing.sum()

    torch.manual_seed(0)
    model = WithEmpty()
    watch = GradWatch(model, clip=0.1)
    x, y = regression_batch()
    nn.functional.mse_loss(model(x)[:, :3], y).backward()
    expected = param_grad_norms(model)  # "(root)" owns the empty `nothing`
    total = norm([p.grad for p in model.parameters()])
    bias = norm([model.empty.bias.grad])  # (before clipping)
    rec = watch.step()
    assert "(root)" not in rec.layers  # no entries: no layer (its norm is 0 whatever happens)
    assert rec.layers["empty"].norm == pytest.approx(bias, rel=1e-6)
    for name, value in expected.items():
        if name != "(root)":
            assert rec.layers[name].norm == pytest.approx(value, rel=1e-6)
    assert rec.total_norm == pytest.approx(total, rel=1e-6)
    assert math.isfinite(rec.clip_coef) and rec.clip_coef < 1


def test_a_zero_width_branch_is_no_layer_and_a_healthy_run_stays_quiet():
    """An ``nn.Linear(16, 0)`` head (zero extra targets) concatenated to the output has a
    gradient norm of exactly 0 every step: it was a layer, taken as the head, and gave a
    false stalled and zero_gradient while the loss fell."""
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.extra = nn.Linear(8, 16), nn.Linear(16, 3), nn.Linear(16, 0)

        def forward(self, x):
            h = torch.tanh(self.a(x))
            return torch.cat([self.b(h), self.extra(h)], dim=1)

    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g)
    losses = []
    with GradWatch(model, optimizer=opt) as watch:
        for _ in range(40):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            watch.note_loss(loss)
            opt.step()
            losses.append(loss.item())
        assert losses[-1] < 0.8 * losses[0]  # it learns
        assert watch.head == "b" and "extra" not in watch.layer_names
        assert watch.diagnose() == [] and watch.notes() == []


class _Pair(nn.Module):
    """Owns its parameter directly (a layer) and returns two tensors: a tuple, a dict, or a dict
    holding a tuple."""

    def __init__(self, form: str):
        super().__init__()
        self.form, self.weight = form, nn.Parameter(torch.randn(6, 8) / 3)

    def forward(self, x):
        h = x @ self.weight
        a, b = torch.tanh(h), h * 2
        return {"tuple": (a, b), "dict": {"a": a, "b": b}, "nested": {"a": a, "b": (b,)}}[self.form]


def _unpack(out) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(out, tuple):
        return out
    return out["a"], out["b"][0] if isinstance(out["b"], tuple) else out["b"]


@pytest.mark.parametrize("form", ["tuple", "dict", "nested"])
def test_modules_returning_tuples_or_dicts(form):
    """act_norm of a multi-output module is the L2 norm over all its output tensors' grads
    (the head, called on both outputs, over both calls); a root module owning parameters is the
    layer "(root)"."""
    torch.manual_seed(0)
    model = nn.ModuleDict({"pair": _Pair(form), "head": nn.Linear(8, 3)})
    twin = copy.deepcopy(model)
    x, y = regression_batch()

    def loss(m: nn.Module) -> torch.Tensor:
        a, b = _unpack(m["pair"](x))
        return nn.functional.mse_loss(m["head"](a) + m["head"](b) ** 2, y)

    grads = output_grads(twin, lambda: loss(twin).backward())
    assert [len(grads[n]) for n in ("pair", "head")] == [2, 2]
    with GradWatch(model) as watch:
        loss(model).backward()
        rec = watch.step()
    assert list(rec.layers) == ["pair", "head"]
    for name in ("pair", "head"):
        assert rec.layers[name].act_norm == pytest.approx(norm(grads[name]), rel=1e-6)
        assert rec.layers[name].norm == pytest.approx(
            grad_norm(twin[name].parameters()), rel=1e-6)
    root, root_twin = _Pair(form), copy.deepcopy(model["pair"])
    root.load_state_dict(root_twin.state_dict())

    def run(m: nn.Module):
        def backward() -> None:
            a, b = _unpack(m(x))
            (a.pow(2).sum() + 3 * b.sum()).backward()
        return backward

    expected = output_grads(root_twin, run(root_twin))
    with GradWatch(root) as watch:
        run(root)()
        rec = watch.step()
    assert list(rec.layers) == list(expected) == ["(root)"]
    assert rec.layers["(root)"].act_norm == pytest.approx(norm(expected["(root)"]), rel=1e-6)
    assert rec.layers["(root)"].norm == pytest.approx(grad_norm(root_twin.parameters()),
                                                      rel=1e-6)


class _Reordered(nn.Module):
    """Registered in one order, called in another; `shared` runs twice."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4, 2)
        self.shared = nn.Linear(4, 4)
        self.stem = nn.Linear(3, 4)

    def forward(self, x):
        return self.head(self.shared(torch.tanh(self.shared(self.stem(x)))))


def test_forward_order_and_module_called_twice():
    """Layers come in forward order, not definition order; a module called twice has the norm
    of its summed parameter gradient and an act_norm over both calls' output gradients."""
    torch.manual_seed(0)
    model = _Reordered()
    twin = copy.deepcopy(model)
    x = torch.randn(5, 3)
    watch = GradWatch(model)
    assert watch.layer_names == ("head", "shared", "stem")  # nothing has run yet
    grads = output_grads(twin, lambda: twin(x).pow(2).sum().backward())
    assert len(grads["shared"]) == 2
    model(x).pow(2).sum().backward()
    rec = watch.step()
    assert list(rec.layers) == ["stem", "shared", "head"]
    assert watch.layer_names == ("stem", "shared", "head")
    for name, stat in rec.layers.items():
        assert stat.norm == pytest.approx(grad_norm(twin.get_submodule(name).parameters()),
                                          rel=1e-6)
        assert stat.act_norm == pytest.approx(norm(grads[name]), rel=1e-6)
    watch.close()


def test_a_compiled_optimizer_step_runs_the_watch_untraced():
    """torch's "compiling the optimizer" recipe wraps ``opt.step()`` in torch.compile: dynamo
    must not trace gradwatch's step hooks (it recompiled on every new float they compute, past
    its recompile limit: 121 graphs in 30 steps). The records equal plain torch's norms."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2))
    opt = torch.optim.Adam(model.parameters(), lr=torch.tensor(1e-3))
    watch = GradWatch(model, optimizer=opt)
    torch._dynamo.reset()
    counters.clear()
    step = torch.compile(opt.step, backend="eager")
    x, want = torch.randn(32, 8), []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "Dynamo does not know how to trace" from gradwatch
        for _ in range(12):
            opt.zero_grad()
            loss = model(x).square().mean()
            loss.backward()
            want.append([grad_norm(model[k].parameters()) for k in (0, 2)])
            watch.note_loss(loss)
            step()
    watch.close()
    assert counters["stats"]["unique_graphs"] <= 2
    got = [r.layers[n].norm for r in watch.history for n in ("0", "2")]
    assert got == pytest.approx([v for pair in want for v in pair], rel=1e-6)
    assert len(got) == 24
