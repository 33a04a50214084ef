"""torch.compile (backend "aot_eager": dynamo + AOT autograd without inductor's C++ build, which
takes ~40 s per model on a 2-core CPU) and odd models, each against a plain-torch reference."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from gradwatch import GradWatch

BACKEND = "aot_eager"


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 6, generator=g), torch.randn(8, 3, generator=g)


def _norm(tensors) -> float:
    flat = [(t.to_dense() if t.is_sparse else t).double().flatten() for t in tensors]
    return torch.linalg.vector_norm(torch.cat(flat)).item() if flat else 0.0


def _gnorm(params) -> float:
    """Reference: L2 norm of the gradients of ``params``, in float64."""
    return _norm([p.grad for p in params])


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
        x, y = _data(step)
        opt.zero_grad()
        nn.functional.mse_loss(compiled(x), y).backward()
        opt.step()
        opt_twin.zero_grad()
        h = twin[0](x)
        h.retain_grad()
        nn.functional.mse_loss(twin[2](twin[1](h)), y).backward()
        expected = {n: _gnorm(twin.get_submodule(n).parameters()) for n in ("0", "2")}
        total = torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.1)
        opt_twin.step()
        rec = watch.history[-1]
        assert rec.total_norm == pytest.approx(total.item(), rel=1e-6) and rec.clip_coef < 1
        for name, norm in expected.items():
            assert rec.layers[name].norm == pytest.approx(norm, rel=1e-6)
        assert rec.layers["0"].act_norm == pytest.approx(_norm([h.grad]), rel=1e-6)
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
            for m, fn in ((model, compiled), (twin, twin)):
                m.zero_grad()
                nn.functional.mse_loss(fn(_data(step)[0]), _data(step)[1]).backward()
            rec = watch.step()
            total = torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.1)
            assert rec.total_norm == pytest.approx(total.item(), rel=1e-6)
            assert all(s.act_norm is None for s in rec.layers.values())
            for p, q in zip(model.parameters(), twin.parameters()):
                torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=0)


def test_attaching_to_an_optimized_module_is_detected_and_unwrapped():
    model = _net()
    compiled = torch.compile(model, backend=BACKEND)
    compiled(_data()[0])  # it has run: hooks added from now on are ignored
    with pytest.warns(UserWarning, match="compiled with torch.compile"):
        watch = GradWatch(compiled)
    assert set(watch.layer_names) == {"0", "2"}  # no "_orig_mod." prefix
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(3):  # warned once, not at every step
            model.zero_grad()
            nn.functional.mse_loss(compiled(_data(step)[0]), _data(step)[1]).backward()
            rec = watch.step()
    assert len(_no_act_warnings(caught)) == 1
    assert rec.layers["0"].norm == pytest.approx(_gnorm(model[0].parameters()), rel=1e-6)


def test_attaching_to_the_inner_model_after_its_compiled_wrapper_ran_warns_at_first_step():
    """The inner module carries no mark of compilation; the missing hooks are noticed at the
    first recorded step."""
    model = _net()
    compiled = torch.compile(model, backend=BACKEND)
    compiled(_data()[0])
    watch = GradWatch(model)
    nn.functional.mse_loss(compiled(_data()[0]), _data()[1]).backward()
    with pytest.warns(UserWarning, match="activation hooks did not run"):
        rec = watch.step()
    assert rec.layers["2"].act_norm is None
    assert rec.layers["2"].norm == pytest.approx(_gnorm(model[2].parameters()), rel=1e-6)


def test_module_compiled_in_place_is_detected():
    model = _net()
    model[2].compile(backend=BACKEND)
    with pytest.warns(UserWarning, match="'2'"):
        GradWatch(model).close()


# ----------------------------------------------------------------------------- odd models


def _tied() -> nn.ModuleDict:
    torch.manual_seed(0)
    emb, head = nn.Embedding(10, 4), nn.Linear(4, 10)
    head.weight = emb.weight  # tied, as in language models
    return nn.ModuleDict({"emb": emb, "head": head})


def test_tied_weights_count_once():
    model, twin = _tied(), _tied()
    watch = GradWatch(model, clip=0.5)
    idx = torch.tensor([1, 2, 2, 7])
    for m in (model, twin):
        nn.functional.cross_entropy(m["head"](m["emb"](idx)), idx).backward()
    assert len(list(model.parameters())) == 2  # emb.weight (= head.weight) and head.bias
    expected_emb, expected_head = _gnorm([twin["emb"].weight]), _gnorm([twin["head"].bias])
    rec = watch.step()
    total = torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.5)  # parameters() dedups
    assert rec.total_norm == pytest.approx(total.item(), rel=1e-6) and rec.clip_coef < 1
    assert rec.layers["emb"].norm == pytest.approx(expected_emb, rel=1e-6)  # both uses summed
    assert rec.layers["head"].norm == pytest.approx(expected_head, rel=1e-6)  # its bias only
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
        assert "frozen" not in watch.layer_names
        for use_b in (False, True):
            opt.zero_grad()  # set_to_none: the unused layer has no gradient at all
            x, y = _data()
            nn.functional.mse_loss(model(x, use_b), y).backward()
            expected = _norm([p.grad for p in model.parameters() if p.grad is not None])
            opt.step()
            rec = watch.history[-1]
            assert list(rec.layers) == (["b"] if use_b else ["a"])
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
    assert rec.layers["0"].norm == pytest.approx(_norm([twin[0].weight.grad]), rel=1e-6)
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
    x, y = _data()
    nn.functional.mse_loss(model(x)[:, :3], y).backward()
    expected = {"empty": _gnorm(model.empty.parameters()), "fc": _gnorm(model.fc.parameters())}
    total = _norm([p.grad for p in model.parameters()])
    rec = watch.step()
    assert rec.layers["(root)"].norm == 0.0
    for name, norm in expected.items():
        assert rec.layers[name].norm == pytest.approx(norm, rel=1e-6)
    assert rec.total_norm == pytest.approx(total, rel=1e-6)
    assert math.isfinite(rec.clip_coef) and rec.clip_coef < 1


class _Pair(nn.Module):
    """Owns its parameter directly (a layer) and returns two tensors."""

    def __init__(self, as_dict: bool):
        super().__init__()
        self.as_dict, self.weight = as_dict, nn.Parameter(torch.randn(6, 8) / 3)

    def forward(self, x):
        h = x @ self.weight
        a, b = torch.tanh(h), h * 2
        return {"a": a, "b": b} if self.as_dict else (a, b)


@pytest.mark.parametrize("as_dict", [False, True], ids=["tuple", "dict"])
def test_modules_returning_tuples_or_dicts(as_dict):
    """act_norm of a multi-output module is the L2 norm over all its output tensors' grads."""
    torch.manual_seed(0)
    pair, head = _Pair(as_dict), nn.Linear(8, 3)
    model = nn.ModuleDict({"pair": pair, "head": head})
    watch = GradWatch(model)
    x, y = _data()
    out = pair(x)
    a, b = (out["a"], out["b"]) if as_dict else out
    a.retain_grad()
    b.retain_grad()
    nn.functional.mse_loss(head(a) + head(b) ** 2, y).backward()
    rec = watch.step()
    assert rec.layers["pair"].act_norm == pytest.approx(_norm([a.grad, b.grad]), rel=1e-6)
    assert rec.layers["pair"].norm == pytest.approx(_gnorm(pair.parameters()), rel=1e-6)


def test_module_called_twice_per_forward():
    """The parameter norm is that of the summed gradient; act_norm covers both calls."""
    torch.manual_seed(0)
    shared, head = nn.Linear(6, 6), nn.Linear(6, 3)
    model = nn.ModuleDict({"shared": shared, "head": head})
    watch = GradWatch(model)
    x, y = _data()
    h1 = shared(x)
    h1.retain_grad()
    h2 = shared(torch.tanh(h1))
    h2.retain_grad()
    nn.functional.mse_loss(head(h2), y).backward()
    rec = watch.step()
    assert rec.layers["shared"].norm == pytest.approx(_gnorm(shared.parameters()), rel=1e-6)
    assert rec.layers["shared"].act_norm == pytest.approx(_norm([h1.grad, h2.grad]), rel=1e-6)
    assert list(rec.layers) == ["shared", "head"]
