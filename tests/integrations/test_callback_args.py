"""The Lightning and HF callbacks check their arguments when they are constructed, with the
errors and messages `GradWatch` gives for the same arguments (they used to pass everything on
and fail only when the fit started, after the Trainer had set up; ``loggers="run.jsonl"`` was
split into characters)."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from torch import nn

from gradwatch import GradWatch, JsonlLogger

_FRAMEWORKS = ["lightning", "hf"]


def _callback(framework: str):
    pytest.importorskip({"lightning": "lightning", "hf": "transformers"}[framework])
    return importlib.import_module(f"gradwatch.integrations.{framework}").GradWatchCallback


def _bad(tmp_path):
    return [
        dict(every=0), dict(every="2"), dict(every=1.5), dict(clip=-1), dict(clip="fast"),
        dict(clip=[1.0]), dict(on_nonfinite="bogus"), dict(thresholds={"vanishing": 1e-6}),
        dict(activations="yes"), dict(loggers="run.jsonl"), dict(loggers=None),
        dict(loggers=JsonlLogger(tmp_path / "bare.jsonl")), dict(loggers=[print, 1]),
    ]


@pytest.mark.parametrize("framework", _FRAMEWORKS)
def test_bad_arguments_are_refused_at_construction_as_gradwatch_refuses_them(framework,
                                                                             tmp_path):
    callback = _callback(framework)
    for kwargs in _bad(tmp_path):
        with pytest.raises((TypeError, ValueError)) as by_watch:
            GradWatch(nn.Linear(2, 2), **kwargs)
        with pytest.raises(type(by_watch.value)) as by_callback:
            callback(**kwargs)
        assert str(by_callback.value) == str(by_watch.value), kwargs


@pytest.mark.parametrize("framework", _FRAMEWORKS)
def test_skip_is_refused_with_the_framework_named(framework):
    with pytest.raises(ValueError, match="on_nonfinite='skip' is not supported"):
        _callback(framework)(on_nonfinite="skip")


@pytest.mark.parametrize("framework", _FRAMEWORKS)
def test_good_arguments_are_kept_as_plain_values(framework, tmp_path):
    logger = JsonlLogger(tmp_path / "run.jsonl")
    cb = _callback(framework)(every=np.int64(3), clip=torch.tensor(1.0), loggers=[logger])
    assert cb.options["every"] == 3 and type(cb.options["every"]) is int
    assert cb.options["loggers"] == (logger,)
    cb = _callback(framework)(loggers=(), clip="auto")
    assert cb.options["loggers"] == () and cb.watch is None
