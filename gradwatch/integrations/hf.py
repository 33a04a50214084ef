"""`GradWatchCallback`: gradwatch inside the Hugging Face ``transformers.Trainer``.

The Trainer calls ``on_pre_optimizer_step`` once per optimizer step, after gradient accumulation
and AMP unscaling but *after* its own clipping (``TrainingArguments.max_grad_norm``, 1.0 by
default). To record pre-clip norms, set ``max_grad_norm=0`` and let gradwatch clip
(``GradWatchCallback(clip=1.0)`` is the same global-norm clip); otherwise the recorded norms are
the already clipped ones, and the callback warns once. The Trainer's optimizer is handed to
`GradWatch` (through a `StepGate` opened at that event), so update/weight ratios and the
``divergence`` finding work as in a plain loop. The watch's state is saved with each checkpoint
(``gradwatch_state.pt`` in its folder) and loaded back when the Trainer resumes from one in
``output_dir``, so a resumed run's counters, rule windows and findings go on.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Sequence

import torch

try:
    from transformers import TrainerCallback
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
except ImportError as err:
    raise ImportError("gradwatch.integrations.hf needs transformers; install it with "
                      "pip install transformers accelerate (or pip install -e '.[hf]' in a "
                      "gradwatch checkout).") from err

from ..io.loggers import Logger
from ..monitor import GradWatch
from ..verdict.thresholds import Thresholds
from ._gate import StepGate, unwrap_optimizer
from ._owner import WatchOwner

__all__ = ["GradWatchCallback", "STATE_FILE"]

STATE_FILE = "gradwatch_state.pt"
"""The watch's `GradWatch.state_dict` in each checkpoint folder the Trainer writes."""


class GradWatchCallback(WatchOwner, TrainerCallback):
    """Records per-layer gradient norms and verdicts at every optimizer step of a `Trainer`.

    Args:
        thresholds: Verdict thresholds (default `Thresholds()`).
        clip: A gradwatch clip policy (see `GradWatch`); needs ``max_grad_norm=0`` in the
            `TrainingArguments` (otherwise the gradients would be clipped twice).
        activations: Also measure the gradient w.r.t. each layer's output.
        every: Record every ``every``-th optimizer step.
        on_nonfinite: ``"warn"``, ``"raise"`` or ``"zero"`` (see `GradWatch`).
        loggers: gradwatch loggers (``JsonlLogger``, ``TensorBoardLogger``, ...) that receive
            every record.

    Attributes:
        watch: The `GradWatch` of the running training (``None`` outside ``train``).
        history: Records of the last training run, kept after it ends.
    """

    def __init__(self, *, thresholds: Thresholds | None = None, clip: Any = None,
                 activations: bool = True, every: int = 1, on_nonfinite: str = "warn",
                 loggers: Sequence[Logger] = ()) -> None:
        super().__init__("the HF Trainer", thresholds=thresholds, clip=clip,
                         activations=activations, every=every, on_nonfinite=on_nonfinite,
                         loggers=loggers)
        self.gate: StepGate | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None,
                       optimizer: Any = None, **kwargs: Any) -> None:
        if model is None:
            raise ValueError("GradWatchCallback expected the Trainer to pass `model` to "
                             "on_train_begin, but it did not.")
        if args.max_grad_norm and args.max_grad_norm > 0:
            if self.options["clip"] is not None:
                raise ValueError(f"GradWatchCallback(clip=...) and TrainingArguments("
                                 f"max_grad_norm={args.max_grad_norm}) would clip the gradients "
                                 f"twice; set max_grad_norm=0 to let gradwatch clip.")
            warnings.warn(f"The Trainer clips (max_grad_norm={args.max_grad_norm}) before "
                          f"on_pre_optimizer_step, so gradwatch records post-clip norms; set "
                          f"max_grad_norm=0 and GradWatchCallback(clip={args.max_grad_norm}) to "
                          f"record pre-clip norms with the same clipping (the same when the "
                          f"optimizer steps every trainable parameter: the Trainer clips "
                          f"model.parameters(), gradwatch what the optimizer steps).", UserWarning,
                          stacklevel=2)
        self._close()  # a previous train() that raised left its watch open
        inner = unwrap_optimizer(optimizer)
        if inner is None:
            warnings.warn(f"The Trainer passed no torch optimizer to on_train_begin (got "
                          f"{type(optimizer).__name__}), so gradwatch measures no update/weight "
                          f"ratio and cannot find `divergence`.", UserWarning, stacklevel=2)
        self.gate = StepGate(inner) if inner is not None else None
        self.watch = GradWatch(model, optimizer=self.gate, **self.options)
        self._resume_checked = False  # (the Trainer loads a resumed step count after this)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """At the first step: a run resumed at step k loads the state saved with checkpoint-k."""
        if self.watch is None or getattr(self, "_resume_checked", True):
            return
        self._resume_checked = True
        if not state.global_step or self.watch.step_count:
            return
        path = os.path.join(_checkpoint(args, state), STATE_FILE)
        if os.path.isfile(path):
            self.watch.load_state_dict(torch.load(path, weights_only=True))
        else:
            warnings.warn(f"The Trainer resumed at step {state.global_step}, but {path} holds no "
                          f"gradwatch state (GradWatchCallback saves one with each checkpoint "
                          f"in output_dir): the watch starts afresh, its steps counted from 0.",
                          UserWarning, stacklevel=2)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Saves the watch's state into the checkpoint folder the Trainer just wrote."""
        folder = _checkpoint(args, state)
        if self.watch is not None and getattr(args, "should_save", True) \
                and os.path.isdir(folder):
            torch.save(self.watch.state_dict(), os.path.join(folder, STATE_FILE))

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.watch is None:
            return
        if self.gate is not None:
            self.gate.open()  # measures (and clips) now; the update ratio spans the real step
        else:
            self.watch.step()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._close()


def _checkpoint(args: Any, state: Any) -> str:
    """The folder the Trainer writes the checkpoint of ``state.global_step`` to."""
    return os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
