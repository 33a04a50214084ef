"""Checking GradWatch's arguments: one-line errors that name the argument and the fix."""

from __future__ import annotations

import copy
import math
import numbers
import warnings
import weakref
from typing import Any, Literal, Mapping, Sequence

import torch
from torch import nn

from .record.alerts import NonFiniteGradientError
from .verdict.thresholds import Thresholds

__all__ = ["ON_NONFINITE", "OnNonFinite", "NonFiniteGradientError", "validate", "refuse_closure",
           "check_manual_step", "check_loss", "check_state", "load_or_restore", "note_watch",
           "note_other_layers", "load_clip_state",
           "refuse_pickle", "deepcopy_fields"]

ON_NONFINITE = ("warn", "raise", "skip", "zero")
OnNonFinite = Literal["warn", "raise", "skip", "zero"]


def validate(model: Any, optimizer: Any, thresholds: Any, activations: Any, every: Any,
             on_nonfinite: Any, scaler: Any, loggers: Any, history: Any, clip: Any,
             sync_records: Any = None) -> None:
    """Raises TypeError/ValueError naming the first bad argument and how to fix it."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"Expected `model` to be a torch.nn.Module, but got "
                        f"{type(model).__name__}; pass the model itself (not its parameters).")
    scripted = next((name or "(root)" for name, m in model.named_modules()
                     if isinstance(m, torch.jit.ScriptModule)), None)
    if scripted is not None:
        raise TypeError(f"Expected `model` to be an eager module, but `{scripted}` is a "
                        f"TorchScript module (torch.jit.script/trace), which takes no forward "
                        f"hooks; watch the module before scripting it (torch.compile is "
                        f"supported: attach GradWatch before the first compiled call).")
    lazy = next((name for name, p in model.named_parameters()
                 if isinstance(p, nn.parameter.UninitializedParameter)), None)
    if lazy is not None:
        raise ValueError(f"Expected `model` to have initialised parameters, but `{lazy}` belongs "
                         f"to a lazy module (nn.LazyLinear, ...) that has not run yet; run one "
                         f"forward pass (a dummy batch) before creating GradWatch.")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"Expected `optimizer` to be a torch.optim.Optimizer or None, but got "
                        f"{type(optimizer).__name__}; for an optimizer of another kind, "
                        f"construct GradWatch without `optimizer=` and call watch.step() after "
                        f"backward() and before its step().")
    if optimizer is not None and not hasattr(optimizer, "_optimizer_step_pre_hooks") and type(
            optimizer).register_step_pre_hook is torch.optim.Optimizer.register_step_pre_hook:
        raise TypeError(f"Expected `optimizer` to be an initialised torch.optim.Optimizer, but "
                        f"{type(optimizer).__name__} never called Optimizer.__init__ (as some "
                        f"Lookahead wrappers do), so its step() runs no hooks; pass the "
                        f"optimizer it wraps (e.g. optimizer=opt.optimizer), or construct "
                        f"GradWatch without `optimizer=` and call watch.step() after backward().")
    if optimizer is not None and not getattr(type(optimizer).step, "hooked", False) and type(
            optimizer).register_step_pre_hook is torch.optim.Optimizer.register_step_pre_hook:
        optimizer._patch_step_function()  # (as torch's first zero_grad() would: a wrapper that
        # skipped Optimizer.__init__ but made its hook dicts, as timm's Lookahead, runs no hooks)
    if optimizer is not None:
        mine = {id(p) for p in model.parameters()}
        stepped = [p for group in optimizer.param_groups for p in group["params"]]
        if stepped and not any(id(p) in mine for p in stepped):
            raise ValueError(f"Expected `optimizer` to step the watched model's parameters, but "
                             f"none of its {len(stepped)} parameter(s) belongs to the "
                             f"{type(model).__name__} passed as `model`; pass the optimizer "
                             f"built from model.parameters() (or the model it steps).")
    if thresholds is not None and not isinstance(thresholds, Thresholds):
        raise TypeError(f"Expected `thresholds` to be a gradwatch.Thresholds or None, but got "
                        f"{type(thresholds).__name__}; build one with Thresholds(vanishing=...).")
    if not isinstance(activations, bool):
        raise TypeError(f"Expected `activations` to be a bool, but got {activations!r}.")
    if sync_records is not None and not isinstance(sync_records, bool):
        raise TypeError(f"Expected `sync_records` to be None (immediate records on the CPU, "
                        f"one step late on accelerators), True or False, but got "
                        f"{sync_records!r}.")
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
    if loggers is None or callable(loggers) or isinstance(loggers, (str, bytes)) \
            or not isinstance(loggers, (list, tuple)):
        got = "None" if loggers is None else type(loggers).__name__
        raise TypeError(f"Expected `loggers` to be a list of callables taking a StepRecord, but "
                        f"got {got}; wrap it in a list: loggers=[JsonlLogger('run.jsonl')] "
                        f"(or loggers=[] for none).")
    bad = next((k for k, x in enumerate(loggers) if not callable(x)), None)
    if bad is not None:
        raise TypeError(f"Expected `loggers` to be a list of callables taking a StepRecord, but "
                        f"loggers[{bad}] is {type(loggers[bad]).__name__} {loggers[bad]!r:.60}, "
                        f"which is not callable; pass logger objects, e.g. "
                        f"loggers=[JsonlLogger('run.jsonl')].")
    if isinstance(history, bool) or not isinstance(history, int) or history < 1:
        raise ValueError(f"Expected `history` to be an int >= 1, but got {history!r}.")
    if isinstance(clip, bool) or (isinstance(clip, (int, float)) and not 0 < clip < math.inf):
        raise ValueError(f"Expected `clip` to be a max norm > 0 (finite), \"auto\", a "
                         f"gradwatch.clip policy or None, but got {clip!r}; e.g. clip=1.0.")


def refuse_closure(optimizer: Any, args: Any, kwargs: Any) -> None:
    """Raises when ``optimizer.step`` gets a closure (LBFGS): its gradients only exist inside
    the closure, after the step pre-hook has run."""
    closure = args[1] if len(args) > 1 else kwargs.get("closure")  # args[0] is the optimizer
    if closure is not None:
        base = getattr(optimizer, "base_optimizer", None)
        hint = ("pass the optimizer whose step() takes no closure (SAM: "
                "optimizer=opt.base_optimizer, which steps once per iteration)"
                if isinstance(base, torch.optim.Optimizer) else
                "construct GradWatch without `optimizer=` and call watch.step() inside your "
                "closure after loss.backward()")
        raise RuntimeError(f"GradWatch(optimizer=...) cannot watch {type(optimizer).__name__}"
                           f".step(closure): the gradients only exist inside the closure. "
                           f"{hint[0].upper()}{hint[1:]}.")


def check_manual_step(closed: bool, optimizer: Any) -> None:
    """Raises when ``watch.step()`` is called on a closed watch or one that steps itself."""
    if closed:
        raise RuntimeError("GradWatch.step() was called after close(); create a new GradWatch "
                           "to keep monitoring.")
    if optimizer is not None:
        raise RuntimeError("GradWatch.step() is called for you before every optimizer.step() "
                           "because `optimizer=` was given; remove your call to watch.step() or "
                           "construct GradWatch without `optimizer=`.")


def check_loss(loss: Any, closed: bool = False) -> Any:
    """The loss as gradwatch keeps it: a detached one-element tensor (no host sync), or a
    float; raises TypeError/ValueError for anything else (RuntimeError on a ``closed`` watch)."""
    if closed:
        raise RuntimeError("GradWatch.note_loss() was called after close(); create a new "
                           "GradWatch to keep monitoring.")
    if isinstance(loss, torch.Tensor):
        if loss.numel() != 1:
            raise ValueError(f"Expected `loss` to be the reduced loss (one element), but got a "
                             f"tensor of shape {tuple(loss.shape)}; pass loss.mean() or "
                             f"loss.sum(), the value you call backward() on.")
        if loss.is_complex():
            raise TypeError("Expected `loss` to be a real number, but got a complex tensor.")
        loss = loss.detach()
        return loss if loss.dim() == 0 else loss.reshape(())
    if isinstance(loss, bool) or not isinstance(loss, numbers.Real):
        raise TypeError(f"Expected `loss` to be a 0-d tensor or a number, but got "
                        f"{type(loss).__name__} {loss!r:.60}; pass the loss you call "
                        f"backward() on.")
    return float(loss)


_STATE_KEYS = ("step", "stats", "total_stats", "counts", "run")


def check_state(state: Any) -> None:
    """Refuses, with what to pass instead, a state that `GradWatch.state_dict` did not make."""
    if not isinstance(state, Mapping):
        raise TypeError(f"Expected `state` to be the dict GradWatch.state_dict() returned, but "
                        f"got {type(state).__name__}.")
    missing = [k for k in _STATE_KEYS if k not in state]
    if missing:
        raise ValueError(f"Expected `state` to be the dict GradWatch.state_dict() returned, but "
                         f"it lacks {missing} (it has {sorted(map(str, state))[:8]}); pass "
                         f"that dict, e.g. checkpoint['gradwatch'] if you saved it under that "
                         f"key.")
    step = state["step"]
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
        raise ValueError(f"Expected state['step'] to be an int >= 0, but got {step!r}.")
    for key, kind in _STATE_TYPES.items():
        if key in state and not isinstance(state[key], kind):
            raise ValueError(f"Expected state[{key!r}] to be a "
                             f"{'dict' if kind is Mapping else 'list'} as "
                             f"GradWatch.state_dict() wrote it, but got "
                             f"{type(state[key]).__name__} {state[key]!r:.60}; pass the dict "
                             f"state_dict() returned, unchanged.")


def load_clip_state(policy: Any, saved: Any) -> None:
    """Loads a clip policy's saved statistics, and warns where the state and the watch disagree
    about them: statistics saved with no policy here to take them (dropped), or a policy here
    that keeps statistics (ZClip, AutoClip) and a state without them (it starts afresh)."""
    if policy is None:
        if saved:
            warnings.warn("the state carries a clip policy's statistics but this watch does not "
                          "clip: they are dropped. Pass the same clip= as the saved watch to "
                          "resume them.", UserWarning, stacklevel=5)
        return
    if saved is not None:
        policy.load_state_dict(saved)
    elif policy.state_dict():
        warnings.warn(f"the state has no statistics for this watch's clip policy ({policy!r}; it "
                      f"was saved by a watch that did not clip that way): the policy starts "
                      f"afresh.", UserWarning, stacklevel=5)


def note_other_layers(saved: Any, layers: Sequence[str]) -> None:
    """Warns when a state was saved by a watch that lacked some of ``layers`` (``saved``: its
    layer names; None for a state from before they were saved): those start afresh, and the
    head and the depth trends may have moved. (A state with statistics of layers this model
    lacks is refused when the spike statistics load.)"""
    if saved is None:
        return
    known = set(saved)
    new = [n for n in layers if n not in known]
    if new:
        warnings.warn(f"the state was saved by a watch without {len(new)} of this watch's "
                      f"{len(layers)} layers ({new[:5]}{' ...' if len(new) > 5 else ''}): their "
                      f"statistics start afresh. Load a state saved for this model to resume "
                      f"exactly.", UserWarning, stacklevel=5)


_STATE_TYPES: dict[str, Any] = {"stats": Mapping, "total_stats": Mapping, "counts": (list, tuple),
                                "run": Mapping, "judge": Mapping, "units": (list, tuple),
                                "layers": (list, tuple)}


def load_or_restore(watch: Any, state: Any, load: Any) -> None:
    """``load(state)`` after `check_state`; when it fails, the watch's own state from before is
    loaded back (``load(before, resumed=False)``: the run is not marked as resumed) and a
    ValueError says the state did not load (the first error is its cause)."""
    check_state(state)
    before = watch.state_dict()
    try:
        load(state)
    except Exception as e:  # (a malformed entry fails wherever it is read: torch, numpy)
        load(before, resumed=False)
        raise ValueError(f"Expected `state` to be what GradWatch.state_dict() returned, but "
                         f"loading it failed ({type(e).__name__}: {e}); the watch is unchanged. "
                         f"Pass the dict state_dict() returned, unchanged.") from e


_WATCHING: weakref.WeakKeyDictionary[Any, weakref.WeakSet] = weakref.WeakKeyDictionary()
"""The open watches of each optimizer (see `note_watch`)."""


def note_watch(watch: Any, optimizer: Any) -> None:
    """Warns when ``optimizer`` already has an open GradWatch (a notebook cell run twice): both
    would measure and clip each of its steps, the later one reading what the earlier clipped."""
    if optimizer is None:
        return
    watches = _WATCHING.setdefault(optimizer, weakref.WeakSet())
    if any(not getattr(w, "_closed", True) for w in watches):
        warnings.warn(f"this {type(optimizer).__name__} is already watched by an open GradWatch: "
                      f"both measure (and clip) each of its steps, the later one reading what "
                      f"the earlier clipped. Call close() on the other one (or create watches "
                      f"with `with GradWatch(...) as watch:`); a watch that is garbage-collected "
                      f"closes itself.", UserWarning, stacklevel=3)
    watches.add(watch)


def refuse_pickle(watch: Any, protocol: int = 2) -> Any:
    """``GradWatch.__reduce_ex__``: a watch holds hooks on a live model and autograd types;
    what can be saved and restored is its `state_dict`."""
    raise TypeError("GradWatch cannot be pickled: save watch.state_dict() (plain numbers) and "
                    "call load_state_dict() on a GradWatch created for the restored model.")


def deepcopy_fields(watch: Any, memo: dict[int, Any]) -> Any:
    """``GradWatch.__deepcopy__``: a field-by-field copy (pickling is refused, copying is not)."""
    new = type(watch).__new__(type(watch))
    memo[id(watch)] = new
    for key, value in watch.__dict__.items():
        setattr(new, key, copy.deepcopy(value, memo))
    return new
