"""Misuse that used to fail late or silently now fails at once, or warns, with the fix: lazy
modules, optimizers that run no hooks or are not optimizers, one optimizer watched twice,
pickling a watch, training with torch.autograd.grad."""

from __future__ import annotations

import copy
import json
import math
import pickle
import warnings
from collections import OrderedDict, defaultdict

import pytest
import torch
from torch import nn

from gradwatch import GradWatch


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def _same(a: dict, b: dict) -> bool:
    """Equal states (NaN equal to NaN, as after a JSON round trip)."""
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def _step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    opt.zero_grad()
    model(torch.randn(5, 4)).square().mean().backward()
    opt.step()


def test_a_lazy_module_that_has_not_run_is_refused_with_the_fix():
    model = nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match=r"`0.weight` belongs to a lazy module.*forward pass"):
        GradWatch(model)
    model(torch.randn(3, 5))  # initialised: watched
    assert len(GradWatch(model).layer_names) == 2


class _LookaheadNoInit(torch.optim.Optimizer):
    """A wrapper that subclasses Optimizer without calling its __init__ (its step runs no
    hooks), as some widely copied Lookahead implementations do."""

    def __init__(self, base: torch.optim.Optimizer) -> None:
        self.optimizer, self.param_groups, self.state = base, base.param_groups, defaultdict(dict)

    def step(self, closure=None):
        return self.optimizer.step(closure)


class _Plain:
    def __init__(self, params) -> None:
        self.params = list(params)

    def step(self) -> None:
        with torch.no_grad():
            for p in self.params:
                p -= 0.1 * p.grad


def test_optimizers_that_run_no_hooks_are_refused_with_the_fix():
    model = _mlp()
    base = torch.optim.Adam(model.parameters(), lr=1e-3)
    with pytest.raises(TypeError, match=r"never called Optimizer.__init__.*opt.optimizer"):
        GradWatch(model, optimizer=_LookaheadNoInit(base))
    with pytest.raises(TypeError, match=r"without `optimizer=` and call watch.step\(\)"):
        GradWatch(model, optimizer=_Plain(model.parameters()))
    watch = GradWatch(model, optimizer=base)  # the wrapped one works through the wrapper
    wrapper = _LookaheadNoInit(base)
    for _ in range(3):
        base.zero_grad()
        model(torch.randn(5, 4)).square().mean().backward()
        wrapper.step()
    assert len(watch.history) == 3


def test_one_optimizer_watched_twice_warns_and_a_closed_or_other_one_does_not():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    first = GradWatch(model, optimizer=opt, clip=0.01)
    with pytest.warns(UserWarning, match=r"SGD is already watched by an open GradWatch"):
        second = GradWatch(model, optimizer=opt)
    second.close()
    first.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GradWatch(model, optimizer=opt).close()  # the others are closed
        a = GradWatch(model, optimizer=torch.optim.SGD(model[0].parameters(), lr=0.1))
        b = GradWatch(model, optimizer=torch.optim.SGD(model[2].parameters(), lr=0.1))
        a.close()
        b.close()


def test_a_watch_refuses_pickling_with_the_fix_and_still_deep_copies():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    watch = GradWatch(model, optimizer=opt)
    _step(model, opt)
    with pytest.raises(TypeError, match=r"cannot be pickled: save watch.state_dict\(\)"):
        pickle.dumps(watch)
    twin = copy.deepcopy(watch)
    assert twin.step_count == 1 and twin.history[-1].total_norm == watch.history[-1].total_norm
    state = watch.state_dict()
    other = _mlp()
    fresh = GradWatch(other, optimizer=torch.optim.SGD(other.parameters(), lr=0.1))
    fresh.load_state_dict(pickle.loads(pickle.dumps(state)))
    assert fresh.step_count == 1


def test_training_with_autograd_grad_says_where_the_gradients_went():
    model = _mlp()
    watch = GradWatch(model)
    loss = model(torch.randn(5, 4)).square().mean()
    grads = torch.autograd.grad(loss, list(model.parameters()))
    with pytest.warns(RuntimeWarning, match=r"torch.autograd.grad.*p.grad = g"):
        assert watch.step() is None
    for p, g in zip(model.parameters(), grads):
        p.grad = g
    record = watch.step()
    expected = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    assert record.total_norm == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("key, value", [("run", None), ("counts", None), ("stats", None),
                                        ("total_stats", [1, 2]), ("judge", "x")])
def test_a_state_with_a_bad_value_is_refused_naming_its_key(key, value):
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    watch = GradWatch(model, optimizer=opt)
    for _ in range(3):
        _step(model, opt)
    state = watch.state_dict()
    other = _mlp()
    fresh = GradWatch(other, optimizer=torch.optim.SGD(other.parameters(), lr=0.1))
    before = fresh.state_dict()
    with pytest.raises(ValueError, match=rf"state\[{key!r}\] to be a"):
        fresh.load_state_dict({**state, key: value})
    assert fresh.step_count == 0 and _same(fresh.state_dict(), before)


def test_a_state_that_fails_inside_leaves_the_watch_as_it_was():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    watch = GradWatch(model, optimizer=opt)
    for _ in range(3):
        _step(model, opt)
    state = watch.state_dict()
    before = watch.state_dict()
    bad = {**state, "step": 7, "stats": {"0": {"count": "many"}}}  # a dict, wrong inside
    with pytest.raises(ValueError, match=r"loading it failed .*the watch is unchanged"):
        watch.load_state_dict(bad)
    assert watch.step_count == 3 and _same(watch.state_dict(), before)


def test_a_state_failing_in_torch_is_refused_restored_and_the_log_is_not_resumed(tmp_path):
    """A unit window of the wrong length fails inside torch (a RuntimeError from reshape): it
    was not caught, so the watch stayed half-loaded (step 10 of the other run). Refused now,
    and the put-back state writes no "resumed" header into the log of a run that never
    resumed."""
    from gradwatch.io.loggers import JsonlLogger
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "run.jsonl"
    watch = GradWatch(model, optimizer=opt, loggers=[JsonlLogger(path)])
    for _ in range(4):
        _step(model, opt)
    before = watch.state_dict()
    bad = {**before, "step": 10, "units": [[[1, 2, 3], [1, 2]]]}  # 6 units, 2 counts
    with pytest.raises(ValueError, match=r"loading it failed .*the watch is unchanged"):
        watch.load_state_dict(bad)
    assert watch.step_count == 4 and _same(watch.state_dict(), before)
    _step(model, opt)
    watch.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    headers = [line["gradwatch_run"] for line in lines if "gradwatch_run" in line]
    assert len(headers) == 1 and headers[0]["resumed"] is False


def test_a_state_saved_without_some_of_the_layers_warns_naming_them():
    small, big = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)), \
        nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    opt = torch.optim.SGD(small.parameters(), lr=0.1)
    watch = GradWatch(small, optimizer=opt)
    for _ in range(3):
        _step(small, opt)
    state = watch.state_dict()
    assert state["layers"] == ["0", "2"]
    fresh = GradWatch(big, optimizer=torch.optim.SGD(big.parameters(), lr=0.1))
    with pytest.warns(UserWarning, match=r"without 1 of this watch's 3 layers \(\['4'\]\)"):
        fresh.load_state_dict(state)
    assert fresh.step_count == 3
    same = GradWatch(small, optimizer=opt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same.load_state_dict(state)
        same.load_state_dict({k: v for k, v in state.items() if k != "layers"})  # older states


def test_a_logger_that_raises_warns_and_training_goes_on(tmp_path):
    """A disk full or a logging service down: the optimizer step stands, the record is kept,
    the logger gets nothing more, the others keep logging, and it is still closed."""
    calls, closed = [], []

    class Flaky:
        def __call__(self, record):
            calls.append(record.step)
            if record.step == 1:
                raise OSError("No space left on device")

        def close(self):
            closed.append(True)

    kept = []
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    watch = GradWatch(model, optimizer=opt, loggers=[Flaky(), kept.append])
    _step(model, opt)
    before = model[0].weight.detach().clone()
    with pytest.warns(RuntimeWarning, match=r"logger Flaky raised OSError: No space left"):
        _step(model, opt)
    assert not torch.equal(before, model[0].weight)  # the step was taken
    _step(model, opt)
    watch.close()
    assert calls == [0, 1] and [r.step for r in kept] == [0, 1, 2] and closed == [True]
    assert [r.step for r in watch.history] == [0, 1, 2]


def test_a_state_and_a_watch_that_clip_differently_warn_what_happens_to_the_clip_statistics():
    """A ZClip watch loading a state saved without clipping started its warm-up afresh without
    a word; a watch without clipping dropped a saved ZClip's statistics silently."""
    def trained(clip, steps=25):
        model = _mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        watch = GradWatch(model, optimizer=opt, clip=clip)
        for _ in range(steps):
            _step(model, opt)
        return watch

    plain, zclip = trained(None).state_dict(), trained("auto").state_dict()
    assert zclip["clip"]["mean"] is not None and plain["clip"] is None
    with pytest.warns(UserWarning, match=r"no statistics for this watch's clip policy \(ZClip"):
        trained("auto", 0).load_state_dict(plain)
    with pytest.warns(UserWarning, match="carries a clip policy's statistics but this watch "
                                         "does not clip: they are dropped"):
        trained(None, 0).load_state_dict(zclip)
    same = trained("auto", 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same.load_state_dict(zclip)
        trained(1.0, 0).load_state_dict(plain)  # a stateless policy has nothing to resume
    assert same.policy.state_dict() == zclip["clip"]


class _LookaheadOwnHooks(_LookaheadNoInit):
    """timm's Lookahead: no Optimizer.__init__, but the hook dicts made by hand, so torch
    wraps its step with the hook runner only at the first ``zero_grad()`` on it."""

    def __init__(self, base: torch.optim.Optimizer) -> None:
        super().__init__(base)
        self._optimizer_step_pre_hooks = OrderedDict()
        self._optimizer_step_post_hooks = OrderedDict()


def test_a_wrapper_with_hand_made_hook_dicts_is_watched_from_its_first_step():
    """Zeroed through the model (never ``wrapper.zero_grad()``), its step ran no hooks: no
    record and no clipping, silently. Now every step is measured and clipped as
    ``clip_grad_norm_`` would."""
    model, twin = _mlp(), _mlp()
    twin.load_state_dict(model.state_dict())
    wrapper = _LookaheadOwnHooks(torch.optim.SGD(model.parameters(), lr=0.1))
    plain = torch.optim.SGD(twin.parameters(), lr=0.1)
    watch = GradWatch(model, optimizer=wrapper, clip=0.01)
    x = torch.randn(5, 4)
    for _ in range(3):
        model.zero_grad()
        model(x).square().mean().backward()
        wrapper.step()
        twin.zero_grad()
        twin(x).square().mean().backward()
        torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.01)
        plain.step()
    assert [r.step for r in watch.history] == [0, 1, 2]
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))


class _SAM(torch.optim.Optimizer):
    """Sharpness-aware minimisation as commonly written (davda54/sam): a first step to the
    perturbed weights, a second back and the base optimizer's step."""

    def __init__(self, params, base_cls=torch.optim.SGD, rho=0.05, **kw) -> None:
        super().__init__(params, dict(rho=rho, **kw))
        self.base_optimizer = base_cls(self.param_groups, **kw)

    @torch.no_grad()
    def first_step(self) -> None:
        norm = torch.norm(torch.stack([p.grad.norm() for g in self.param_groups
                                       for p in g["params"] if p.grad is not None]))
        for g in self.param_groups:
            for p in g["params"]:
                e = p.grad * g["rho"] / (norm + 1e-12)
                p.add_(e)
                self.state[p]["e"] = e

    @torch.no_grad()
    def second_step(self) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                p.sub_(self.state[p]["e"])
        self.base_optimizer.step()

    def step(self, closure=None):
        closure()
        self.first_step()
        self.zero_grad()
        closure()
        self.second_step()


def test_sam_points_to_its_base_optimizer():
    model = _mlp()
    sam = _SAM(model.parameters(), lr=0.1)
    x = torch.randn(5, 4)

    def closure():
        sam.zero_grad()
        loss = model(x).square().mean()
        loss.backward()
        return loss

    with pytest.raises(RuntimeError, match=r"optimizer=opt.base_optimizer"):
        with GradWatch(model, optimizer=sam):
            sam.step(closure)
    # stepped through first_step()/second_step(): the watch never sees sam.step()
    with pytest.warns(UserWarning, match=r"has seen no _SAM.step\(\).*sam.base_optimizer"):
        with GradWatch(model, optimizer=sam) as watch:
            for _ in range(3):
                closure()
                sam.first_step()
                closure()
                sam.second_step()
            assert watch.diagnose() == []
    # the usual second_step(zero_grad=True) leaves no gradient at the end: still warned
    with pytest.warns(UserWarning, match=r"has seen no _SAM.step\(\).*sam.base_optimizer"):
        with GradWatch(model, optimizer=sam) as watch:
            for _ in range(3):
                closure()
                sam.first_step()
                closure()
                sam.second_step()
                sam.zero_grad()
        assert all(p.grad is None for p in model.parameters()) and not watch.history
    with GradWatch(model, optimizer=sam.base_optimizer) as watch:  # the way that works
        for _ in range(3):
            closure()
            sam.first_step()
            sam.zero_grad()
            closure()
            grads = [p.grad.norm().item() for p in model.parameters()]
            sam.second_step()
    assert [r.step for r in watch.history] == [0, 1, 2]
    assert watch.history[-1].layers["2"].norm == pytest.approx(
        math.hypot(grads[2], grads[3]), rel=1e-6)
