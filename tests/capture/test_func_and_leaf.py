"""Unusual autograd around a watched model, checked against plain torch: torch.func transforms
(per-sample gradients by ``vmap(grad(...))``, ``functional_call`` + ``grad``, a ``vmap``
forward), gradients batched by a vmap, a reduction that fails, a layer whose output or input is
a leaf Parameter (DETR/Q-Former queries), a user forward hook added after the watch with
``every > 1``, and a layer returning a plain ``@dataclass``."""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

import gradwatch.capture.gradhooks as gradhooks
from gradwatch import GradWatch
from gradwatch.capture.hooks import Hook
from reference import norm, param_grad_norms

torch.set_num_threads(1)

REL = 1e-6


def _close(got: float | None, want: float) -> bool:
    return got is not None and math.isclose(got, want, rel_tol=REL)


def _out_grad_norms(model: nn.Module, names: list[str], run) -> dict[str, float]:
    """Plain torch: the float64 norm of the gradients w.r.t. the named modules' outputs (over
    all their calls and backward passes), from tensor hooks that forward hooks put on them;
    ``run`` does the forwards and backwards."""
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}

    def hook(name):
        def forward_hook(module, args, out):
            for t in ([out] if isinstance(out, torch.Tensor) else
                      [getattr(out, f.name) for f in dataclasses.fields(out)]):
                if isinstance(t, torch.Tensor) and t.requires_grad:
                    t.register_hook(lambda g, name=name: seen[name].append(g.detach().clone()))
        return forward_hook

    handles = [model.get_submodule(n).register_forward_hook(hook(n), prepend=True)
               for n in names]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return {n: norm(gs) for n, gs in seen.items()}


def _mlp(act: type[nn.Module] = nn.Tanh) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), act(), nn.Linear(8, 8), act(), nn.Linear(8, 1))


def _xy(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 4, generator=g), torch.randn(n, 1, generator=g)


def _assert_norms_exact(watch: GradWatch, model: nn.Module) -> None:
    want = param_grad_norms(model)
    layers = watch.history[-1].layers
    assert want and all(_close(layers[n].norm, v) for n, v in want.items()), (
        {n: layers[n].norm for n in want}, want)


# ---------------------------------------------------------------- F1: torch.func


def _per_sample(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """Opacus / the functorch tutorial: per-sample gradients by vmap(grad(...)), averaged
    into .grad by assignment."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss1(p, xi, yi):
        return nn.functional.mse_loss(functional_call(model, p, (xi[None],)), yi[None])

    gs = vmap(grad(loss1), in_dims=(None, 0, 0))(params, x, y)
    for k, p in model.named_parameters():
        p.grad = gs[k].mean(0)


def _func_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    params = {k: v.detach() for k, v in model.named_parameters()}
    gs = grad(lambda p: nn.functional.mse_loss(functional_call(model, p, (x,)), y))(params)
    for k, p in model.named_parameters():
        p.grad = gs[k]


@pytest.mark.parametrize("act", [nn.Tanh, nn.ReLU, nn.GELU])
@pytest.mark.parametrize("fill", [_per_sample, _func_grad])
def test_torch_func_gradients_train_with_exact_norms(act, fill):
    model = _mlp(act)
    twin = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt_twin = torch.optim.SGD(twin.parameters(), lr=0.1)
    x, y = _xy()
    watch = GradWatch(model, optimizer=opt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (no act_norm under torch.func: said once)
        for _ in range(3):
            for m, o in ((model, opt), (twin, opt_twin)):
                o.zero_grad()
                fill(m, x, y)
            opt.step()
            opt_twin.step()
            _assert_norms_exact(watch, model)
    watch.close()
    assert len(watch.history) == 3
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters()))


def test_torch_func_grad_alone_measures_output_gradients_as_a_backward_does():
    """``torch.func.grad`` (no vmap) runs the model once per step: its output gradients are
    measured as plain torch's through a backward; under vmap (per-sample) they are not."""
    for fill in (_func_grad, _per_sample):
        model = _mlp()
        twin = copy.deepcopy(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x, y = _xy()
        got: dict[str, torch.Tensor] = {}
        twin[2].register_forward_hook(
            lambda m, i, o: [o.register_hook(lambda g: got.__setitem__("2", g))] and None)
        nn.functional.mse_loss(twin(x), y).backward()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with GradWatch(model, optimizer=opt) as watch:
                opt.zero_grad()
                fill(model, x, y)
                opt.step()
        act = watch.history[-1].layers["2"].act_norm
        if fill is _func_grad:
            assert _close(act, torch.linalg.vector_norm(got["2"].double()).item())
        else:
            assert act is None


@pytest.mark.parametrize("act", [nn.Tanh, nn.ReLU])
def test_vmap_forward_under_no_grad_leaves_the_step_exact(act):
    model = _mlp(act)
    twin = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt_twin = torch.optim.SGD(twin.parameters(), lr=0.1)
    x, y = _xy()
    names = ["0", "2", "4"]
    watch = GradWatch(model, optimizer=opt)
    for _ in range(3):
        opt.zero_grad()
        with torch.no_grad():
            vmap(lambda xi: model(xi[None]))(x)  # e.g. a per-sample evaluation
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        opt_twin.zero_grad()
        want = _out_grad_norms(twin, names, lambda: nn.functional.mse_loss(
            twin(x), y).backward())
        opt_twin.step()
        rec = watch.history[-1]
        assert all(_close(rec.layers[n].act_norm, want[n]) for n in names)
        assert all(_close(rec.layers[n].norm, v) for n, v in param_grad_norms(twin).items())
    watch.close()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters()))


def test_gradients_batched_by_autograd_grad_leave_the_step_exact():
    """``autograd.grad(..., is_grads_batched=True)`` (``jacobian(vectorize=True)``) through
    the watched layers hands their hooks gradients batched by a vmap: the step's numbers are
    the accumulating pass's, as without it."""
    model = _mlp()
    twin = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt_twin = torch.optim.SGD(twin.parameters(), lr=0.1)
    x, y = _xy()
    names = ["0", "2", "4"]
    watch = GradWatch(model, optimizer=opt)
    for _ in range(3):
        opt.zero_grad()
        xr = x.clone().requires_grad_()
        out = model(xr)
        torch.autograd.grad(out, xr, torch.eye(8)[:, :, None], is_grads_batched=True,
                            retain_graph=True)  # a Jacobian penalty would use this
        nn.functional.mse_loss(out, y).backward()
        opt.step()
        opt_twin.zero_grad()
        want = _out_grad_norms(twin, names, lambda: nn.functional.mse_loss(
            twin(x.clone().requires_grad_()), y).backward())
        opt_twin.step()
        rec = watch.history[-1]
        assert all(_close(rec.layers[n].act_norm, want[n]) for n in names)
        assert all(_close(rec.layers[n].norm, v) for n, v in param_grad_norms(twin).items())
    watch.close()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters()))


def test_a_failed_reduction_is_not_held_into_later_steps(monkeypatch):
    """A reduction that raises at a step (as one holding a tensor of a vmap that returned
    did) loses that step's record, not every later one's: what it held is dropped."""
    model = _mlp()
    twin = copy.deepcopy(model)
    x, y = _xy()
    names = ["0", "2", "4"]
    watch = GradWatch(model)
    real, bad = gradhooks._norms64, []

    def flaky(tensors, *args, **kwargs):  # the first batch's tensors cannot be reduced
        if not bad:
            bad.extend(tensors)
        if any(t is b for t in tensors for b in bad):
            raise RuntimeError("injected")
        return real(tensors, *args, **kwargs)

    monkeypatch.setattr(gradhooks, "_norms64", flaky)
    nn.functional.mse_loss(model(x), y).backward()
    with pytest.raises(RuntimeError, match="injected"):
        watch.step()
    for k in range(2):
        model.zero_grad()
        twin.zero_grad()
        xk = x + k
        nn.functional.mse_loss(model(xk), y).backward()
        rec = watch.step()
        want = _out_grad_norms(twin, names, lambda: nn.functional.mse_loss(
            twin(xk), y).backward())
        assert all(_close(rec.layers[n].act_norm, want[n]) for n in names), (
            {n: rec.layers[n].act_norm for n in names}, want)
        assert all(_close(rec.layers[n].norm, v) for n, v in param_grad_norms(twin).items())
    watch.close()


# ---------------------------------------------------------------- F3: leaf parameters


class _Queries(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(5, 8) * 0.5)

    def forward(self):
        return self.weight  # a module returning its own parameter (learned queries)


class _Decoder(nn.Module):
    """DETR/Q-Former-like: `dec` is called on the query Parameter itself."""

    def __init__(self):
        super().__init__()
        self.queries, self.dec, self.head = _Queries(), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        d = self.dec(self.queries())
        return self.head(torch.tanh(x @ d.t()).mean(1, keepdim=True).expand(-1, 8))


def _gradwatch_hooks(p: torch.Tensor) -> int:
    return sum(isinstance(h, Hook) for h in (p._backward_hooks or {}).values())


def test_leaf_parameter_output_and_input_hooked_once_per_step():
    torch.manual_seed(0)
    model = _Decoder()
    twin = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    opt_twin = torch.optim.SGD(twin.parameters(), lr=1e-2)
    x, y = torch.randn(4, 8), torch.randn(4, 3)
    p = model.queries.weight
    watch = GradWatch(model, optimizer=opt)
    counts = []
    for step in range(100):
        for m, o in ((model, opt), (twin, opt_twin)):
            o.zero_grad()
            nn.functional.mse_loss(m(x), y).backward()
        want = p.grad.double().norm().item()  # the module's output IS the parameter
        assert torch.equal(p.grad, twin.queries.weight.grad)
        opt.step()
        opt_twin.step()
        counts.append(len(p._backward_hooks or {}))
        assert _close(watch.history[-1].layers["queries"].act_norm, want), step
    assert len(set(counts)) == 1  # (the zero-grad check's one, taken out by close)
    watch.close()
    assert _gradwatch_hooks(p) == 0 and not p._backward_hooks
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))


def test_leaf_parameter_output_over_two_backward_passes():
    """Two forward/backward passes in a step (accumulation): the leaf's hook counts each
    pass's gradient once, act_norm = sqrt(|g1|^2 + |g2|^2) as for any other layer."""
    torch.manual_seed(0)
    model = _Decoder()
    x, y = torch.randn(4, 8), torch.randn(4, 3)
    p = model.queries.weight
    watch = GradWatch(model)
    for step in range(3):
        model.zero_grad()
        parts = []
        for k in range(2):
            before = torch.zeros_like(p) if p.grad is None else p.grad.clone()
            nn.functional.mse_loss(model(x * (k + 1)), y).backward()
            parts.append(p.grad - before)  # this pass's gradient w.r.t. the output `p`
        rec = watch.step()
        assert _close(rec.layers["queries"].act_norm, norm(parts)), step
    watch.close()
    assert not p._backward_hooks


# ---------------------------------------------------------------- F8: hook order, every > 1


def test_user_hook_added_after_the_watch_keeps_its_order_with_every_2():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    twin = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # the same weights at every step
    watch = GradWatch(model, optimizer=opt, every=2)
    for m in (model, twin):
        m[0].register_forward_hook(lambda mod, args, out: out * 10.0)  # replaces the output
    x, y = torch.randn(8, 6), torch.randn(8, 3)
    # the watch's hook was registered first: it sees the raw output, as a hook of ours
    # put before the user's does on the twin
    raw = _out_grad_norms(twin, ["0"], lambda: nn.functional.mse_loss(twin(x), y).backward())
    got = []
    for step in range(6):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        if step % 2 == 0:
            got.append(watch.history[-1].layers["0"].act_norm)
    watch.close()
    assert len(got) == 3 and all(_close(g, raw["0"]) for g in got), (got, raw)


def test_slot_keeps_its_place_among_hooks_added_before_and_after():
    """Hooks registered before the watch, after it, and prepended while its hook was out:
    each recorded step sees the order it would with the hook never taken out."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    calls: list[str] = []

    def tag(name):
        return lambda mod, args, out: calls.append(name)

    model[0].register_forward_hook(tag("before"))
    watch = GradWatch(model, optimizer=opt, every=2)
    model[0].register_forward_hook(tag("after"))
    x, y = torch.randn(8, 6), torch.randn(8, 3)
    orders = []
    for step in range(6):
        if step == 3:  # while gradwatch's hook is out (an unrecorded step)
            model[0].register_forward_hook(tag("first"), prepend=True)
        opt.zero_grad()
        calls.clear()
        nn.functional.mse_loss(model(x), y).backward()
        if step % 2 == 0:
            kinds = ["Hook" if isinstance(h, Hook) else type(h).__name__
                     for h in model[0]._forward_hooks.values()]
            orders.append((list(calls), kinds))
        opt.step()
    watch.close()
    assert orders[0] == (["before", "after"], ["function", "Hook", "function"])
    assert orders[1] == orders[0]
    assert orders[2] == (["first", "before", "after"], ["function", "function", "Hook",
                                                        "function"])


class _Root(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 16), nn.Linear(16, 3)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


@pytest.mark.parametrize("user_first", [False, True])
def test_hooks_sharing_the_roots_dict_keep_their_order_with_every_2(user_first):
    """The root's dict holds two gradwatch hooks (the model call's end, the root's output)
    and maybe a user's: taken out and put back at every unrecorded step, they run in the
    order they were registered in."""
    model = _Root()
    if user_first:
        model.register_forward_hook(lambda mod, args, out: None)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    watch = GradWatch(model, optimizer=opt, every=2)
    x, y = torch.randn(8, 6), torch.randn(8, 3)
    orders = []
    for step in range(6):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        if step % 2 == 0:
            orders.append([h.method if isinstance(h, Hook) else "user"
                           for h in model._forward_hooks.values()])
        opt.step()
    watch.close()
    assert orders[0] == ["user"] * user_first + ["on_model_return", "on_forward"]
    assert orders[1] == orders[2] == orders[0]


# ---------------------------------------------------------------- F9: dataclass outputs


@dataclasses.dataclass
class _Out:
    hidden: torch.Tensor
    label: str = "enc"


class _Enc(nn.Module):
    def __init__(self, poison: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 6) * 0.3)
        self.poison = poison

    def forward(self, x):
        h = x @ self.weight.t()
        if self.poison:
            h = h / torch.zeros_like(h) * 0  # NaN born here (0/0)
        return _Out(hidden=torch.tanh(h))


class _DataclassNet(nn.Module):
    def __init__(self, poison: bool = False):
        super().__init__()
        self.enc, self.head = _Enc(poison), nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.enc(x).hidden)


def test_dataclass_output_gets_act_norm_and_its_nan_birth():
    torch.manual_seed(0)
    model = _DataclassNet()
    twin = copy.deepcopy(model)
    x, y = torch.randn(8, 6), torch.randn(8, 3)
    want = _out_grad_norms(twin, ["enc", "head"], lambda: nn.functional.mse_loss(
        twin(x), y).backward())
    with GradWatch(model) as watch:
        nn.functional.mse_loss(model(x), y).backward()
        rec = watch.step()
    assert _close(rec.layers["enc"].act_norm, want["enc"])
    assert _close(rec.layers["head"].act_norm, want["head"])

    torch.manual_seed(0)
    model = _DataclassNet(poison=True)
    with GradWatch(model) as watch, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nn.functional.mse_loss(model(x), y).backward()
        rec = watch.step()
    assert rec.nonfinite_origin == "forward" and rec.first_nonfinite == "enc"
