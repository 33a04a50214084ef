"""Checking GradWatch's arguments and finding the layers of a model (used by `monitor`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .thresholds import Thresholds

__all__ = ["Layer", "ON_NONFINITE", "discover_layers", "owning_modules", "remove_all", "validate"]

ON_NONFINITE = ("warn", "raise", "skip", "zero")


@dataclass(frozen=True)
class Layer:
    """A module that directly owns trainable parameters, by qualified name."""

    name: str
    params: tuple[nn.Parameter, ...]


def remove_all(*handle_lists: list[Any]) -> None:
    """Removes the hook handles in each list (a handle's ``remove`` is safe to call twice)."""
    for handles in handle_lists:
        for handle in handles:
            handle.remove()


def discover_layers(model: nn.Module) -> list[Layer]:
    """The layers of ``model`` in ``named_modules`` order; a shared parameter counts once."""
    seen: set[int] = set()
    layers = []
    for name, module in model.named_modules():
        params = [p for p in module.parameters(recurse=False)
                  if p.requires_grad and id(p) not in seen]
        seen.update(map(id, params))
        if params:
            layers.append(Layer(name or "(root)", tuple(params)))
    if not layers:
        raise ValueError("Expected `model` to have trainable parameters, but none requires grad; "
                         "unfreeze some (p.requires_grad_(True)) or watch another module.")
    return layers


def owning_modules(model: nn.Module, layers: list[Layer]) -> list[nn.Module]:
    modules = dict(model.named_modules())
    return [modules["" if layer.name == "(root)" else layer.name] for layer in layers]


def validate(model: Any, optimizer: Any, thresholds: Any, activations: Any, every: Any,
              on_nonfinite: Any, scaler: Any, loggers: Any, history: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"Expected `model` to be a torch.nn.Module, but got "
                        f"{type(model).__name__}; pass the model itself (not its parameters).")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"Expected `optimizer` to be a torch.optim.Optimizer or None, but got "
                        f"{type(optimizer).__name__}.")
    if thresholds is not None and not isinstance(thresholds, Thresholds):
        raise TypeError(f"Expected `thresholds` to be a gradwatch.Thresholds or None, but got "
                        f"{type(thresholds).__name__}; build one with Thresholds(vanishing=...).")
    if not isinstance(activations, bool):
        raise TypeError(f"Expected `activations` to be a bool, but got {activations!r}.")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"Expected `every` to be an int >= 1, but got {every!r}; every=1 "
                         f"records each step, every=10 each tenth.")
    if on_nonfinite not in ON_NONFINITE:
        raise ValueError(f"Expected `on_nonfinite` to be one of {ON_NONFINITE}, but got "
                         f"{on_nonfinite!r}.")
    if on_nonfinite == "skip" and optimizer is None:
        raise ValueError("on_nonfinite='skip' needs `optimizer=` so gradwatch can skip the step; "
                         "pass the optimizer, or use on_nonfinite='zero' or 'raise'.")
    if scaler is not None and not all(hasattr(scaler, a) for a in ("unscale_", "_scale", "is_enabled")):
        raise TypeError(f"Expected `scaler` to be a torch.amp.GradScaler or None, but got "
                        f"{type(scaler).__name__}.")
    if isinstance(loggers, (str, bytes)) or not all(callable(log) for log in loggers):
        raise TypeError("Expected `loggers` to be a sequence of callables taking a StepRecord, "
                        "e.g. loggers=[JsonlLogger('run.jsonl')].")
    if isinstance(history, bool) or not isinstance(history, int) or history < 1:
        raise ValueError(f"Expected `history` to be an int >= 1, but got {history!r}.")
