"""`GradWatch`: the one stateful object that owns gradwatch's hooks on a model."""

from __future__ import annotations

import itertools
import math
import warnings
import weakref
from collections import Counter, deque
from typing import Any, Literal, Mapping, Sequence

import torch
from torch import Tensor, nn

from . import _hooks, compat
from .amp import SkippedStepDetector, loss_scale
from .clip import ClipPolicy, make_policy
from ._setup import discover_layers, owning_modules, remove_all, validate
from .loggers import Logger
from .norms import TINY, combine, per_tensor_norms, repair_norms, tensor_norm
from .records import LayerStat, Status, StepRecord
from .summary import format_summary
from .thresholds import RunningStats, Thresholds, layer_verdicts

__all__ = ["GradWatch", "NonFiniteGradientError"]

OnNonFinite = Literal["warn", "raise", "skip", "zero"]


class NonFiniteGradientError(FloatingPointError):
    """Raised by ``on_nonfinite="raise"`` when a watched gradient holds NaN or Inf."""


class GradWatch:
    """Measures per-layer gradient norms, judges them, and optionally clips, at every step.

    Args:
        model: The model to watch. Every module that directly owns trainable parameters is a
            layer, named as in ``model.named_modules()``; a shared parameter counts once.
        optimizer: When given, measuring and clipping happen automatically right before each
            ``optimizer.step()`` (where gradients are final: accumulated, reduced by DDP and
            unscaled by ``GradScaler.step``); do not call `step` yourself then.
        thresholds: When a layer counts as vanishing, exploding or spiking (default `Thresholds()`).
        clip: ``None`` (no clipping), a max global norm (``clip=1.0`` is
            ``clip_grad_norm_(params, 1.0)``), ``"auto"`` (`gradwatch.clip.ZClip`), or a
            `gradwatch.clip` policy.
        activations: Also measure the gradient w.r.t. each layer's output (tensor hooks attached
            in a forward hook, so in-place ops after the layer are fine).
        every: Record every ``every``-th step; the steps between cost almost nothing (the
            forward hooks are attached only for the forward pass of a recorded step) and never
            synchronise with the device (clipping still happens at every step).
        on_nonfinite: What to do when a gradient holds NaN/Inf: ``"warn"``, ``"raise"``
            (`NonFiniteGradientError` after the record is logged), ``"skip"`` (the optimizer step
            leaves parameters and optimizer state untouched; needs ``optimizer``) or ``"zero"``
            (non-finite entries become 0). ``"skip"`` and ``"zero"`` read one scalar on the
            host at every step, recorded or not.
        scaler: A ``torch.amp.GradScaler``; norms and clipping are then on unscaled gradients
            whether the gradients reach gradwatch scaled or already unscaled.
        loggers: Callables that receive every `StepRecord` (see `gradwatch.loggers`); ``close()``
            is called on those that have it when the watch closes.
        history: How many records stay in `history` (loggers still see every record).
    """

    def __init__(self, model: nn.Module, *, optimizer: torch.optim.Optimizer | None = None,
                 thresholds: Thresholds | None = None,
                 clip: float | str | ClipPolicy | None = None, activations: bool = True,
                 every: int = 1, on_nonfinite: OnNonFinite = "warn", scaler: Any = None,
                 loggers: Sequence[Logger] = (), history: int = 10_000) -> None:
        validate(model, optimizer, thresholds, activations, every, on_nonfinite, scaler,
                  loggers, history)
        self.thresholds = thresholds if thresholds is not None else Thresholds()
        self.policy = make_policy(clip)
        self.every, self.on_nonfinite, self.activations = every, on_nonfinite, activations
        self.optimizer, self.scaler = optimizer, scaler
        self.loggers = tuple(loggers)
        compiled = compat.compiled_names(model)
        if compiled:
            warnings.warn(compat.compiled_warning(compiled), UserWarning, stacklevel=2)
        model = compat.unwrap_compiled(model)
        self._layers = discover_layers(model)
        # every watched parameter in one flat list, and each layer's slice of it
        self._params = [p for layer in self._layers for p in layer.params]
        ends = list(itertools.accumulate(len(layer.params) for layer in self._layers))
        self._slices = [slice(end - len(layer.params), end)
                        for layer, end in zip(self._layers, ends)]
        self._history: deque[StepRecord] = deque(maxlen=history)
        self._step = 0
        self._stats = {layer.name: RunningStats() for layer in self._layers}
        self._total_stats = RunningStats()
        self._counts: Counter[tuple[str, str]] = Counter()  # (layer, status or "spike") -> steps
        self._run: Counter[str] = Counter()  # recorded, clipped, nonfinite, skipped, spikes
        self._order: list[int] = []  # layer indices in forward order (first call)
        self._order_final = False
        self._act: dict[int, list[Tensor | float]] = {}
        self._fired: dict[int, int] = {}  # layer index -> position in backward order
        self._stashed: list[tuple[Tensor, Tensor | None]] | None = None
        self._closed = False
        self._warned_no_act = False
        self._compiled = False  # whether a forward hook has been traced by torch.compile
        # Overflow steps GradScaler skipped never reach optimizer.step(): noticed afterwards.
        self._amp_skips = (SkippedStepDetector(scaler, optimizer)
                           if scaler is not None and optimizer is not None else None)

        ref = weakref.ref(self)
        self._modules = owning_modules(model, self._layers)
        self._forward_hooks = [_hooks.forward_hook(ref, i) for i in range(len(self._layers))]
        self._grad_hooks = [_hooks.grad_hook(ref, i) for i in range(len(self._layers))]
        # Forward hooks are attached only while needed (the forward of a recorded step, the AMP
        # skip detector), so unrecorded steps run the model without them; optimizer hooks stay.
        self._forward_handles: list[Any] = []
        self._optimizer_handles: list[Any] = []
        if optimizer is not None:
            self._optimizer_handles += [
                optimizer.register_step_pre_hook(_hooks.step_pre_hook(ref)),
                optimizer.register_step_post_hook(_hooks.step_post_hook(ref))]
        # the finalizer removes whatever the two lists hold when it runs
        self._finalizer = weakref.finalize(self, remove_all, self._optimizer_handles,
                                           self._forward_handles)
        self._sync_forward_hooks()

    # ------------------------------------------------------------------ public API

    @property
    def history(self) -> tuple[StepRecord, ...]:
        """The most recent records, oldest first (at most ``history`` of them)."""
        return tuple(self._history)

    @property
    def layer_names(self) -> tuple[str, ...]:
        """The watched layers, in forward order once a recorded forward pass has run."""
        return tuple(self._layers[i].name for i in self._layer_order())

    @property
    def step_count(self) -> int:
        """Optimizer steps seen so far (recorded or not)."""
        return self._step

    def step(self) -> StepRecord | None:
        """Measures (and clips) the current gradients: call after ``backward()``, before
        ``optimizer.step()``. Returns the record, or None on a step that is not recorded.

        Raises:
            RuntimeError: The watch is closed, or it was given ``optimizer=`` (it then steps
                itself right before ``optimizer.step()``).
        """
        self._check_open("step()")
        if self.optimizer is not None:
            raise RuntimeError("GradWatch.step() is called for you before every optimizer.step() "
                               "because `optimizer=` was given; remove your call to watch.step() "
                               "or construct GradWatch without `optimizer=`.")
        return self._measure()

    def summary(self) -> str:
        """A per-layer table a person can read: norms, statuses, how often each was flagged."""
        return format_summary(self.history, self._counts, self._run, self._step)

    def close(self) -> None:
        """Removes every hook gradwatch added and closes the loggers; safe to call twice."""
        if self._closed:
            return
        self._check_amp_skip()
        self._closed = True
        self._finalizer()
        self._restore_grads()
        for logger in self.loggers:
            close = getattr(logger, "close", None)
            if callable(close):
                close()

    def state_dict(self) -> dict[str, Any]:
        """Step counter, running statistics, counters and clip-policy state."""
        return {
            "step": self._step,
            "stats": {name: s.state_dict() for name, s in self._stats.items()},
            "total_stats": self._total_stats.state_dict(),
            "counts": [[layer, what, n] for (layer, what), n in self._counts.items()],
            "run": dict(self._run),
            "clip": self.policy.state_dict() if self.policy is not None else None,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores what `state_dict` saved, so a resumed run behaves as if never interrupted."""
        unknown = set(state["stats"]) - set(self._stats)
        if unknown:
            raise ValueError(f"Expected a state_dict of a GradWatch on the same model, but it "
                             f"names layers this model lacks: {sorted(unknown)[:5]}.")
        self._step = int(state["step"])
        for name, s in state["stats"].items():
            self._stats[name] = RunningStats.from_state(s)
        self._total_stats = RunningStats.from_state(state["total_stats"])
        self._counts = Counter({(layer, what): int(n) for layer, what, n in state["counts"]})
        self._run = Counter({k: int(v) for k, v in state["run"].items()})
        if self.policy is not None and state.get("clip") is not None:
            self.policy.load_state_dict(state["clip"])
        self._sync_forward_hooks()

    def __enter__(self) -> GradWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"step={self._step}"
        return (f"GradWatch(layers={len(self._layers)}, every={self.every}, clip={self.policy!r}, "
                f"activations={self.activations}, on_nonfinite={self.on_nonfinite!r}, {state}, "
                f"recorded={self._run['recorded']})")

    # ------------------------------------------------------------------ hook callbacks

    @property
    def _armed(self) -> bool:
        """Whether the forward pass now running belongs to a step that will be recorded."""
        return not self._closed and self._step % self.every == 0

    def _on_forward(self, index: int, output: Any) -> None:
        if not self._order_final and index not in self._order:
            self._order.append(index)
        if not self._compiled and torch.compiler.is_compiling():
            self._compiled = True  # traced into a graph: hooks removed later might still run
        if self.activations and torch.is_grad_enabled():
            for t in _hooks.iter_tensors(output):
                if t.requires_grad:
                    t.register_hook(self._grad_hooks[index])

    def _on_output_grad(self, index: int, grad: Tensor) -> None:
        self._fired.setdefault(index, len(self._fired))
        self._act.setdefault(index, []).append(tensor_norm(grad.detach()))

    def _on_optimizer_step(self) -> None:
        if not self._closed:
            self._measure()

    def _after_optimizer_step(self) -> None:
        self._restore_grads()

    # ------------------------------------------------------------------ measuring

    def _check_amp_skip(self, measuring: bool = False) -> None:
        """Records a step that GradScaler skipped on overflow (optimizer.step() never ran)."""
        det = self._amp_skips
        if det is None or self._closed or not (det.mark_measured() if measuring else det.poll()):
            return
        record = StepRecord(step=self._step, total_norm=math.inf, amp_overflow=True)
        self._act.clear()  # output gradients of the skipped backward: scaled inf/NaN, discarded
        self._fired.clear()
        self._advance()
        if record.step % self.every == 0:
            self._publish(record)

    def _measure(self) -> StepRecord | None:
        self._check_amp_skip(measuring=True)
        recording = self._step % self.every == 0
        if not recording and self.policy is None and self.on_nonfinite not in ("skip", "zero"):
            self._advance()  # nothing to measure: no work, no collective, no host sync
            return None
        params = self._params
        grads = [p.grad for p in params]
        if any(g is None for g in grads):  # frozen since, unused in this step, or no backward
            params = [p for p, g in zip(params, grads) if g is not None]
            grads = [g for g in grads if g is not None]
        if not grads:
            warnings.warn("GradWatch found no gradients to measure: call it after backward().",
                          RuntimeWarning, stacklevel=_hooks.user_stacklevel())
            self._advance()
            return None
        scaled = self._grads_scaled()
        if scaled and self.policy is not None:
            self._unscale_for_clipping()
            grads, scaled = [p.grad for p in params], False
        need_host = recording or self.on_nonfinite in ("skip", "zero") or (
            self.policy is not None and self.policy.needs_host_norm)
        norms_dev = per_tensor_norms(grads)
        total_dev = torch.linalg.vector_norm(norms_dev)  # fp32, as clip_grad_norm_ forms it
        if not need_host:  # only a policy that clips with the device norm: no host sync
            self.policy.clip_(grads, total_dev, params=params, is_output=self._is_output(params))
            self._advance()
            return None
        return self._measure_on_host(params, grads, norms_dev, total_dev, scaled, recording)

    def _measure_on_host(self, params: list[Tensor], grads: list[Tensor], norms_dev: Tensor,
                         total_dev: Tensor, scaled: bool, recording: bool) -> StepRecord | None:
        act_index = [(i, len(vals)) for i, vals in self._act.items()] if recording else []
        parts = [total_dev.double().reshape(1), norms_dev.double()]
        on_device = [v for i, _ in act_index for v in self._act[i] if isinstance(v, Tensor)]
        if on_device:  # accelerator output-gradient norms join the one copy; CPU ones are floats
            parts.append(torch.stack(on_device).to(norms_dev.device, torch.float64))
        amp_scale = loss_scale(self.scaler)  # output gradients are scaled even after unscale_
        if amp_scale is not None:
            parts.append(amp_scale.double().reshape(1).to(norms_dev.device))
        host = torch.cat(parts).tolist()  # the one device-to-host copy of the step
        act_inv_scale = 1.0 / host.pop() if amp_scale is not None else 1.0
        inv_scale = act_inv_scale if scaled else 1.0
        total32, raw = host[0], host[1:len(grads) + 1]
        repaired = repair_norms(raw, grads)
        norms = repaired if inv_scale == 1.0 else [n * inv_scale for n in repaired]
        # Healthy steps log (and clip with) torch's own fp32 total; pathological ones the exact one.
        exact = repaired != raw or not TINY <= total32 < math.inf
        total = combine(norms) if exact else total32 * inv_scale
        overflow = self._amp_overflow(scaled, total)
        skipped = False
        if not math.isfinite(total) and not overflow:
            if self.on_nonfinite == "skip":
                skipped = self._stash_grads()
            elif self.on_nonfinite == "zero":
                for g in grads:
                    torch.nan_to_num_(g, nan=0.0, posinf=0.0, neginf=0.0)
        coef = 1.0
        if self.policy is not None and not (skipped or overflow):
            clip_norm = total
            if self.on_nonfinite == "zero" and not math.isfinite(total):
                clip_norm = combine(repair_norms(per_tensor_norms(grads).tolist(), grads))
            result = self.policy.clip_(grads, clip_norm, params=params,
                                       is_output=self._is_output(params))
            coef = self._clip_coef(result, clip_norm, grads) if recording else 1.0
        record = None
        if recording:
            copied = iter(host[len(grads) + 1:])
            act_norms = {i: combine([v if isinstance(v, float) else next(copied)
                                     for v in self._act[i]]) * act_inv_scale
                         for i, _ in act_index}
            if self.activations and not act_index and not self._warned_no_act:
                self._warned_no_act = True
                warnings.warn(compat.NO_ACTIVATION_GRADS, UserWarning,
                              stacklevel=_hooks.user_stacklevel())
            record = self._make_record(params, norms, act_norms, total, coef, skipped, overflow)
        self._act.clear()
        self._fired.clear()
        self._advance()
        if record is not None:
            self._publish(record)
        return record

    def _make_record(self, params: list[Tensor], norms: list[float], act_norms: dict[int, float],
                     total: float, coef: float, skipped: bool, overflow: bool) -> StepRecord:
        order, layer_norms = [], []
        if len(params) == len(self._params):  # every watched parameter has a gradient
            order = self._layer_order()
            layer_norms = [combine(norms[self._slices[i]]) for i in order]
        else:
            by_param = {id(p): n for p, n in zip(params, norms)}
            for i in self._layer_order():  # the layers with a gradient, and their norms
                present = [by_param[k] for k in map(id, self._layers[i].params) if k in by_param]
                if present:
                    order.append(i)
                    layer_norms.append(combine(present))
        verdicts = layer_verdicts(layer_norms, self.thresholds)
        if overflow:  # the loss scale overflowed, not the model: no layer verdicts, no origin
            verdicts = [(Status.OK, "")] * len(layer_norms)
        healthy = math.isfinite(total) and not overflow
        stats = {}
        for i, norm, (status, reason) in zip(order, layer_norms, verdicts):
            act = act_norms.get(i)
            if status is Status.OK and act is not None and not math.isfinite(act) and not overflow:
                status, reason = Status.NONFINITE, f"output gradient norm is {act}"
            name = self._layers[i].name
            spike = self._stats[name].observe(norm, self.thresholds) if healthy else ""
            stats[name] = LayerStat(norm=norm, act_norm=act, status=status, spike=bool(spike),
                                    reason=f"{reason}; {spike}" if reason and spike
                                    else reason or spike)
        spike = bool(self._total_stats.observe(total, self.thresholds)) if healthy else False
        self._order_final = True
        return StepRecord(step=self._step, total_norm=total, clip_coef=coef, layers=stats,
                          first_nonfinite=self._first_nonfinite(order, stats), spike=spike,
                          skipped=skipped, amp_overflow=overflow)

    def _first_nonfinite(self, order: list[int], stats: Mapping[str, LayerStat]) -> str | None:
        depth = {i: k for k, i in enumerate(order)}
        backward = sorted(order, key=lambda i: (self._fired.get(i, math.inf), -depth[i]))
        for i in backward:
            if stats[self._layers[i].name].status is Status.NONFINITE:
                return self._layers[i].name
        return None

    def _publish(self, record: StepRecord) -> None:
        self._history.append(record)
        self._run["recorded"] += 1
        self._run["clipped"] += record.clipped
        self._run["skipped"] += record.skipped
        self._run["spikes"] += record.spike
        self._run["amp_overflow"] += record.amp_overflow
        for name, s in record.layers.items():
            if s.status is not Status.OK:
                self._counts[(name, s.status.value)] += 1
            if s.spike:
                self._counts[(name, "spike")] += 1
        for logger in self.loggers:
            logger(record)
        if record.first_nonfinite is None and math.isfinite(record.total_norm):
            return
        if record.amp_overflow:
            return
        self._run["nonfinite"] += 1
        message = (f"non-finite gradient at step {record.step}: first in backward order at layer "
                   f"{record.first_nonfinite!r} (total norm {record.total_norm})")
        if self.on_nonfinite == "raise":
            raise NonFiniteGradientError(message + "; pass on_nonfinite='skip' to skip such steps.")
        if self.on_nonfinite == "warn":
            warnings.warn(message, RuntimeWarning, stacklevel=_hooks.user_stacklevel())

    # ------------------------------------------------------------------ helpers

    def _layer_order(self) -> list[int]:
        if self._order_final and len(self._order) == len(self._layers):
            return self._order  # the common case once a record exists: every layer ran
        seen = set(self._order)
        return self._order + [i for i in range(len(self._layers)) if i not in seen]

    def _advance(self) -> None:
        """Counts a step and attaches or removes the forward hooks for the next one."""
        self._step += 1
        self._sync_forward_hooks()

    def _sync_forward_hooks(self) -> None:
        wanted = not self._closed and (
            self._amp_skips is not None  # the AMP skip detector polls in them
            or not self._order_final  # the forward order is learnt on the first record
            or (self.activations and (self._compiled or self._step % self.every == 0)))
        if wanted and not self._forward_handles:
            self._forward_handles.extend(module.register_forward_hook(hook) for module, hook
                                         in zip(self._modules, self._forward_hooks))
        elif not wanted and self._forward_handles:
            remove_all(self._forward_handles)
            self._forward_handles.clear()

    def _is_output(self, params: list[Tensor]) -> list[bool]:
        last = set(map(id, self._layers[self._layer_order()[-1]].params))
        return [id(p) in last for p in params]

    def _clip_coef(self, result: float | Tensor | None, total: float, grads: list[Tensor]) -> float:
        if result is not None:
            return float(result)
        after = combine(repair_norms(per_tensor_norms(grads).tolist(), grads))
        return after / total if total > 0 and math.isfinite(total) else 1.0

    def _grads_scaled(self) -> bool:
        scaler = self.scaler
        if scaler is None or not scaler.is_enabled():
            return False
        from torch.amp.grad_scaler import OptState

        states = scaler._per_optimizer_states
        if self.optimizer is not None:
            state = states.get(id(self.optimizer))
            return state is None or state["stage"] is OptState.READY
        return not any(s["stage"] is OptState.UNSCALED for s in states.values())

    def _unscale_for_clipping(self) -> None:
        if self.optimizer is None:
            raise RuntimeError("Clipping AMP-scaled gradients needs the optimizer: pass "
                               "`optimizer=` to GradWatch, or call scaler.unscale_(optimizer) "
                               "before watch.step().")
        self.scaler.unscale_(self.optimizer)

    def _amp_overflow(self, scaled: bool, total: float) -> bool:
        if self.scaler is None or not self.scaler.is_enabled() or math.isfinite(total):
            return False
        if scaled:
            return True
        states = self.scaler._per_optimizer_states.values()
        return any(v.item() > 0 for s in states for v in s["found_inf_per_device"].values())

    def _stash_grads(self) -> bool:
        if self.optimizer is None:
            return False
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        self._stashed = [(p, p.grad) for p in params]
        for p in params:
            p.grad = None
        return True

    def _restore_grads(self) -> None:
        if self._stashed is not None:
            for p, g in self._stashed:
                p.grad = g
            self._stashed = None

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise RuntimeError(f"GradWatch.{what} was called after close(); create a new "
                               f"GradWatch to keep monitoring.")
