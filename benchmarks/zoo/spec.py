"""What a zoo run is: its label (written before any verdict was read), its setup and its checks."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

__all__ = ["HEALTHY", "KINDS", "Label", "Run", "Setup", "split_of"]

HEALTHY = "healthy"
# The finding kinds of `GradWatch.diagnose()` (see /tmp/gw_team.md); a label is one of them or HEALTHY.
KINDS = ("vanishing", "exploding", "divergence", "dead_units", "saturation",
         "vanishing_through_time", "nonfinite_forward", "nonfinite_backward", "nonfinite_loss",
         "amp_overflow", "stalled", "zero_gradient", "loss_rising", "no_gradient", "not_zeroed",
         "not_moving")


@dataclass(frozen=True)
class Label:
    """The expected verdict on a run, fixed from the literature before gradwatch is asked.

    Attributes:
        kind: ``"healthy"`` or one of `KINDS`.
        birth: For non-finite kinds, the qualified name of the module where the NaN/Inf is born,
            a parameter-free one included (``"loss"`` when it is born in the loss); ``None``
            otherwise.
        head: For ``birth == "loss"``: the layer nearest the loss in gradwatch's layer list, which
            is what the per-step ``first_nonfinite`` contract names for a loss-born NaN.
        cite: The source that says this setup behaves this way.
    """

    kind: str
    birth: str | None = None
    head: str | None = None
    cite: str = ""

    def __post_init__(self) -> None:
        if self.kind != HEALTHY and self.kind not in KINDS:
            raise ValueError(f"Expected `kind` to be 'healthy' or one of {KINDS}, but got "
                             f"{self.kind!r}.")

    @property
    def healthy(self) -> bool:
        return self.kind == HEALTHY


@dataclass
class Setup:
    """A built run: the model, its optimizer, the data and the loss.

    Attributes:
        model: The model (random init, built from a config).
        optimizer: Its optimizer.
        batch: Maps a step index to that step's batch (deterministic).
        loss: Maps ``(model, batch)`` to the scalar training loss.
        scaler: A ``torch.amp.GradScaler`` for AMP runs (then ``amp_dtype`` is the autocast dtype).
        amp_dtype: The CPU autocast dtype, or ``None`` for plain fp32.
        probe: Optional ``(model, batch) -> {name: value}`` run on a copy of the model before
            training (plain-torch evidence that the label is right, e.g. the gradient reaching
            the first time step).
        after: Optional probe of the same form run on the trained model (e.g. the dead share).
        zero_grad: Whether the loop calls ``optimizer.zero_grad()`` before each backward (a run
            that forgets it sets False).
        scheduler: Optional learning-rate scheduler on ``optimizer``, stepped after each step.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    batch: Callable[[int], tuple[Any, ...]]
    loss: Callable[[nn.Module, tuple[Any, ...]], torch.Tensor]
    scaler: Any = None
    amp_dtype: torch.dtype | None = None
    probe: Callable[[nn.Module, tuple[Any, ...]], dict[str, float]] | None = None
    after: Callable[[nn.Module, tuple[Any, ...]], dict[str, float]] | None = None
    zero_grad: bool = True
    scheduler: Any = None


@dataclass(frozen=True)
class Run:
    """One labelled run of the zoo.

    Attributes:
        name: Unique name; also decides the tuning / held-out split (`split_of`).
        family: Where the architecture comes from (torchvision, timm, transformers, rnn, mlp, cnn).
        label: The expected verdict.
        build: Builds the `Setup` (seeded inside).
        checks: Names of the sanity checks the run must pass (see `train.CHECKS`).
        steps: Optimizer steps.
        quick: Whether the run is in the reduced set (``--quick`` and the test suite).
        requires: Optional packages the run needs (skipped with a note when missing).
        note: What the run is, in a few words.
    """

    name: str
    family: str
    label: Label
    build: Callable[[], Setup]
    checks: tuple[str, ...] = ("falls",)
    steps: int = 40
    quick: bool = False
    requires: tuple[str, ...] = ()
    note: str = ""

    @property
    def split(self) -> str:
        return split_of(self.name)


def split_of(name: str) -> str:
    """``"held-out"`` for about a third of the names, ``"tuning"`` for the rest (stable hash)."""
    return "held-out" if int(hashlib.sha256(name.encode()).hexdigest(), 16) % 3 == 0 else "tuning"
