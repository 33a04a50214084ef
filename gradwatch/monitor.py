"""`GradWatch`: the one stateful object; it sequences gradients → statistics → verdicts → clip
→ record → ledger → loggers over small parts that each do one job."""

from __future__ import annotations

import itertools
import math
import warnings
import weakref
from typing import Any, Literal, Mapping, Sequence

import torch
from torch import nn

from . import compile_support as cs
from .amp import AmpState
from .assemble import ForwardOrder, Pending, assemble, layer_norms
from .clip import ClipPolicy, make_policy
from .hooks import Collector, Hook, user_stacklevel
from .layers import discover_layers, remove_all
from .ledger import Ledger
from .measure import HostBatch, UpdateTracker, device_total, layer_values, locate_nonfinite, \
    use_statistics
from .norms import TINY, combine, per_tensor_norms, repair_norms
from .options import validate
from .records import Finding, StepRecord
from .rules import Judge
from .runsummary import summarize
from .spikes import SpikeTracker
from .statistics import Statistic, UpdateRatio, check_statistics
from .summary import format_summary
from .thresholds import Thresholds

__all__ = ["GradWatch", "NonFiniteGradientError"]

OnNonFinite = Literal["warn", "raise", "skip", "zero"]


class NonFiniteGradientError(FloatingPointError):
    """Raised by ``on_nonfinite="raise"`` when a watched gradient holds NaN or Inf."""


class GradWatch:
    """Measures per-layer gradient statistics, judges them, and optionally clips, at every step.

    Args:
        model: The model to watch. Every module that directly owns trainable parameters is a
            layer, named as in ``model.named_modules()``; a shared parameter counts once.
        optimizer: When given, measuring and clipping happen automatically right before each
            ``optimizer.step()`` (where gradients are final: accumulated, reduced by DDP and
            unscaled by ``GradScaler.step``) and the update/weight ratio is measured across it;
            do not call `step` yourself then. Closure optimizers (LBFGS) are refused: call
            `step` inside the closure instead.
        thresholds: The bounds of the verdict rules (default `Thresholds()`).
        clip: ``None``, a max global norm (``clip=1.0`` is ``clip_grad_norm_(params, 1.0)``),
            ``"auto"`` (`gradwatch.clip.ZClip`), or a `gradwatch.clip` policy. Clipping gives
            the same result on recorded and unrecorded steps.
        activations: Also measure output-gradient norms, dead/saturated units, gradients
            through time and where a forward-born NaN appears (hooks on recorded forwards).
        every: Record every ``every``-th step; a non-finite step is always recorded when it is
            measured (``on_nonfinite`` other than "warn", or clipping).
        on_nonfinite: ``"warn"``, ``"raise"`` (`NonFiniteGradientError` after the record is
            logged), ``"skip"`` (parameters and optimizer state untouched; needs
            ``optimizer``) or ``"zero"``. The last three check every step, forward included.
        scaler: A ``torch.amp.GradScaler``; norms and clipping are then on unscaled gradients.
        loggers: A list of callables receiving every `StepRecord` (see `gradwatch.loggers`).
        history: How many records stay in `history` (loggers still see every record).
        statistics: Extra per-layer `gradwatch.statistics.Statistic` declarations.
    """

    def __init__(self, model: nn.Module, *, optimizer: torch.optim.Optimizer | None = None,
                 thresholds: Thresholds | None = None,
                 clip: float | str | ClipPolicy | None = None, activations: bool = True,
                 every: int = 1, on_nonfinite: OnNonFinite = "warn", scaler: Any = None,
                 loggers: Sequence[Any] = (), history: int = 10_000,
                 statistics: Sequence[Statistic] = ()) -> None:
        validate(model, optimizer, thresholds, activations, every, on_nonfinite, scaler,
                 loggers, history, clip)
        self.thresholds = thresholds if thresholds is not None else Thresholds()
        self.policy = make_policy(clip)
        self.statistics = check_statistics(statistics)
        self.every, self.on_nonfinite, self.activations = every, on_nonfinite, activations
        self.optimizer, self.scaler = optimizer, scaler
        compiled = cs.compiled_names(model)
        if compiled:
            warnings.warn(cs.compiled_warning(compiled), UserWarning, stacklevel=2)
        model = cs.unwrap_compiled(model)
        self._layers = discover_layers(model)
        self._params = [p for layer in self._layers for p in layer.params]
        ends = list(itertools.accumulate(len(layer.params) for layer in self._layers))
        self._slices = [slice(e - len(layer.params), e) for layer, e in zip(self._layers, ends)]
        self._collector = Collector(list(model.named_modules()), self._layers,
                                    activations=activations)
        c = self._collector
        self._forward = ForwardOrder(self._layers, c.names, c.owner_of, c.weight_user)
        self._saturating = any(k == "saturating" for k in c.kinds)
        self._amp = AmpState(scaler, optimizer)
        self._amp_pending = 0
        if self._amp.skips is not None:
            c.amp_poll = Hook(self, "_note_amp_skip")
        self._judge = Judge(self.thresholds)
        self._spikes = SpikeTracker([layer.name for layer in self._layers])
        names = [s.name for s in self.statistics]
        self._ledger = Ledger(loggers, history, {
            "gradwatch": _version(), "thresholds": self.thresholds.to_dict(),
            "layers": [layer.name for layer in self._layers],
            "roles": {layer.name: layer.role for layer in self._layers},
            "options": {"every": every, "clip": repr(self.policy), "activations": activations,
                        "on_nonfinite": on_nonfinite, "optimizer": type(optimizer).__name__
                        if optimizer is not None else None, "amp": scaler is not None},
            "statistics": [{"name": s.name, "label": s.label} for s in self.statistics]})
        self.loggers = self._ledger.loggers
        layer_of = [i for i, layer in enumerate(self._layers) for _ in layer.params]
        self._updates = UpdateTracker(self._params, layer_of, len(self._layers),
                                      UpdateRatio.sample) if optimizer is not None else None
        self._pending: Pending | None = None
        self._stashed: list[tuple[Any, Any]] | None = None
        self._step, self._closed, self._warned_no_act = 0, False, False
        self._optimizer_handles: list[Any] = []
        if optimizer is not None:
            self._optimizer_handles += [
                optimizer.register_step_pre_hook(Hook(self, "_before_optimizer_step")),
                optimizer.register_step_post_hook(Hook(self, "_after_optimizer_step"))]
        self._finalizer = weakref.finalize(self, _release, self._optimizer_handles, c)
        self._sync_hooks()

    # ------------------------------------------------------------------ public API

    @property
    def history(self) -> tuple[StepRecord, ...]:
        """The most recent records, oldest first (at most ``history`` of them)."""
        self._flush()
        return tuple(self._ledger.records)

    @property
    def layer_names(self) -> tuple[str, ...]:
        """The watched layers, in forward order once a recorded forward pass has run."""
        return tuple(self._layers[i].name for i in self._forward.order)

    @property
    def head(self) -> str | None:
        """The output-side layer the depth-relative rules compare with (AGC's final layer)."""
        h = self._forward.head
        return None if h is None else self._layers[h].name

    @property
    def step_count(self) -> int:
        """Optimizer steps seen so far (recorded or not)."""
        return self._step

    def step(self) -> StepRecord | None:
        """Measures (and clips) the current gradients: call after ``backward()``, before
        ``optimizer.step()``. Returns the record, or None on a step that is not recorded.

        Raises:
            RuntimeError: The watch is closed, or it was given ``optimizer=``.
        """
        if self._closed:
            raise RuntimeError("GradWatch.step() was called after close(); create a new "
                               "GradWatch to keep monitoring.")
        if self.optimizer is not None:
            raise RuntimeError("GradWatch.step() is called for you before every optimizer.step() "
                               "because `optimizer=` was given; remove your call to watch.step() "
                               "or construct GradWatch without `optimizer=`.")
        record = self._measure()
        return record if record is not None else self._flush()

    def diagnose(self) -> list[Finding]:
        """What is wrong with this run so far, most severe first (empty when nothing is)."""
        self._flush()
        return self._judge.diagnose()

    def summary(self) -> str:
        """The diagnosis and a per-layer table a person can read."""
        self._flush()
        return format_summary(summarize(self._ledger.records, steps=self._step,
                                        run=self._ledger.run, flags=self._ledger.flags,
                                        findings=self._judge.diagnose()))

    def close(self) -> None:
        """Removes every hook gradwatch added and closes the loggers; safe to call twice."""
        if self._closed:
            return
        self._flush_amp_skips()
        self._flush()
        self._closed = True
        self._finalizer()
        self._restore_grads()
        self._ledger.close()

    def state_dict(self) -> dict[str, Any]:
        """Step counter, spike statistics, rule windows, findings, counters, clip state."""
        self._flush()
        return {"step": self._step, **self._spikes.state_dict(), **self._ledger.state_dict(),
                "judge": self._judge.state_dict(),
                "clip": self.policy.state_dict() if self.policy is not None else None}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores what `state_dict` saved, so a resumed run behaves as if never interrupted."""
        self._spikes.load_state_dict(state)
        self._step = int(state["step"])
        self._ledger.load_state_dict(state, self._step)
        self._judge.load_state_dict(state.get("judge", {}))
        if self.policy is not None and state.get("clip") is not None:
            self.policy.load_state_dict(state["clip"])
        self._sync_hooks()

    def __enter__(self) -> GradWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"step={self._step}"
        return (f"GradWatch(layers={len(self._layers)}, every={self.every}, clip={self.policy!r}, "
                f"activations={self.activations}, on_nonfinite={self.on_nonfinite!r}, {state}, "
                f"recorded={self._ledger.run['recorded']})")

    # ------------------------------------------------------------------ the step

    def _before_optimizer_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._closed:
            return
        closure = args[1] if len(args) > 1 else kwargs.get("closure")  # args[0] is optimizer
        if closure is not None:
            raise RuntimeError(f"GradWatch(optimizer=...) cannot watch {type(optimizer).__name__}"
                               f".step(closure): the gradients only exist inside the closure. "
                               f"Construct GradWatch without `optimizer=` and call "
                               f"watch.step() inside your closure after loss.backward().")
        self._measure()
        if self._pending is not None and self._updates is not None:
            self._updates.before()

    def _after_optimizer_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._restore_grads()
        if self._pending is not None and self._updates is not None:
            self._flush(self._updates.after())

    def _measure(self) -> StepRecord | None:
        self._flush()
        self._flush_amp_skips(measuring=True)
        recording = self._step % self.every == 0
        checking = self.on_nonfinite in ("skip", "zero")
        if not recording and self.policy is None and not checking:
            self._advance()
            return None
        params = [p for p in self._params if p.grad is not None]
        present = None if len(params) == len(self._params) else [
            p.grad is not None for p in self._params]
        if not params:
            warnings.warn("GradWatch found no gradients to measure: call it after backward().",
                          RuntimeWarning, stacklevel=user_stacklevel())
            self._advance()
            return None
        scaled = self._amp.grads_scaled()
        if scaled and self.policy is not None:
            self._amp.unscale_for_clipping()
            scaled = False
        grads = [p.grad for p in params]
        norms_dev = per_tensor_norms(grads)
        if not (recording or checking or self.policy.needs_host_norm
                or norms_dev.device.type == "cpu"):  # clip on the device: no host sync
            self.policy.clip_(grads, device_total(norms_dev, grads), params=params,
                              is_output=self._is_output(params))
            self._advance()
            return None
        batch = HostBatch(norms_dev.device)
        batch.add("norms", norms_dev)
        batch.add("total32", torch.linalg.vector_norm(norms_dev).reshape(1))
        scale = self._amp.loss_scale()  # output gradients are scaled even after unscale_
        batch.add("scale", [scale.double()] if scale is not None else [1.0])
        data = self._collector.take() if self._collector.armed else None
        if data is not None:
            batch.add("events", [e[2] for e in data.events])
            batch.add("forward", [flag for _, flag in data.forward_bad])
            batch.add("units", [v for vals in data.units.values() for v in vals])
            batch.add("time", [v for vals in data.time.values() for v in vals])
        if recording:
            use_statistics(self.statistics, grads, params, batch)
        host = batch.fetch()  # the one device-to-host copy of the step
        raw = host["norms"]
        act_inv = 1.0 / host["scale"][0]
        inv = act_inv if scaled else 1.0
        fixed = repair_norms(raw, grads)
        norms = fixed if inv == 1.0 else [n * inv for n in fixed]
        total32 = host["total32"][0]
        exact = fixed != raw or not TINY <= total32 < math.inf
        total = combine(norms) if exact else total32 * inv
        overflow = self._amp.overflow(scaled, total)
        finite = math.isfinite(total)
        skipped = False
        if not finite and not overflow:
            recording = True  # a non-finite step is always recorded once seen
            if self.on_nonfinite == "skip":
                skipped = self._stash_grads()
            elif self.on_nonfinite == "zero":
                for g in grads:
                    (g._values() if g.is_sparse else g).nan_to_num_(nan=0.0, posinf=0.0,
                                                                  neginf=0.0)
        coef = 1.0
        if self.policy is not None and not (skipped or overflow):
            clip_norm = total
            if self.on_nonfinite == "zero" and not finite:
                clip_norm = combine(repair_norms(per_tensor_norms(grads).tolist(), grads))
            result = self.policy.clip_(grads, clip_norm, params=params,
                                       is_output=self._is_output(params))
            coef = self._clip_coef(result, clip_norm, grads) if recording else 1.0
        if not recording:
            self._advance()
            return None
        return self._record(data, host, params, present, norms, total, coef, skipped, overflow,
                            act_inv)

    def _record(self, data: Any, host: dict[str, list[float]], params: list[Any],
                present: list[bool] | None, norms: list[float], total: float, coef: float,
                skipped: bool, overflow: bool, act_inv: float) -> StepRecord | None:
        if data is not None:
            self._forward.learn(data.completed)
        order, lnorms = layer_norms(self._forward.order, self._slices, norms, present)
        act, values = {}, {}
        if data is not None:
            act, values, _ = layer_values(data, host, act_inv)
            if self.activations and not data.events and not self._warned_no_act:
                self._warned_no_act = True
                warnings.warn(cs.NO_ACTIVATION_GRADS, UserWarning, stacklevel=user_stacklevel())
        for s in self.statistics:
            per = host.get(f"stat:{s.name}")
            if per is None:  # a forced record of an unrecorded non-finite step
                continue
            at = iter(per)
            by_param = [next(at) if present is None or present[k] else None
                        for k in range(len(self._params))]
            for i in order:
                vals = [v for v in by_param[self._slices[i]] if v is not None]
                values.setdefault(i, {})[s.name] = s.combine(vals) if vals else None
        origin = birth = None
        if not math.isfinite(total) and not overflow and data is not None:
            names = [layer.name for layer in self._layers]
            origin, birth = locate_nonfinite(self._collector, data, host, names,
                                             dict(zip(order, lnorms)), order)
        self._pending = Pending(self._step, order, lnorms, act, values, total, coef, skipped,
                                overflow, origin, birth)
        self._advance()
        return self._flush() if not math.isfinite(total) else None

    def _flush(self, updates: Any = None) -> StepRecord | None:
        p, self._pending = self._pending, None
        if p is None:
            return None
        if updates is not None:
            u = updates.tolist()
            for i in p.order:
                d2, w2 = u[i]
                p.values.setdefault(i, {})["update_ratio"] = math.sqrt(d2 / w2) if w2 > 0 else None
        record = assemble(p, self._layers, self._forward.head, self._judge, self._spikes,
                          self.thresholds, self._saturating)
        self._ledger.publish(record)
        if record.nonfinite:
            self._report_nonfinite(record)
        return record

    def _report_nonfinite(self, record: StepRecord) -> None:
        where = {"forward": f"born in the forward pass at {record.first_nonfinite!r}",
                 "loss": "born in the loss"}.get(
            record.nonfinite_origin or "",
            f"first in backward order at layer {record.first_nonfinite!r}")
        message = f"non-finite gradient at step {record.step}: {where} " \
                  f"(total norm {record.total_norm})"
        if self.on_nonfinite == "raise":
            raise NonFiniteGradientError(message + "; pass on_nonfinite='skip' to skip such steps.")
        if self.on_nonfinite == "warn" or (self.on_nonfinite in ("skip", "zero")):
            warnings.warn(message + ("; the optimizer step was skipped" if record.skipped else ""),
                          RuntimeWarning, stacklevel=user_stacklevel())

    # ------------------------------------------------------------------ helpers

    def _note_amp_skip(self) -> None:
        if not self._closed and self._amp.poll_skipped():
            self._amp_pending += 1
            self._collector.take()  # output gradients of the skipped backward: scaled inf/NaN

    def _flush_amp_skips(self, measuring: bool = False) -> None:
        if self._closed or self._amp.skips is None:
            return
        self._amp_pending += self._amp.poll_skipped(measuring)
        while self._amp_pending:
            self._amp_pending -= 1
            if self._step % self.every == 0:
                self._pending = Pending(self._step, [], [], {}, {}, math.inf, 1.0, False, True)
                self._flush()
            self._advance()

    def _advance(self) -> None:
        """Counts a step and arms (or disarms) the hooks for the next one."""
        self._step += 1
        self._sync_hooks()

    def _sync_hooks(self) -> None:
        c = self._collector
        every_step = self.on_nonfinite in ("raise", "skip", "zero")
        armed = not self._closed and (self._step % self.every == 0 or every_step)
        wanted = not self._closed and (self._amp.skips is not None or c.compiled or (
            armed and (self.activations or every_step or not self._forward.known)))
        c.armed = armed and wanted
        if wanted:
            c.attach()
        elif c.attached:
            c.detach()

    def _is_output(self, params: list[Any]) -> list[bool]:
        head = self._forward.head
        last = set(map(id, self._layers[head].params)) if head is not None else set()
        return [id(p) in last for p in params]

    def _clip_coef(self, result: Any, total: float, grads: list[Any]) -> float:
        if result is not None:
            return float(result)
        after = combine(repair_norms(per_tensor_norms(grads).tolist(), grads))
        return after / total if total > 0 and math.isfinite(total) else 1.0

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


def _release(handles: list[Any], collector: Collector) -> None:
    remove_all(handles)
    collector.close()


def _version() -> str:
    from . import __version__

    return __version__
