"""`GradWatch`: the one stateful object; it sequences gradients → statistics → verdicts → clip
→ record → ledger → loggers over small parts that each do one job."""

from __future__ import annotations

import math
import warnings
import weakref
from typing import Any, Literal, Mapping, Sequence

import torch
from torch import nn

from . import compile_support as cs
from .amp import AmpState
from .assemble import Pending, assemble, pending_step
from .clip import ClipPolicy, make_policy
from .hooks import Hook, user_stacklevel
from .layers import remove_all
from .ledger import Ledger, run_header
from .diagnosis import nonfinite_message
from .options import refuse_closure, validate
from .records import Finding, StepRecord
from .rules import Judge
from .runsummary import summarize
from .spikes import SpikeTracker
from .step import GradStash, measure_step
from .statistics import Statistic, check_statistics
from .summary import format_summary
from .thresholds import Thresholds
from .watched import WatchedSet

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
        self._watched = w = WatchedSet(cs.unwrap_compiled(model, warn=True),
                                       activations=activations, optimizer=optimizer)
        self._amp = AmpState(scaler, optimizer)
        self._amp_pending = 0
        if self._amp.skips is not None:
            w.collector.amp_poll = Hook(self, "_note_amp_skip")
        self._judge = Judge(self.thresholds)
        self._spikes = SpikeTracker(w.names)
        self._ledger = Ledger(loggers, history, run_header(
            self.thresholds, w.layers, self.statistics, every=every,
            clip=repr(self.policy) if self.policy is not None else None,
            activations=activations, on_nonfinite=on_nonfinite, optimizer=type(
                optimizer).__name__ if optimizer is not None else None, amp=scaler is not None))
        self.loggers = self._ledger.loggers
        self._pending: Pending | None = None
        self._stash = GradStash()
        self._step, self._closed, self._warned_no_act = 0, False, False
        self._optimizer_handles: list[Any] = []
        if optimizer is not None:
            self._optimizer_handles += [
                optimizer.register_step_pre_hook(Hook(self, "_before_optimizer_step")),
                optimizer.register_step_post_hook(Hook(self, "_after_optimizer_step"))]
        self._finalizer = weakref.finalize(self, _release, self._optimizer_handles, w)
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
        w = self._watched
        return tuple(w.layers[i].name for i in w.forward.order)

    @property
    def head(self) -> str | None:
        """The output-side layer the depth-relative rules compare with (AGC's final layer)."""
        return self._watched.head_name()

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
        self._stash.restore()
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
        return (f"GradWatch(layers={len(self._watched.layers)}, every={self.every}, "
                f"clip={self.policy!r}, activations={self.activations}, on_nonfinite={self.on_nonfinite!r}, {state}, "
                f"recorded={self._ledger.run['recorded']})")

    # ------------------------------------------------------------------ the step

    def _before_optimizer_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._closed:
            return
        refuse_closure(optimizer, args, kwargs)
        self._measure()
        if self._pending is not None and self._watched.updates is not None:
            self._watched.updates.before()

    def _after_optimizer_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._stash.restore()
        if self._pending is not None and self._watched.updates is not None:
            self._flush(self._watched.updates.after())

    def _measure(self) -> StepRecord | None:
        self._flush()
        self._flush_amp_skips(measuring=True)
        recording = self._step % self.every == 0
        if not recording and self.policy is None and self.on_nonfinite not in ("skip", "zero"):
            self._advance()
            return None
        w = self._watched
        if w.refresh():
            self._spikes.add(w.names)
            self._sync_hooks()
        out = measure_step(w, self._amp, self.policy, self.statistics, stash=self._stash,
                           on_nonfinite=self.on_nonfinite, optimizer=self.optimizer,
                           recording=recording)
        if out is None:
            self._advance()
            return None
        if out.data is not None and self.activations and not out.data.events \
                and not self._warned_no_act:
            self._warned_no_act = True
            warnings.warn(cs.NO_ACTIVATION_GRADS, UserWarning, stacklevel=user_stacklevel())
        self._pending = pending_step(self._step, w, out.data, out.got, out.present,
                                     self.statistics, out.coef, out.skipped, out.overflow)
        self._advance()
        return self._flush() if not math.isfinite(out.got.total) else None

    def _flush(self, updates: dict[int, float | None] | None = None) -> StepRecord | None:
        p, self._pending = self._pending, None
        if p is None:
            return None
        for i, ratio in (updates or {}).items():
            if i in p.order:
                p.values.setdefault(i, {})["update_ratio"] = ratio
        w = self._watched
        record = assemble(p, w.layers, w.forward.head, self._judge, self._spikes,
                          self.thresholds, w.saturating)
        self._ledger.publish(record)
        if record.nonfinite and self.on_nonfinite == "raise":
            raise NonFiniteGradientError(nonfinite_message(record) + "; pass "
                                         "on_nonfinite='skip' to skip such steps.")
        if record.nonfinite:
            warnings.warn(nonfinite_message(record), RuntimeWarning, stacklevel=user_stacklevel())
        return record

    # ------------------------------------------------------------------ helpers

    def _note_amp_skip(self) -> None:
        if not self._closed and self._amp.poll_skipped():
            self._amp_pending += 1
            self._watched.collector.take()  # output gradients of the skipped backward: scaled inf/NaN

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
        every_step = self.on_nonfinite in ("raise", "skip", "zero")
        self._watched.sync(armed=not self._closed and (self._step % self.every == 0 or every_step),
                           every_step=every_step, keep=self._amp.skips is not None,
                           closed=self._closed)


def _release(handles: list[Any], watched: WatchedSet) -> None:
    remove_all(handles)
    watched.close()
