"""More misuse, told at once with the fix (or quietly accepted where it is valid): a disabled
GradScaler, watch.step() or note_loss() after optimizer.step(), two open watches of one model,
an error inside `with GradWatch(...)`, a meta-device model, numpy and 0-d tensor numbers, bare
errors of the first hour, and resuming with another clip policy."""

from __future__ import annotations

import json
import warnings

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from torch import nn

from gradwatch import GradWatch, JsonlLogger, Thresholds, read_runs
from gradwatch.clip import AGC, AutoClip, GlobalNorm, Value, ZClip
from gradwatch.measure.statistics import Statistic


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def _batches(n: int, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(5, 4, generator=g) for _ in range(n)]


def _loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).pow(2).mean()


class _Caught:
    """The warnings raised inside the block (all of them, "always")."""

    def __enter__(self) -> list[warnings.WarningMessage]:
        self._cm = warnings.catch_warnings(record=True)
        self.caught = self._cm.__enter__()
        warnings.simplefilter("always")
        return self.caught

    def __exit__(self, *exc) -> None:
        self._cm.__exit__(*exc)


def _messages(caught) -> list[str]:
    return [str(w.message) for w in caught]


# ----------------------------------------------------------------- #7 a disabled GradScaler


@pytest.mark.parametrize("make", [lambda: torch.amp.GradScaler("cpu", enabled=False),
                                  lambda: torch.amp.GradScaler("cuda")],
                         ids=["enabled=False", "cuda-without-cuda"])
def test_a_disabled_grad_scaler_is_taken_as_no_scaler(make):
    if "cuda" in make.__code__.co_consts and torch.cuda.is_available():
        pytest.skip("GradScaler('cuda') is enabled here")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (torch warns that it disables the cuda scaler)
        scaler = make()
    assert not scaler.is_enabled()
    model, twin = _mlp(), _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.5)
    with _Caught() as caught, GradWatch(model, optimizer=opt, scaler=scaler, clip=0.1) as watch:
        assert watch.scaler is None
        for x in _batches(4):
            opt.zero_grad()
            scaler.scale(_loss(model, x)).backward()
            scaler.step(opt)
            scaler.update()
            twin_opt.zero_grad()
            _loss(twin, x).backward()
            expected = torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.1)
            twin_opt.step()
            assert watch.history[-1].total_norm == pytest.approx(expected.item(), rel=1e-6)
    assert not caught, _messages(caught)
    assert len(watch.history) == 4 and not any(r.amp_overflow for r in watch.history)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_scaler_that_is_no_grad_scaler_is_still_refused():
    with pytest.raises(TypeError, match="`scaler`"):
        GradWatch(_mlp(), scaler=object())


# ----------------------------------------------------- #1 watch.step() after optimizer.step()


def _manual(order: str, *, clip=0.01, steps=5, accumulate=1, clamp=False, every=1):
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    with _Caught() as caught, GradWatch(model, clip=clip, every=every) as watch:
        for x in _batches(steps):
            opt.zero_grad()
            for part in x.chunk(accumulate):
                (_loss(model, part) / accumulate).backward()
            if order == "before":
                watch.step()
            opt.step()
            if order == "after":
                watch.step()
            if clamp:  # (weights changed after the step, before the next forward: fine)
                with torch.no_grad():
                    for p in model.parameters():
                        p.clamp_(-0.3, 0.3)
    return model, watch, [w for w in caught if "watch.step()" in str(w.message)]


@pytest.mark.parametrize("every", [1, 3])
def test_watch_step_after_optimizer_step_warns_once_naming_the_fix(every):
    _, watch, caught = _manual("after", every=every)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "Call watch.step() after backward() and before optimizer.step()" in message
    assert "clip had no effect" in message
    assert caught[0].filename == __file__  # (points at the user's line)


@pytest.mark.parametrize("kwargs", [{}, {"accumulate": 5}, {"clamp": True}, {"clip": None},
                                    {"every": 3}],
                         ids=["plain", "accumulation", "clamp-after-step", "no-clip", "every=3"])
def test_watch_step_before_optimizer_step_gives_no_warning_and_clips_as_torch(kwargs):
    model, watch, caught = _manual("before", **kwargs)
    assert not caught
    twin = _mlp()
    opt = torch.optim.SGD(twin.parameters(), lr=0.5)
    clip = kwargs.get("clip", 0.01)
    accumulate = kwargs.get("accumulate", 1)
    for x in _batches(5):
        opt.zero_grad()
        for part in x.chunk(accumulate):
            (_loss(twin, part) / accumulate).backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(twin.parameters(), clip)
        opt.step()
        if kwargs.get("clamp"):
            with torch.no_grad():
                for p in twin.parameters():
                    p.clamp_(-0.3, 0.3)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_watch_step_with_a_grad_scaler_in_the_documented_order_gives_no_warning():
    for order, clip in (("before", 0.01), ("before", None), ("after", None)):
        model = _mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        with _Caught() as caught, GradWatch(model, clip=clip, scaler=scaler) as watch:
            for x in _batches(4):
                opt.zero_grad()
                scaler.scale(_loss(model, x)).backward()
                if order == "before":
                    if clip is not None:
                        scaler.unscale_(opt)
                    watch.step()
                scaler.step(opt)
                scaler.update()
                if order == "after":
                    watch.step()
        told = [w for w in caught if "watch.step()" in str(w.message)]
        assert len(told) == (order == "after"), (order, clip, _messages(caught))
        assert len(watch.history) == 4


def test_sam_style_two_backward_passes_give_no_warning():
    """The weights are perturbed between the two backward passes (SAM's first_step); the
    watch measures the second one's gradients before the real step."""
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with _Caught() as caught, GradWatch(model, clip=1.0) as watch:
        for x in _batches(3):
            opt.zero_grad()
            _loss(model, x).backward()
            with torch.no_grad():
                eps = [0.05 * p.grad / (p.grad.norm() + 1e-12) for p in model.parameters()]
                for p, e in zip(model.parameters(), eps):
                    p.add_(e)
            opt.zero_grad()
            _loss(model, x).backward()
            with torch.no_grad():
                for p, e in zip(model.parameters(), eps):
                    p.sub_(e)
            watch.step()
            opt.step()
    assert not caught, _messages(caught)
    assert len(watch.history) == 3


# ------------------------------------------------ #2 note_loss() after optimizer.step()


def _with_optimizer(where: str, every: int = 1, steps: int = 4):
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    with _Caught() as caught, GradWatch(model, optimizer=opt, every=every) as watch:
        for x in _batches(steps):
            opt.zero_grad()
            loss = _loss(model, x)
            if where == "before-backward":
                watch.note_loss(loss)
            loss.backward()
            if where == "documented":
                watch.note_loss(loss)
            opt.step()
            if where == "after-step":
                watch.note_loss(loss.item())
            losses.append(loss.item())
    return watch, losses, [w for w in caught if "note_loss()" in str(w.message)]


@pytest.mark.parametrize("every", [1, 3])
def test_note_loss_after_optimizer_step_warns_once_naming_the_fix(every):
    _, _, caught = _with_optimizer("after-step", every=every, steps=7)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "Call watch.note_loss(loss) before optimizer.step()" in message
    assert "filed under the next step" in message
    assert caught[0].filename == __file__


@pytest.mark.parametrize("where", ["documented", "before-backward"])
@pytest.mark.parametrize("every", [1, 3])
def test_note_loss_before_optimizer_step_gives_no_warning_and_files_each_loss_right(where, every):
    watch, losses, caught = _with_optimizer(where, every=every, steps=7)
    assert not caught
    recorded = {r.step: r.loss for r in watch.history}
    assert recorded == {k: pytest.approx(losses[k], rel=1e-6) for k in range(0, 7, every)}


def test_note_loss_in_a_manual_loop_gives_no_warning():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with _Caught() as caught, GradWatch(model) as watch:
        for x in _batches(3):
            opt.zero_grad()
            loss = _loss(model, x)
            loss.backward()
            watch.note_loss(loss)
            watch.step()
            opt.step()
    assert not caught, _messages(caught)
    assert all(r.loss is not None for r in watch.history)


# ---------------------------------------------- #4 two open watches of one model, manual


def test_two_open_manual_watches_of_one_model_warn_naming_close():
    model = _mlp()
    first = GradWatch(model, clip=0.5)
    with pytest.warns(UserWarning, match=r"already watched by an open GradWatch.*Call close\(\)"
                                         r" on the other one"):
        second = GradWatch(model)
    second.close()
    with pytest.warns(UserWarning, match="already watched by an open GradWatch"):
        third = GradWatch(model[2])  # (a part of it: its parameters are watched already)
    third.close()
    first.close()
    with _Caught() as caught:
        GradWatch(model).close()  # the other one closed: nothing to say
    assert not caught, _messages(caught)


def test_a_manual_watch_beside_an_optimizer_watch_of_the_model_warns():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with GradWatch(model, optimizer=opt):
        with pytest.warns(UserWarning, match="already watched by an open GradWatch"):
            GradWatch(model).close()


def test_watches_of_separate_models_or_with_separate_optimizers_give_no_warning():
    gen, disc = _mlp(0), _mlp(1)
    both = nn.ModuleDict({"g": gen, "d": disc})
    opt_g = torch.optim.SGD(gen.parameters(), lr=0.1)
    opt_d = torch.optim.SGD(disc.parameters(), lr=0.1)
    with _Caught() as caught:
        a, b = GradWatch(gen), GradWatch(disc)
        c = GradWatch(both, optimizer=opt_g)  # (manual ones are open: c is optimizer-driven,
        a.close(), b.close()                  # but a and b are manual: warned once below)
        c.close()
        d = GradWatch(both, optimizer=opt_g)
        e = GradWatch(both, optimizer=opt_d)  # two optimizers of one module: each its own
        d.close(), e.close()
    assert len(caught) == 1 and "already watched" in str(caught[0].message), _messages(caught)


# --------------------------------------------- #11 an error inside `with GradWatch(...)`


def test_an_error_before_the_first_step_inside_with_gives_no_sam_warning():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with _Caught() as caught, pytest.raises(KeyError, match="acc"):
        with GradWatch(model, optimizer=opt):
            opt.zero_grad()
            _loss(model, torch.randn(5, 4)).backward()
            {}["acc"]  # the user's own bug, before opt.step()
    assert not [m for m in _messages(caught) if "has seen no" in m], _messages(caught)


class _Raising(Statistic):
    name = "boom"
    label = "raises"

    def per_tensor(self, tensors):
        raise RuntimeError("boom")


def test_an_error_in_gradwatchs_own_step_hook_gives_no_sam_warning():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    watch = GradWatch(model, optimizer=opt, statistics=[_Raising()])
    with _Caught() as caught:
        opt.zero_grad()
        _loss(model, torch.randn(5, 4)).backward()
        with pytest.raises(RuntimeError, match="boom"):
            opt.step()
        watch.close()
    assert not [m for m in _messages(caught) if "has seen no" in m], _messages(caught)


def test_a_watch_that_really_saw_no_step_still_says_so():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(UserWarning, match="has seen no SGD.step"):
        with GradWatch(model, optimizer=opt):
            _loss(model, torch.randn(5, 4)).backward()  # (stepped some other way)


# -------------------------------------------------------------- #5 a meta-device model


def test_a_meta_device_model_is_refused_naming_the_parameter_and_the_fix():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match=r"`0.weight` is on the meta device.*to_empty"):
        GradWatch(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="meta device"):
        GradWatch(model, optimizer=opt)
    model.to_empty(device="cpu")
    for m in model.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    with GradWatch(model) as watch:
        model(torch.randn(5, 4)).sum().backward()
        record = watch.step()
    expected = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
    assert record.total_norm == pytest.approx(expected.item(), rel=1e-6)


# ------------------------------------------------- #13 numpy and 0-d tensor numbers


@pytest.mark.parametrize("clip", [np.float32(0.05), np.int64(1), torch.tensor(0.05),
                                  np.array(0.05), 0.05], ids=repr)
def test_a_numpy_or_tensor_clip_is_a_global_norm_clipping_as_torch(clip):
    model, twin = _mlp(), _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.5)
    watch = GradWatch(model, optimizer=opt, clip=clip, every=np.int64(2),
                      history=torch.tensor(3))
    assert isinstance(watch.policy, GlobalNorm) and type(watch.policy.max_norm) is float
    assert type(watch.every) is int and watch.every == 2
    max_norm = float(np.float32(clip)) if isinstance(clip, np.float32) else float(clip)
    for x in _batches(6):
        opt.zero_grad()
        _loss(model, x).backward()
        opt.step()
        twin_opt.zero_grad()
        _loss(twin, x).backward()
        torch.nn.utils.clip_grad_norm_(twin.parameters(), max_norm)
        twin_opt.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [r.step for r in watch.history] == [0, 2, 4]
    json.dumps(watch.state_dict())  # (plain numbers)
    watch.close()


def test_numpy_numbers_reach_the_log_header_as_plain_numbers(tmp_path):
    path = tmp_path / "run.jsonl"
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with GradWatch(model, optimizer=opt, every=np.int64(1), clip=np.float64(1.0),
                   loggers=[JsonlLogger(path)]):
        for x in _batches(2):
            opt.zero_grad()
            _loss(model, x).backward()
            opt.step()
    run = read_runs(path)[0]
    assert run.header["options"]["every"] == 1 and len(run.records) == 2


def test_numpy_and_tensor_numbers_are_taken_by_the_policies_and_thresholds():
    z = ZClip(alpha=np.float32(0.5), warmup=np.int64(10), z_threshold=torch.tensor(2.0))
    assert (z.alpha, z.warmup, z.z_threshold) == (0.5, 10, 2.0) and type(z.warmup) is int
    a = AutoClip(np.float64(10), history=np.int64(100))
    assert a.percentile == 10.0 and a.norms.maxlen == 100
    assert AGC(torch.tensor(0.02, dtype=torch.float64)).clipping == 0.02
    assert Value(np.int64(2)).limit == 2.0
    t = Thresholds(vanishing=torch.tensor(1e-6, dtype=torch.float64), window=torch.tensor(6),
                   persistence=np.int64(3))
    assert (t.vanishing, t.window, t.persistence) == (1e-6, 6, 3)
    assert type(t.window) is int and json.dumps(t.to_dict())


@pytest.mark.parametrize("make, name", [
    (lambda: GradWatch(_mlp(), every="2"), "every"),
    (lambda: GradWatch(_mlp(), every=2.0), "every"),
    (lambda: GradWatch(_mlp(), history=None), "history"),
    (lambda: GradWatch(_mlp(), clip=torch.tensor([1.0, 2.0])), "clip"),
    (lambda: ZClip(alpha="0.9"), "alpha"),
    (lambda: ZClip(warmup=np.float64(10)), "warmup"),
    (lambda: AutoClip("10"), "percentile"),
    (lambda: AutoClip(history=10.0), "history"),
    (lambda: GlobalNorm(None), "max_norm"),
    (lambda: Thresholds(window=torch.tensor(5.0)), "Thresholds.window"),
    (lambda: Thresholds(vanishing="1e-6"), "Thresholds.vanishing"),
])
def test_a_wrong_type_is_a_type_error_naming_the_argument_and_what_was_got(make, name):
    with pytest.raises(TypeError, match=rf"`{name}`.*but got \w+"):
        make()


@pytest.mark.parametrize("make, name, got", [
    (lambda: GradWatch(_mlp(), every=np.int64(0)), "every", "0"),
    (lambda: GradWatch(_mlp(), history=torch.tensor(-1)), "history", "-1"),
    (lambda: GradWatch(_mlp(), clip=np.float32(-1)), "clip", "-1.0"),
    (lambda: ZClip(alpha=np.float32(1.5)), "alpha", "1.5"),
    (lambda: AutoClip(torch.tensor(0.0)), "percentile", "0.0"),
    (lambda: Thresholds(window=np.int64(0)), "Thresholds.window", "0"),
])
def test_a_wrong_value_is_a_value_error_naming_the_argument_and_what_was_got(make, name, got):
    with pytest.raises(ValueError, match=rf"`{name}`.*but got {got}") as info:
        make()
    assert not isinstance(info.value, TypeError)


# ------------------------------------------------------ #15 bare errors of the first hour


def test_the_optimizer_passed_by_position_says_optimizer_keyword():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match=r"pass the optimizer by keyword: "
                                        r"GradWatch\(model, optimizer=opt\)"):
        GradWatch(model, opt)
    with pytest.raises(TypeError, match="only positional argument.*by keyword"):
        GradWatch(model, 1.0)


def test_a_scheduler_as_optimizer_says_pass_scheduler_optimizer():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for scheduler in (torch.optim.lr_scheduler.StepLR(opt, 10),
                      torch.optim.lr_scheduler.ReduceLROnPlateau(opt)):
        with pytest.raises(TypeError, match=r"scheduler.*optimizer=scheduler\.optimizer"):
            GradWatch(model, optimizer=scheduler)
    with pytest.raises(TypeError, match=r"optimizer=scheduler\.optimizer"):
        GradWatch(model, torch.optim.lr_scheduler.StepLR(opt, 10))


@pytest.mark.parametrize("plot", ["plot_flow", "plot_norms", "plot_heatmap"])
def test_plots_given_a_run_the_watch_or_one_record_say_what_to_pass(plot, tmp_path):
    import gradwatch.plot as gp

    path = tmp_path / "run.jsonl"
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with GradWatch(model, optimizer=opt, loggers=[JsonlLogger(path)]) as watch:
        for x in _batches(3):
            opt.zero_grad()
            _loss(model, x).backward()
            opt.step()
    run = read_runs(path)[0]
    draw = getattr(gp, plot)
    for arg, fix in ((run, r"run\.records"), (watch, r"watch\.history"),
                     (watch.history[-1], r"\[record\]")):
        with pytest.raises(TypeError, match=rf"`records`.*{fix}"):
            draw(arg)
    draw(run.records)  # (what the message says to pass works)
    import matplotlib.pyplot as plt

    plt.close("all")


# ------------------------------------------------- #8 resuming with another clip policy


def _trained_state(clip, steps: int = 12) -> dict:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with GradWatch(model, optimizer=opt, clip=clip) as watch:
        for x in _batches(steps):
            opt.zero_grad()
            _loss(model, x).backward()
            opt.step()
        return watch.state_dict()


def _resume(clip, state):
    watch = GradWatch(_mlp(), clip=clip)
    with _Caught() as caught:
        watch.load_state_dict(state)
    watch.close()
    return watch, _messages(caught)


@pytest.mark.parametrize("saved, here, says", [
    (1.0, "auto", r"saved by a watch clipping with GlobalNorm, which keeps no statistics: this "
                  r"watch's ZClip.* starts afresh"),
    (AGC(), AutoClip(), r"clipping with AGC.*AutoClip.* starts afresh"),
    ("auto", 1.0, r"clip statistics \(saved by ZClip: mean, var, warm\) do not fit this "
                  r"watch's GlobalNorm.*: they are dropped\."),
    ("auto", AutoClip(), r"saved by ZClip.*do not fit this watch's AutoClip.*dropped, and the "
                         r"policy starts afresh"),
    (AutoClip(), "auto", r"saved by AutoClip: norms.*ZClip.*dropped, and the policy starts"),
])
def test_resuming_with_another_clip_policy_warns_what_starts_afresh_or_is_dropped(saved, here,
                                                                                   says):
    state = _trained_state(saved)
    watch, messages = _resume(here, state)
    assert len(messages) == 1 and __import__("re").search(says, messages[0]), messages
    assert "Pass the same clip=" in messages[0]
    fresh = GradWatch(_mlp(), clip=type(watch.policy)() if not isinstance(here, float) else 1.0)
    assert watch.policy.state_dict() == fresh.policy.state_dict()  # (as new)
    fresh.close()


def test_resuming_with_the_same_clip_policy_restores_it_exactly_without_a_word():
    for clip in ("auto", AutoClip(), 1.0):
        state = _trained_state(clip)
        assert state["clip_policy"] == {"auto": "ZClip", 1.0: "GlobalNorm"}.get(
            clip, "AutoClip") if isinstance(clip, (str, float)) else "AutoClip"
        watch, messages = _resume(clip if not isinstance(clip, AutoClip) else AutoClip(), state)
        assert not messages and watch.policy.state_dict() == state["clip"]
    _, messages = _resume(Value(1.0), _trained_state(1.0))  # two stateless policies
    assert not messages


def test_an_older_state_without_the_policy_class_still_loads():
    state = _trained_state("auto")
    old = {k: v for k, v in state.items() if k != "clip_policy"}
    watch, messages = _resume("auto", old)
    assert not messages and watch.policy.state_dict() == state["clip"]
    plain = {k: v for k, v in _trained_state(1.0).items() if k != "clip_policy"}
    watch, messages = _resume("auto", plain)
    assert len(messages) == 1 and "starts afresh" in messages[0]
    _, messages = _resume(1.0, old)
    assert len(messages) == 1 and "dropped" in messages[0]
    assert len(state["clip"]["warm"]) == 12  # (the statistics resumed: ZClip's warm-up)
