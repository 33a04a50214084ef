"""Checking GradWatch's arguments: one-line errors that name the argument and the fix."""

from __future__ import annotations

import copy
import numbers
import warnings
import weakref
from typing import Any, Literal, Sequence

import torch
from torch import nn

from .clip import make_policy
from .record.alerts import NonFiniteGradientError
from .record.resume import check_state, clip_state, load_clip_state, load_or_restore, \
    note_other_layers
from .verdict.scalars import as_int
from .verdict.thresholds import Thresholds

__all__ = ["ON_NONFINITE", "OnNonFinite", "NonFiniteGradientError", "validate", "check_model",
           "check_options", "active_scaler", "refuse_positional", "refuse_closure",
           "check_manual_step", "check_loss", "check_state", "load_or_restore", "note_watch",
           "note_other_layers", "load_clip_state", "clip_state",
           "describe", "refuse_pickle", "deepcopy_fields"]

ON_NONFINITE = ("warn", "raise", "skip", "zero")
OnNonFinite = Literal["warn", "raise", "skip", "zero"]


def validate(model: Any, positional: Sequence[Any], optimizer: Any, thresholds: Any,
             activations: Any, every: Any, on_nonfinite: Any, scaler: Any, loggers: Any,
             history: Any, clip: Any, sync_records: Any = None) -> tuple[int, int, Any, Any]:
    """Raises TypeError/ValueError naming the first bad argument and how to fix it
    (``positional``: what was passed after the model by position). Returns ``every`` and
    ``history`` as ints, the scaler to use (None for a disabled GradScaler) and the clip policy."""
    if positional:
        refuse_positional(positional)
    check_model(model, optimizer)
    if on_nonfinite == "skip" and optimizer is None:
        raise ValueError("on_nonfinite='skip' needs `optimizer=` so gradwatch can skip the step; "
                         "pass the optimizer, or use on_nonfinite='zero' or 'raise'.")
    return check_options(thresholds, activations, every, on_nonfinite, scaler, loggers, history,
                         clip, sync_records)


def refuse_positional(positional: Sequence[Any]) -> None:
    """The TypeError for arguments after the model passed by position (all are keywords)."""
    first = positional[0]
    if isinstance(first, torch.optim.Optimizer) or scheduled_optimizer(first) is not None:
        name = "scheduler.optimizer" if scheduled_optimizer(first) is not None else "opt"
        raise TypeError(f"GradWatch takes the model as its only positional argument, but got "
                        f"a {type(first).__name__} after it; pass the optimizer by keyword: "
                        f"GradWatch(model, optimizer={name}).")
    raise TypeError(f"GradWatch takes the model as its only positional argument, but got "
                    f"{len(positional)} more ({type(first).__name__} {first!r:.40}, ...); pass "
                    f"the others by keyword (optimizer=..., clip=..., every=...).")


def scheduled_optimizer(obj: Any) -> Any:
    """The optimizer of ``obj`` when it is a learning-rate scheduler (its ``.optimizer``)."""
    inner = getattr(obj, "optimizer", None)
    if isinstance(inner, torch.optim.Optimizer) and hasattr(obj, "step") and (
            isinstance(obj, torch.optim.lr_scheduler.LRScheduler)
            or hasattr(obj, "get_last_lr") or "Plateau" in type(obj).__name__):
        return inner
    return None


def check_model(model: Any, optimizer: Any) -> None:
    """The checks of ``model`` and ``optimizer`` (`validate`)."""
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
    meta = next((name for name, p in model.named_parameters() if p.is_meta), None)
    if meta is not None:
        raise ValueError(f"Expected `model` to have materialised parameters, but `{meta}` is on "
                         f"the meta device (deferred initialisation), which holds no values; "
                         f"materialise the model first (model.to_empty(device=...) and "
                         f"initialise its weights, e.g. with each module's reset_parameters()), "
                         f"then create GradWatch.")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        if scheduled_optimizer(optimizer) is not None:
            raise TypeError(f"Expected `optimizer` to be a torch.optim.Optimizer or None, but "
                            f"got the learning-rate scheduler {type(optimizer).__name__}; pass "
                            f"the optimizer it schedules (optimizer=scheduler.optimizer).")
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


def check_options(thresholds: Any, activations: Any, every: Any, on_nonfinite: Any,
                  scaler: Any = None, loggers: Any = (), history: Any = 10_000, clip: Any = None,
                  sync_records: Any = None) -> tuple[int, int, Any, Any]:
    """The checks of GradWatch's options (all but ``model`` and ``optimizer``), shared with the
    trainer callbacks; returns ``every`` and ``history`` as ints, the scaler to use and the clip
    policy (`gradwatch.clip.make_policy`, whose errors name `clip`)."""
    if thresholds is not None and not isinstance(thresholds, Thresholds):
        raise TypeError(f"Expected `thresholds` to be a gradwatch.Thresholds or None, but got "
                        f"{type(thresholds).__name__}; build one with Thresholds(vanishing=...).")
    if not isinstance(activations, bool):
        raise TypeError(f"Expected `activations` to be a bool, but got {activations!r}.")
    if sync_records is not None and not isinstance(sync_records, bool):
        raise TypeError(f"Expected `sync_records` to be None (immediate records on the CPU, "
                        f"one step late on accelerators), True or False, but got "
                        f"{sync_records!r}.")
    every = as_int("every", every, fix="every=1 records each step, every=10 each tenth")
    if on_nonfinite not in ON_NONFINITE:
        raise ValueError(f"Expected `on_nonfinite` to be one of {ON_NONFINITE}, but got "
                         f"{on_nonfinite!r}.")
    scaler = active_scaler(scaler)
    if scaler is not None and not all(hasattr(scaler, a) for a in ("unscale_", "_scale", "is_enabled")):
        raise TypeError(f"Expected `scaler` to be a torch.amp.GradScaler or None, but got "
                        f"{type(scaler).__name__}.")
    if loggers is None or callable(loggers) or isinstance(loggers, (str, bytes)) \
            or not isinstance(loggers, (list, tuple)):
        got = "None" if loggers is None else type(loggers).__name__
        raise TypeError(f"Expected `loggers` to be a list of callables taking a StepRecord, but "
                        f"got {got}; wrap it in a list: loggers=[JsonlLogger('run.jsonl')] "
                        f"(or loggers=[] for none).")
    bad = next((k for k, x in enumerate(loggers) if not callable(x) or isinstance(x, type)),
               None)
    if bad is not None:
        what = "a class" if isinstance(loggers[bad], type) else "not callable"
        raise TypeError(f"Expected `loggers` to be a list of callables taking a StepRecord, but "
                        f"loggers[{bad}] is {type(loggers[bad]).__name__} {loggers[bad]!r:.60}, "
                        f"which is {what}; pass logger objects, e.g. "
                        f"loggers=[JsonlLogger('run.jsonl')].")
    history = as_int("history", history, fix="the number of records watch.history keeps")
    if isinstance(clip, bool):
        raise ValueError(f"Expected `clip` to be a max norm > 0 (finite), \"auto\", a "
                         f"gradwatch.clip policy or None, but got {clip!r}; e.g. clip=1.0.")
    return every, history, scaler, make_policy(clip)


def active_scaler(scaler: Any) -> Any:
    """``scaler``, or None for a disabled GradScaler (``GradScaler(enabled=False)``, or one torch
    disabled for want of its device): it scales nothing, so the watch reads gradients as they
    are, as with ``scaler=None``."""
    is_enabled = getattr(scaler, "is_enabled", None)
    if scaler is not None and callable(is_enabled) and hasattr(scaler, "unscale_") \
            and not is_enabled():
        return None
    return scaler


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


def refuse_closed(closed: bool, what: str) -> None:
    """Raises RuntimeError when the watch is ``closed``: ``what`` happened after `close()`
    (every `with` block's end closes the watch)."""
    if closed:
        raise RuntimeError(f"{what} after close(); a watch is closed by close() and at the end "
                           f"of its `with` block. Create a new GradWatch to keep monitoring, "
                           f"or keep one `with` block around the whole training loop.")


def check_manual_step(closed: bool, optimizer: Any, order: Any = None) -> None:
    """Raises when ``watch.step()`` is called on a closed watch or one that steps itself; warns
    (once) when it comes after ``optimizer.step()`` (``order``: the watch's `CallOrder`)."""
    refuse_closed(closed, "GradWatch.step() was called")
    if optimizer is not None:
        raise RuntimeError("GradWatch.step() is called for you before every optimizer.step() "
                           "because `optimizer=` was given; remove your call to watch.step() or "
                           "construct GradWatch without `optimizer=`.")
    if order is not None:
        order.before_manual_step()


def check_loss(loss: Any, closed: bool = False) -> Any:
    """The loss as gradwatch keeps it: a detached one-element tensor (no host sync), or a
    float; raises TypeError/ValueError for anything else (RuntimeError on a ``closed`` watch)."""
    refuse_closed(closed, "GradWatch.note_loss() was called")
    if isinstance(loss, torch.Tensor):
        if loss.dtype == torch.bool:
            raise TypeError("Expected `loss` to be a number, but got a bool tensor; pass the "
                            "loss you call backward() on.")
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


_WATCHING: weakref.WeakKeyDictionary[Any, weakref.WeakSet] = weakref.WeakKeyDictionary()
"""The open watches of each optimizer (see `note_watch`)."""
_OPEN: weakref.WeakSet = weakref.WeakSet()
"""Every watch made (see `note_watch`; closed ones are skipped)."""

_CLOSE_THE_OTHER = ("Call close() on the other one (or create watches with `with GradWatch(...) "
                    "as watch:`); a watch that is garbage-collected closes itself.")


def note_watch(watch: Any, optimizer: Any, params: Sequence[Any]) -> None:
    """Warns when ``optimizer`` already has an open GradWatch (a notebook cell run twice): both
    would measure and clip each of its steps, the later one reading what the earlier clipped.
    The same for an open watch of the same parameters (``params``: the new watch's) where one of
    the two has no ``optimizer=`` (``watch.step()`` of each measures the same gradients); two
    watches given different optimizers of one model watch what each steps."""
    if optimizer is not None:
        watches = _WATCHING.setdefault(optimizer, weakref.WeakSet())
        twice = any(not getattr(w, "_closed", True) for w in watches)
        watches.add(watch)
        if twice:
            _OPEN.add(watch)
            warnings.warn(f"this {type(optimizer).__name__} is already watched by an open "
                          f"GradWatch: both measure (and clip) each of its steps, the later one "
                          f"reading what the earlier clipped. {_CLOSE_THE_OTHER}", UserWarning,
                          stacklevel=3)
            return
    mine = {id(p) for p in params}
    other = next((w for w in list(_OPEN) if w is not watch and not getattr(w, "_closed", True)
                  and (optimizer is None or getattr(w, "optimizer", None) is None)
                  and any(id(p) in mine for p in w._watched.params)), None)
    _OPEN.add(watch)
    if other is not None:
        shared = sum(id(p) in mine for p in other._watched.params)
        warnings.warn(f"this model ({shared} of its watched parameters) is already watched by an "
                      f"open GradWatch: both measure (and clip) its gradients at each step, the "
                      f"later one reading what the earlier clipped. {_CLOSE_THE_OTHER}",
                      UserWarning, stacklevel=3)


def describe(watch: Any) -> str:
    """``GradWatch.__repr__``."""
    state = "closed" if watch._closed else f"step={watch._step}"
    return (f"GradWatch(layers={len(watch._watched.layers)}, every={watch.every}, clip="
            f"{watch.policy!r}, activations={watch.activations}, on_nonfinite="
            f"{watch.on_nonfinite!r}, {state}, recorded={watch._ledger.run['recorded']})")


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
