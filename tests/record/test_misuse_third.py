"""Misuse that used to pass silently: a `with` block on a closed watch (clipping had stopped), a
logger class instead of a logger, a folder no log can be created in, a bool option given as a
string, an empty TensorBoard directory, a bool tensor as the loss."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from gradwatch import CsvLogger, GradWatch, JsonlLogger
from gradwatch.clip import AGC, ZClip


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    return model, torch.optim.SGD(model.parameters(), lr=0.1), torch.randn(16, 4)


def test_a_second_with_block_on_a_closed_watch_is_refused_before_training_runs_unclipped():
    model, opt, x = _setup()
    watch = GradWatch(model, optimizer=opt, clip=1e-3)
    with watch:  # epoch 0: clipped
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        before = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
        opt.step()
    assert watch.history[-1].clip_coef < 1e-2 and float(before) > 0.1
    with pytest.raises(RuntimeError, match=r"`with watch:` was entered after close\(\).*new "
                                           r"GradWatch"):
        with watch:  # epoch 1: the watch was closed at the end of the first block
            pass
    # the misuse of `with watch:` per epoch is told; the watch's other calls say the same
    with pytest.raises(RuntimeError, match=r"note_loss\(\) was called after close\(\)"):
        watch.note_loss(1.0)


@pytest.mark.parametrize("cls", [JsonlLogger, CsvLogger])
def test_a_logger_class_is_refused_naming_its_position(cls):
    model, opt, _ = _setup()
    with pytest.raises(TypeError, match=r"loggers\[1\] is type .*which is a class; pass logger "
                                        r"objects"):
        GradWatch(model, optimizer=opt, loggers=[lambda r: None, cls])


def test_a_bool_tensor_loss_is_refused_like_a_bool():
    model, opt, _ = _setup()
    watch = GradWatch(model)
    with pytest.raises(TypeError, match="`loss`.*bool tensor"):
        watch.note_loss(torch.tensor(True))
    with pytest.raises(TypeError, match="`loss`"):
        watch.note_loss(True)
    watch.note_loss(torch.tensor(0.5))  # a real loss still passes
    watch.close()


@pytest.mark.parametrize("make, name", [
    (lambda v: AGC(skip_output=v), "skip_output"),
    (lambda v: ZClip(skip_update_on_spike=v), "skip_update_on_spike")])
def test_a_clip_flag_given_as_a_string_is_refused(make, name):
    for bad in ("False", 0, None, 1.0):
        with pytest.raises(TypeError, match=f"`{name}` to be True or False"):
            make(bad)
    assert getattr(make(False), name) is False and getattr(make(True), name) is True
    import numpy as np
    assert getattr(make(np.bool_(False)), name) is False


@pytest.mark.parametrize("cls, example", [(JsonlLogger, "run.jsonl"), (CsvLogger, "run.csv")])
def test_a_log_in_a_folder_that_refuses_new_files_is_refused_at_construction(
        tmp_path, monkeypatch, cls, example):
    """A folder where the file cannot be created (read-only; as root, /sys): the trial creation
    fails, so the logger says so at once instead of warning at the first record."""
    import builtins
    target = tmp_path / "ro" / example
    target.parent.mkdir()
    real_open = builtins.open

    def refusing(file, mode="r", *args, **kwargs):
        if str(file) == str(target) and any(c in mode for c in "wa"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing)
    with pytest.raises(ValueError, match=r"cannot be created \(Permission denied\)"):
        cls(target)
    monkeypatch.setattr(builtins, "open", real_open)
    cls(target).close()  # a folder that takes it: accepted, and the trial file is not left
    assert not target.exists() or target.stat().st_size == 0


def test_tensorboard_logger_refuses_an_empty_directory():
    pytest.importorskip("torch.utils.tensorboard")
    from gradwatch.integrations.tensorboard import TensorBoardLogger
    with pytest.raises(ValueError, match="`writer_or_logdir`.*empty path"):
        TensorBoardLogger("")


@pytest.mark.parametrize("policy, key, bad", [
    ("zclip", "var", -1.0), ("zclip", "mean", float("nan")), ("zclip", "warm", [1.0, "x"]),
    ("zclip", "warm", 3.0), ("autoclip", "norms", [1.0, float("inf")]),
    ("autoclip", "norms", {"a": 1})])
def test_a_corrupt_clip_state_is_refused_at_load_and_the_watch_is_unchanged(policy, key, bad):
    """A ZClip variance of -1 loaded and then failed deep in the next step (a complex square
    root); every statistic is checked when it loads."""
    from gradwatch.clip import AutoClip
    model, opt, x = _setup()
    make = (lambda: ZClip(warmup=2)) if policy == "zclip" else (lambda: AutoClip())
    watch = GradWatch(model, optimizer=opt, clip=make())
    for _ in range(4):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    state = watch.state_dict()
    state["clip"][key] = bad
    fresh = GradWatch(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), clip=make())
    before = json.dumps(fresh.state_dict(), default=str)
    with pytest.raises(ValueError, match=f"{type(make()).__name__} state\\['{key}'\\]"):
        fresh.load_state_dict(state)
    assert json.dumps(fresh.state_dict(), default=str) == before  # unchanged
    watch.close(), fresh.close()


def test_a_watch_collected_before_its_first_record_says_so(tmp_path):
    """`GradWatch(...)` as a bare statement is collected at once: no clipping, no log. It
    warns then; a watch closed on purpose, or one that recorded, does not."""
    import gc
    import warnings
    model, opt, x = _setup()
    with pytest.warns(UserWarning, match="garbage-collected before it recorded a step.*keep a "
                                         "reference") as caught:
        GradWatch(model, optimizer=opt, clip=0.01, loggers=[JsonlLogger(tmp_path / "a.jsonl")])
        gc.collect()
    assert [w.filename for w in caught if "garbage" in str(w.message)] == [__file__]  # the line
    opt.zero_grad()
    model(x).pow(2).mean().backward()
    norm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])))
    assert norm > 0.01  # (the hooks are gone: nothing clips this step)
    opt.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.zero_grad(set_to_none=True)  # (a watch closed over held gradients says more)
        GradWatch(model, optimizer=opt).close()  # closed on purpose
        used = GradWatch(model, optimizer=opt)
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()  # recorded
        del used
        gc.collect()


def test_an_unknown_report_option_shows_the_report_usage(capsys):
    from gradwatch.io.cli import main
    assert main(["report", "run.jsonl", "-o", "out"]) == 2
    err = capsys.readouterr().err
    assert "usage: gradwatch report" in err and "unrecognized arguments: -o out" in err
    assert "--out DIR" in err  # the option it meant


def test_a_window_below_the_default_persistence_says_which_is_the_default():
    from gradwatch import Thresholds
    with pytest.raises(ValueError, match=r"persistence=4 \(its default\), window=3; pass both, "
                                         r"e\.g\. Thresholds\(window=3, persistence=3\)"):
        Thresholds(window=3)
    assert Thresholds(window=3, persistence=3).persistence == 3
