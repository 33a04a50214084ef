"""The watched set: the layers and parameters a `GradWatch` watches, their hooks, forward order
and head, rebuilt when the trainable set changes (a layer unfrozen, a param group added)."""

from __future__ import annotations

import itertools
import operator
import warnings
from typing import Any, Callable

import numpy as np
from torch import nn
from torch.nn.modules.module import register_module_module_registration_hook, \
    register_module_parameter_registration_hook

from .forward import ForwardOrder
from .compile import NO_ACTIVATION_GRADS
from ..measure.norms import segments
from .collector import Collector
from .hooks import Hook, user_stacklevel
from .layers import Layer, discover_layers
from ..measure.updates import UpdateTracker
from ..measure.statistics import UpdateRatio

__all__ = ["WatchedSet"]

_REQUIRES_GRAD = operator.attrgetter("requires_grad")


class WatchedSet:
    """Every module of ``model`` that directly owns trainable parameters, kept in step with
    what is trainable: `refresh` notices a parameter whose ``requires_grad`` changed or an
    optimizer param group added after the watch was created, and rebuilds the set (hooks,
    forward order) so gradwatch always watches, measures and clips what the optimizer steps.
    A param group over layers already watched changes only which are stepped (the hooks and
    what they gathered in that step stay); when the layers change, that step's hooks ran on
    the old set and it has no output-gradient norms (and no warning that hooks did not run).
    A module or parameter assigned on one of the model's modules after the watch was created
    (``model.fc = nn.Linear(...)``, ``model[2] = ...``) is seen by torch's global registration
    hooks, which mark the set for a rebuild at its next measured step (nothing runs per step
    for it); the new layer is watched, and without an optimizer stepped; with one, once it
    joins the optimizer. A layer added where those hooks do not tell (``nn.Sequential.insert``
    and ``nn.ModuleList.insert`` write ``_modules`` directly) is watched once its parameters
    join the optimizer (`refresh`). A parameter the optimizer steps that is not the model's (a
    learnable loss temperature) is neither measured nor clipped: a warning says so, once.

    Args:
        model: The (unwrapped) model.
        activations: Whether the hooks measure output gradients and unit statistics.
        optimizer: The optimizer whose parameters must be watched, or None.
    """

    def __init__(self, model: nn.Module, *, activations: bool, optimizer: Any) -> None:
        self.model, self.activations, self.optimizer = model, activations, optimizer
        self.stepping: Any = None  # without `optimizer`: the one whose step is measured (`follow`)
        self.amp_poll: Callable[[], None] | None = None
        self.collector: Collector | None = None
        self.layers: list[Layer] = []
        self._warned_no_act = False
        self.rebuilt = False  # rebuilt since the last measured step's check
        self.dirty = False  # a module or parameter was assigned in the model since the build
        self._seen: set[int] = set()  # every parameter stepped so far (by id): warned about once
        hook = Hook(self, "_assigned")
        self._tree_handles = [register_module_module_registration_hook(hook),
                              register_module_parameter_registration_hook(hook)]
        self._build()

    def _assigned(self, module: nn.Module, name: str, value: Any) -> None:
        """A torch registration hook: ``value`` was assigned as ``module.name``."""
        if id(module) in self._module_ids:
            self.dirty = True

    def _build(self) -> None:
        old = self.collector
        self.dirty = False
        self._all_params = list(self.model.parameters())
        self._model_ids = set(map(id, self._all_params))
        self._module_ids = {id(m) for m in self.model.modules()}
        layers = discover_layers(self.model)
        if old is not None and _key(layers) == _key(self.layers):
            # only what the optimizer steps changed (a param group added): the hooks, what
            # they gathered in this step and the forward order stay
            self._stepped()
            return
        self.rebuilt = old is not None  # (this step's hooks ran on the old set: none to read)
        was = {layer.name: i for i, layer in enumerate(self.layers)}
        self.layers = layers
        self.params = [p for layer in self.layers for p in layer.params]
        ends = list(itertools.accumulate(len(layer.params) for layer in self.layers))
        self.slices = [slice(e - len(layer.params), e) for layer, e in zip(self.layers, ends)]
        self.collector = c = Collector(list(self.model.named_modules()), self.layers,
                                       activations=self.activations)
        if old is not None:
            c.amp_poll, c.compiled = old.amp_poll, old.compiled
            now = {name: i for i, name in enumerate(c.names)}
            c.unit_window.carry(old.unit_window, {i: k for k, layer in enumerate(layers) if (
                i := was.get(layer.name)) is not None}, {i: now[n] for i, n in enumerate(
                    old.names) if n in now})
            attached = old.attached
            old.close()
            if attached:
                c.attach()
        self.forward = ForwardOrder(self.layers, c.names, c.owner_of, c.weight_user)
        self.saturating = any(k == "saturating" for k in c.kinds)
        layer_of = [i for i, layer in enumerate(self.layers) for _ in layer.params]
        self.param_layer = np.asarray(layer_of, dtype=np.int64)  # the layer of each param
        self.runs = segments(self.param_layer)  # its runs, for `layer_norms`
        self.tiny: np.ndarray | None = None  # params whose norm underflowed fp32 last time
        self.updates = UpdateTracker(self.params, layer_of, len(self.layers),
                                     UpdateRatio.sample) if self.optimizer is not None else None
        self._stepped()

    def follow(self, optimizer: Any) -> None:
        """Without an own optimizer (a framework steps it, measured by ``watch.step()``): the
        one about to step, whose parameters the total, clipping and rules then read; the set
        is updated at the next measured step (`refresh`). None: every watched parameter."""
        self.stepping = optimizer

    def _stepper(self) -> Any:
        return self.optimizer if self.optimizer is not None else self.stepping

    def _stepped(self) -> None:
        """Which layers and parameters the optimizer steps (all without one)."""
        source = self._stepper()
        stepped = None if source is None else {
            id(p) for g in source.param_groups for p in g["params"]}
        self.param_stepped = np.array([stepped is None or id(p) in stepped
                                       for p in self.params], dtype=bool)
        self.stepped = np.array([stepped is None or any(id(p) in stepped for p in layer.params)
                                 for layer in self.layers], dtype=bool)
        self.all_stepped = bool(self.param_stepped.all())
        stepped_params = [p for p, s in zip(self.params, self.param_stepped) if s]
        table = {id(p) for layer in self.layers if layer.role == "embedding" for p in layer.params}
        dense = [p for p in stepped_params if id(p) not in table]
        self.first_stepped = (dense + [p for p in stepped_params if id(p) in table])[:8] + \
            stepped_params[-1:] * (len(stepped_params) > 8)
        """The first 8 stepped parameters, those of lookup tables last (a batch writes only
        the rows it looks up: a padding row's gradient is 0 at every step), then the last
        (`ZeroCheck.snapshot` reads both)."""
        self._signature = self._current_signature()
        if stepped is not None:
            _warn_outside(self._unseen(source))  # (after a rebuild: none of the model's)
            self._seen |= stepped

    def _unseen(self, source: Any) -> list[tuple[int, Any]]:
        """The parameters ``source`` steps, with their group, that were never stepped before
        and were not the model's at the last build: a layer inserted since, or a parameter kept
        outside the model (a read per stepped parameter: only when the groups changed)."""
        return [(i, p) for i, g in enumerate(source.param_groups) for p in g["params"]
                if id(p) not in self._seen and id(p) not in self._model_ids]

    def _joined(self) -> bool:
        """Whether the optimizer now steps a parameter of the model that the set did not hold
        at its build: a layer added where torch's registration hooks do not tell (``insert``
        writes ``_modules`` directly), then given to the optimizer with ``add_param_group``.
        One walk over the model, only when the groups changed and hold such a parameter."""
        source = self._stepper()
        new = set() if source is None else {id(p) for _, p in self._unseen(source)}
        return bool(new) and not new.isdisjoint(map(id, self.model.parameters()))

    def stepped_among(self, present: list[bool] | None) -> np.ndarray | None:
        """The positions, among the parameters that have a gradient (``present``: which do;
        None: all), of those the optimizer steps: what the total norm and clipping read, as
        ``clip_grad_norm_(optimizer's parameters)`` would. None when that is all of them."""
        if self.all_stepped:
            return None
        keep = self.param_stepped if present is None else self.param_stepped[
            np.asarray(present, dtype=bool)]
        return None if keep.all() else np.flatnonzero(keep)

    def _current_signature(self) -> tuple[bytes, tuple[tuple[int, int, int], ...]]:
        """What is trainable (a flag per parameter, so one layer frozen as another is unfrozen
        at the same step counts as a change) and what the optimizer steps: per param group the
        length, first and last tensor of its list (a group switched to other layers with a list
        of the same length changes it; a few reads per group, and a wrapper that builds its
        lists anew at each read does not)."""
        trainable = bytes(map(_REQUIRES_GRAD, self._all_params))
        source = self._stepper()
        if source is None:
            return trainable, ()
        return trainable, tuple((len(ps), id(ps[0]) if ps else 0, id(ps[-1]) if ps else 0)
                                for ps in (g["params"] for g in source.param_groups))

    def refresh(self) -> bool:
        """Rebuilds the set when what is trainable changed or the optimizer's groups took in
        parameters of the model the set lacks (a layer inserted), else only which parameters
        are stepped when only the groups did (no walk over the model); returns whether anything
        changed."""
        if self.dirty:
            self._build()
            return True
        now = self._current_signature()
        if now == self._signature:
            return False
        if now[0] == self._signature[0] and not self._joined():  # a group added or switched
            self._stepped()
        else:
            self._build()
        return True

    def sync(self, *, armed: bool, every_step: bool, keep: bool, closed: bool,
             units: bool = True, measure: int = 0) -> None:
        """Arms the hooks for the next forward and attaches them only while needed: on
        recorded forwards (activations, or forward checks every step, or the forward order not
        learnt yet), always while ``keep`` (the AMP skip detector) or under torch.compile."""
        c = self.collector
        wanted = not closed and (keep or c.compiled or (
            armed and (self.activations or every_step or not self.forward.known)))
        c.armed = armed and wanted
        c.units_on = units
        c.unit_window.index = measure  # the measured step (the units' window counts in them)
        if wanted:
            c.attach(units=units or c.compiled)
        elif c.attached:
            c.detach()

    def check_activation_grads(self, data: Any) -> None:
        """Warns once when activation hooks ran no backward (created after the forward, a
        second ``step()`` for one backward, or torch.compile ignored hooks added after its
        first call); not on a step at which the watched set was rebuilt."""
        rebuilt, self.rebuilt = self.rebuilt, False
        if data is not None and self.activations and not (len(data.out) or len(data.inp)) \
                and not self._warned_no_act and not rebuilt:
            self._warned_no_act = True
            warnings.warn(NO_ACTIVATION_GRADS, UserWarning, stacklevel=user_stacklevel())

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def head_name(self) -> str | None:
        h = self.forward.head
        return None if h is None else self.layers[h].name

    def is_output(self, params: list[Any]) -> list[bool]:
        """For each parameter, whether it belongs to the head (AGC leaves it unclipped)."""
        head = self.forward.head
        last = set(map(id, self.layers[head].params)) if head is not None else set()
        return [id(p) in last for p in params]

    def close(self, handles: list[Any] = ()) -> None:
        """Removes the model's hooks and the given (optimizer) hook handles."""
        for handle in [*handles, *self._tree_handles]:
            handle.remove()
        if self.collector is not None:
            self.collector.close()


def _warn_outside(outside: list[tuple[int, Any]]) -> None:
    """Warns that the optimizer steps parameters that are not the model's: the total norm
    (``clip_grad_norm_`` of the optimizer's parameters would count them) and clipping leave
    them out, and gradwatch cannot name them, so it says how many, their groups and shapes."""
    if not outside:
        return
    n, them = len(outside), "them" if len(outside) > 1 else "it"
    shown = ", ".join(f"group {i}: shape {tuple(p.shape)}" for i, p in outside[:5]) + (
        ", ..." if n > 5 else "")
    warnings.warn(f"the optimizer steps {n} parameter{'s' * (n > 1)} that the watched model "
                  f"does not hold ({shown}): gradwatch neither measures nor clips {them}, so "
                  f"total_norm and clip= leave {them} out (clip_grad_norm_ over the optimizer's "
                  f"parameters counts {them}). To include {them}, make {them} part of the model: "
                  f"register {them} on one of its modules (`model.temperature = "
                  f"nn.Parameter(...)`, or the loss module holding {them} as a submodule)",
                  UserWarning, stacklevel=user_stacklevel())


def _key(layers: list[Any]) -> list[tuple[str, tuple[int, ...]]]:
    return [(layer.name, tuple(map(id, layer.params))) for layer in layers]
