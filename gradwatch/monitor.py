"""`GradWatch`: the one stateful object; it sequences gradients → statistics → verdicts → clip
→ record → ledger → loggers over small parts that each do one job."""

from __future__ import annotations

import weakref
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .capture import compile as cs
from .capture.amp import AmpState
from .clip import ClipPolicy
from .capture.units import UNIT_EVERY
from .capture.hooks import Hook
from .record.ledger import Ledger, run_header
from .options import NonFiniteGradientError, OnNonFinite, check_loss, check_manual_step, \
    clip_state, deepcopy_fields, describe, load_clip_state, load_or_restore, note_other_layers, \
    note_watch, refuse_closed, refuse_closure, refuse_pickle, validate
from .record.order import CallOrder
from .record.alerts import Alerts, collected, warn_never_stepped
from .record.recorder import Recorder
from .record.history import History
from .record.records import Finding, StepRecord
from .measure.step import GradStash, measure_step
from .measure.statistics import Statistic, check_statistics
from .io.runsummary import summarize
from .io.summary import format_summary
from .verdict.thresholds import Thresholds
from .capture.watched import WatchedSet

__all__ = ["GradWatch", "NonFiniteGradientError"]

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
        clip: ``None``, a max global norm (``clip=1.0``: ``clip_grad_norm_`` of what is stepped),
            ``"auto"`` (`gradwatch.clip.ZClip`), or a `gradwatch.clip` policy. Clipping gives
            the same result on recorded and unrecorded steps.
        activations: Also measure output-gradient norms, dead/saturated units, gradients
            through time and where a forward-born NaN appears (hooks on recorded forwards).
        every: Record every ``every``-th step; a non-finite step is always recorded when it is
            measured (``on_nonfinite`` other than "warn", or clipping).
        on_nonfinite: ``"warn"``, ``"raise"`` (`NonFiniteGradientError` after the record is
            logged), ``"skip"`` (parameters and optimizer state untouched; needs
            ``optimizer``) or ``"zero"``. The last three check every step, forward included.
        scaler: A ``torch.amp.GradScaler``: norms and clips unscaled (a disabled one is ignored).
        loggers: A list of callables receiving every `StepRecord` (see `gradwatch.io.loggers`).
        history: How many records stay in `history` (loggers still see every record).
        statistics: Extra per-layer `gradwatch.measure.statistics.Statistic` declarations.
        sync_records: ``None`` (default): on accelerators a recorded step's numbers are copied
            with ``non_blocking=True`` and become its record at the next step (loggers see it
            one step late; the loop never waits); on the CPU records are immediate. ``True``:
            always immediate (one blocking copy per recorded step). ``False``: always deferred.
            AMP scalers, ``on_nonfinite`` "raise"/"skip" and AutoClip/ZClip read the host at
            once whatever this says.
    """

    def __init__(self, model: nn.Module, *positional: Any,
                 optimizer: torch.optim.Optimizer | None = None, thresholds: Thresholds | None = None,
                 clip: float | str | ClipPolicy | None = None, activations: bool = True,
                 every: int = 1, on_nonfinite: OnNonFinite = "warn", scaler: Any = None,
                 loggers: Sequence[Any] = (), history: int = 10_000,
                 statistics: Sequence[Statistic] = (), sync_records: bool | None = None) -> None:
        every, history, scaler, self.policy = validate(  # (scaler: None if disabled)
            model, positional, optimizer, thresholds, activations, every, on_nonfinite, scaler,
            loggers, history, clip, sync_records)
        self.thresholds = thresholds if thresholds is not None else Thresholds()
        self.statistics = check_statistics(statistics)
        self.every, self.on_nonfinite, self.activations = every, on_nonfinite, activations
        self.optimizer, self.scaler, self.sync_records = optimizer, scaler, sync_records
        self._watched = w = WatchedSet(cs.unwrap_compiled(model, warn=True),
                                       activations=activations, optimizer=optimizer)
        self._amp = AmpState(scaler, optimizer)
        if self._amp.skips is not None:
            w.collector.amp_poll = Hook(self._amp, "note_skip", w)
        self._ledger = Ledger(loggers, history, run_header(
            self.thresholds, w.layers, self.statistics, every=every,
            clip=repr(self.policy) if self.policy is not None else None,
            activations=activations, on_nonfinite=on_nonfinite, optimizer=type(
                optimizer).__name__ if optimizer is not None else None, amp=scaler is not None))
        self.loggers = self._ledger.loggers
        self._recorder = Recorder(w, self._ledger, self.thresholds, self.statistics)
        self._stash = GradStash()
        self._step, self._closed = 0, False  # (the step's loss, if given: `AmpState.loss`)
        self._alerts = Alerts(on_nonfinite)
        self._order = CallOrder(w.params, optimizer)  # (its hooks are removed with the others)
        self._optimizer_handles: list[Any] = self._order.handles + ([] if optimizer is None else [
            optimizer.register_step_pre_hook(Hook(self, "_before_optimizer_step")),
            optimizer.register_step_post_hook(Hook(self, "_after_optimizer_step"))])
        self._finalizer = weakref.finalize(self, collected, w.close, self._optimizer_handles,
                                           self._ledger)
        if optimizer is not None and activations:  # (tells a backward thrown away at step 0)
            w.collector.zeroing.snapshot(w.first_stepped)
        self._sync_hooks()
        note_watch(self, optimizer, w.params)

    __reduce_ex__, __deepcopy__ = refuse_pickle, deepcopy_fields  # (state_dict() is saved)

    # ------------------------------------------------------------------ public API

    @property
    def history(self) -> History:
        """The most recent records, oldest first (at most ``history`` of them): a live sequence
        kept as columns (`gradwatch.record.history.History`), whose `StepRecord` entries are
        built when read. ``list(watch.history)`` keeps a snapshot."""
        self._flush()
        return self._ledger.records

    @property
    def layer_names(self) -> tuple[str, ...]:
        """The watched layers, in forward order once a recorded forward pass has run."""
        return tuple(self._watched.layers[i].name for i in self._watched.forward.order)

    @property
    def head(self) -> str | None:
        """The output-side layer the depth-relative rules compare with (AGC's final layer)."""
        return self._watched.head_name()

    @property
    def step_count(self) -> int:
        """Optimizer steps seen so far (recorded or not)."""
        return self._step

    def step(self, loss: torch.Tensor | float | None = None) -> StepRecord | None:
        """Measures (and clips) the current gradients: call after ``backward()``, before
        ``optimizer.step()``. Returns the record, or None on a step that is not recorded.

        Args:
            loss: Optional: the loss of this step (the value ``backward()`` was called on).
                It goes into the record (`StepRecord.loss`) and lets the rules tell a net
                stalled with no gradient from a converged one (`Thresholds.stalled_loss`)
                and see a NaN loss whose gradients stayed finite. A tensor is read with
                the record's numbers (no extra host sync); unrecorded steps never read it.

        Raises:
            RuntimeError: The watch is closed, or was given ``optimizer=`` (use `note_loss`).
        """
        check_manual_step(self._closed, self.optimizer, self._order)
        if loss is not None:
            self.note_loss(loss)
        record = self._measure()
        return record if record is not None else self._flush()

    def note_loss(self, loss: torch.Tensor | float) -> None:
        """Gives the loss of the step about to be measured (``loss=`` of `step`); with
        ``optimizer=``, call it after ``backward()`` and before ``optimizer.step()``. The last
        loss noted before a step is the step's; it is dropped once the step is measured."""
        self._amp.loss = check_loss(loss, closed=self._closed)
        self._order.note_loss(self._watched.collector)  # (after optimizer.step(): warns once)

    def diagnose(self) -> list[Finding]:
        """What is wrong with this run so far, most severe first (empty when nothing is)."""
        self._settle()
        return self._recorder.judge.diagnose()

    def notes(self) -> list[Finding]:
        """True conditions that look harmless so far (`Finding.note` says why: dead units while
        the loss falls); they set no layer's status and are not among `diagnose`'s findings."""
        self._settle()
        return self._recorder.judge.diagnose(notes=True)

    def summary(self) -> str:
        """The diagnosis (and notes) and a per-layer table a person can read."""
        self._settle()
        lg, judge = self._ledger, self._recorder.judge
        return format_summary(summarize(lg.records, steps=self._step, run=lg.run, flags=lg.flags,
                                        findings=judge.diagnose(), notes=judge.diagnose(True)))

    def close(self) -> None:
        """Removes every hook gradwatch added and closes the loggers; safe to call twice."""
        if self._closed:
            return
        self._flush_amp_skips()
        self._settle()
        self._closed = True
        self._ledger.close()
        self._finalizer()
        self._stash.restore()

    def state_dict(self) -> dict[str, Any]:
        """Step counter, spike statistics, rule windows, findings, counters, clip state, which
        units fired lately, the layers' names."""
        self._flush()
        return {"step": self._step, **self._recorder.state_dict(),
                **clip_state(self.policy),  # (its statistics and its class)
                "units": self._watched.collector.unit_window.state_dict(),
                "layers": self._watched.names}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores what `state_dict` saved, so a resumed run behaves as if never interrupted
        (a state that does not load is refused, naming its key, and leaves the watch as it was)."""
        load_or_restore(self, state, self._load)

    def _load(self, state: Mapping[str, Any], resumed: bool = True) -> None:
        note_other_layers(state.get("layers"), self._watched.names)
        self._step = int(state["step"])
        self._recorder.load_state_dict(state)
        load_clip_state(self.policy, state)
        self._watched.collector.unit_window.load_state_dict(state.get("units", []))
        if resumed:  # (last: a state that fails to load marks nothing)
            self._ledger.mark_resumed(self._step)
        self._sync_hooks()

    def __enter__(self) -> GradWatch:
        refuse_closed(self._closed, "`with watch:` was entered")
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        self._order.saw_step |= kind is not None  # (an error's exit: no "never stepped" guess)
        self.close()

    __repr__ = describe

    # ------------------------------------------------------------------ the step

    @torch.compiler.disable  # (a compiled optimizer step runs the hooks eagerly, untraced)
    def _before_optimizer_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._closed:
            return
        refuse_closure(optimizer, args, kwargs)
        self._measure()  # the step measured is now self._step - 1
        k = (self._step - 1) // self.every  # (recorded steps: the first 4, then every 4th)
        self._recorder.before_optimizer_step(measure_updates=k < UNIT_EVERY or k % UNIT_EVERY == 0)

    @torch.compiler.disable
    def _after_optimizer_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._stash.restore()
        if self.activations and self._step % self.every == 0 and not self._closed:
            self._watched.collector.zeroing.snapshot(self._watched.first_stepped)
        if self._recorder.after_optimizer_step():
            self._flush()

    def _measure(self) -> StepRecord | None:
        self._flush()
        self._flush_amp_skips(measuring=True)
        loss, self._amp.loss = self._amp.loss, None
        recording = self._step % self.every == 0
        if not recording and self.policy is None and self.on_nonfinite == "warn":
            return self._advance()
        w = self._watched
        if w.refresh():
            self._recorder.watched_changed()
            self._sync_hooks()
        out = measure_step(w, self._amp, self.policy, self.statistics, stash=self._stash,
                           on_nonfinite=self.on_nonfinite, optimizer=self.optimizer,
                           recording=recording, defer=self.sync_records is False or (
                               self.sync_records is None and w.params[0].device.type != "cpu"),
                           loss=loss)
        if out is None:
            self._advance()
            return None
        w.check_activation_grads(None if out.gradless else out.data)
        now = self._recorder.hold(self._step, out)
        self._advance()
        return self._flush() if now else None

    def _flush(self) -> StepRecord | None:
        record = self._recorder.flush()
        if record is not None:  # (a NaN loss, a non-finite step: warned, or raised)
            self._alerts.record(record, self._recorder.already)
        return record

    def _settle(self) -> None:
        """Forms the held record, for a reader; says if `optimizer=` never stepped."""
        self._flush()
        warn_never_stepped(self.optimizer, self._step or self._order.saw_step,
                           self._watched.params, self._order.backward_seen)

    # ------------------------------------------------------------------ helpers

    def _flush_amp_skips(self, measuring: bool = False) -> None:
        for _ in range(0 if self._closed else self._amp.drain_skips(measuring)):
            if self._step % self.every == 0:
                self._recorder.hold_overflow(self._step, self._amp.skipped_loss())
                self._flush()
            self._advance()

    def _advance(self) -> None:
        """Counts a step and arms (or disarms) the hooks for the next one."""
        self._step += 1
        self._sync_hooks()

    def _sync_hooks(self) -> None:
        every_step = self.on_nonfinite != "warn"
        self._order.arm(not self._closed and self._step % self.every == 0)
        self._watched.sync(armed=not self._closed and (self._step % self.every == 0 or every_step),
                           every_step=every_step, keep=self._amp.skips is not None,
                           closed=self._closed, units=self._step // self.every % UNIT_EVERY == 0,
                           measure=self._step // self.every // UNIT_EVERY)
