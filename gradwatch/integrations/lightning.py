"""`GradWatchCallback`: gradwatch inside PyTorch Lightning, measured where gradients are final.

Lightning calls ``on_before_optimizer_step`` after the last accumulated micro-batch and after AMP
unscaling, and clips (``Trainer(gradient_clip_val=...)``) only after it: the point at which
Lightning's own ``grad_norm`` measures. The trainer's optimizer is handed to `GradWatch` (through a
`StepGate` opened at that event), so update/weight ratios and the ``divergence`` finding work as in
a plain loop. Works with ``lightning`` and ``pytorch_lightning``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

try:
    import lightning.pytorch as pl
except ImportError:  # the standalone package
    try:
        import pytorch_lightning as pl
    except ImportError as err:
        raise ImportError("gradwatch.integrations.lightning needs PyTorch Lightning; install it "
                          "with pip install lightning (or pip install -e '.[lightning]' in a "
                          "gradwatch checkout).") from err

from ..io.loggers import Logger
from ..monitor import GradWatch
from ..verdict.thresholds import Thresholds
from ._gate import StepGate, unwrap_optimizer
from ._owner import WatchOwner

__all__ = ["GradWatchCallback"]


class GradWatchCallback(WatchOwner, pl.Callback):
    """Measures per-layer gradient norms at every optimizer step and logs them via Lightning.

    Logged with ``pl_module.log_dict`` (so every logger of the trainer receives them, at
    ``trainer.global_step``): ``{prefix}/total_norm``, ``{prefix}/clip_coef``,
    ``{prefix}/flagged_layers`` and, with ``log_layers=True``, ``{prefix}/norm/{layer}``.

    Args:
        thresholds: Verdict thresholds (default `Thresholds()`).
        clip: A gradwatch clip policy (see `GradWatch`); must stay ``None`` when the trainer
            has ``gradient_clip_val`` (the gradients would be clipped twice). Without ``clip``
            the recorded norms are the pre-clip norms Lightning then clips.
        activations: Also measure the gradient w.r.t. each layer's output.
        every: Record every ``every``-th optimizer step.
        on_nonfinite: ``"warn"``, ``"raise"`` or ``"zero"`` (see `GradWatch`).
        loggers: gradwatch loggers (e.g. ``JsonlLogger``) that also receive every record.
        log_layers: Also log one scalar per layer through Lightning.
        prefix: Metric-name prefix.

    Attributes:
        watch: The `GradWatch` of the running fit (``None`` outside ``fit``).
        history: Records of the last fit, kept after it ends.
    """

    def __init__(self, *, thresholds: Thresholds | None = None, clip: Any = None,
                 activations: bool = True, every: int = 1, on_nonfinite: str = "warn",
                 loggers: Sequence[Logger] = (), log_layers: bool = True,
                 prefix: str = "gradwatch") -> None:
        super().__init__("Lightning", thresholds=thresholds, clip=clip, activations=activations,
                         every=every, on_nonfinite=on_nonfinite, loggers=loggers)
        self.log_layers, self.prefix = log_layers, prefix
        self._pending_state: Mapping[str, Any] | None = None
        self.gate: StepGate | None = None
        self._logged = -1  # the step of the last record logged through Lightning

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.options["clip"] is not None and trainer.gradient_clip_val:
            raise ValueError(f"GradWatchCallback(clip=...) and Trainer(gradient_clip_val="
                             f"{trainer.gradient_clip_val}) would clip the gradients twice; "
                             f"keep one of them.")
        scaler = getattr(trainer.precision_plugin, "scaler", None)  # "16-mixed": already unscaled
        self.gate = self._gate(trainer, scaler)
        self.watch = GradWatch(pl_module, optimizer=self.gate, scaler=scaler, **self.options)
        self._logged = -1
        if self._pending_state is not None:
            self.watch.load_state_dict(self._pending_state)
            self._pending_state = None

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           loss: Any) -> None:
        """Notes the step's loss for the record and the rules (`GradWatch.note_loss`);
        Lightning passes it scaled under "16-mixed", so it is unscaled here (on the device)."""
        if self.watch is None or not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            return
        scale = getattr(self.watch.scaler, "_scale", None)
        self.watch.note_loss(loss.detach() / scale.reshape(()) if isinstance(
            scale, torch.Tensor) and self.watch.scaler.is_enabled() else loss)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: Any) -> None:
        if self.watch is None:
            return
        if self.gate is not None:
            self.gate.open()  # measures (and clips) now; the update ratio spans the real step
        else:  # several optimizers, or a GradScaler: the total, clipping and rules read what
            self.watch._watched.follow(unwrap_optimizer(optimizer))  # this one steps
            self.watch.step()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        """Logs the newest record once it is formed (after the optimizer step, so it carries
        the update ratios), once per record whatever the accumulation."""
        if self.watch is None or not self.watch.history:
            return
        record = self.watch.history[-1]
        if record.step <= self._logged:
            return
        self._logged = record.step
        metrics = self.metrics(record, self.prefix, self.log_layers)
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1)

    @staticmethod
    def _gate(trainer: pl.Trainer, scaler: Any) -> StepGate | None:
        """The gate over the trainer's one optimizer; None (no update ratios) with several
        optimizers or under a GradScaler, whose per-optimizer state is keyed by the real one."""
        optimizers = [unwrap_optimizer(o) for o in trainer.optimizers]
        if len(optimizers) != 1 or optimizers[0] is None or scaler is not None:
            return None
        return StepGate(optimizers[0])

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        self._close()

    def state_dict(self) -> dict[str, Any]:
        """The watch's running statistics, saved in Lightning checkpoints."""
        return self.watch.state_dict() if self.watch is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores the running statistics when the fit resumes from a checkpoint."""
        if state_dict:
            if self.watch is not None:
                self.watch.load_state_dict(state_dict)
            else:
                self._pending_state = state_dict
