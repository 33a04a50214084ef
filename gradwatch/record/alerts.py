"""The warnings (and the error) a record or the end of a run can raise for the user: a NaN
loss, a non-finite step, an optimizer whose step the watch never saw."""

from __future__ import annotations

import math
import warnings
import weakref
from typing import Any, Sequence

from ..capture.hooks import user_stacklevel
from ..verdict.diagnosis import nonfinite_message

__all__ = ["NonFiniteGradientError", "Alerts", "warn_never_stepped", "collected"]


class NonFiniteGradientError(FloatingPointError):
    """Raised by ``on_nonfinite="raise"`` when a watched gradient holds NaN or Inf."""


def collected(close: Any, handles: list[Any], ledger: Any) -> None:
    """A watch's finalizer: removes its hooks (``close(handles)``) and, when it was garbage
    collected before its first record without being closed, says so: ``GradWatch(...)`` as a
    bare statement is collected at once, and clipping and logging never happen."""
    if not ledger.closed and not ledger.run["recorded"]:
        warnings.warn("a GradWatch was garbage-collected before it recorded a step, so it "
                      "measured, clipped and logged nothing: keep a reference to it "
                      "(watch = GradWatch(...)) or use it as `with GradWatch(...) as watch:`.",
                      UserWarning, stacklevel=user_stacklevel((weakref.__file__,)))
    close(handles)


def warn_never_stepped(optimizer: Any, steps: int, params: Sequence[Any],
                       backward_seen: bool = False) -> None:
    """Warns when a watch given ``optimizer=`` has seen no ``optimizer.step()`` although
    backward passes ran (``backward_seen``) or the watched parameters hold gradients: it
    measured nothing (a wrapper stepped through other methods, as SAM's
    first_step()/second_step(), runs no step hooks, and may have reset the gradients since)."""
    if optimizer is None or steps or not (backward_seen or any(
            p.grad is not None for p in params)):
        return
    name = type(optimizer).__name__
    warnings.warn(f"GradWatch(optimizer={name}) has seen no {name}.step() although backward "
                  f"passes computed gradients, so it measured nothing. An optimizer stepped "
                  f"through other methods (SAM's first_step()/second_step()) runs no step hooks: "
                  f"pass the optimizer whose step() runs each iteration (optimizer="
                  f"sam.base_optimizer), or construct GradWatch without `optimizer=` and call "
                  f"watch.step() after backward().", UserWarning, stacklevel=user_stacklevel())


class Alerts:
    """The warnings of the records as they form: a NaN loss with finite gradients, and each
    non-finite step (raised under ``on_nonfinite="raise"``) up to `SHOWN` in a row, then one
    line saying the rest of that run of non-finite steps is not warned about step by step (a
    run whose weights went NaN stays NaN: one warning per step buried the first, which says
    where it was born). A finite step ends the run of them."""

    SHOWN = 3

    def __init__(self, on_nonfinite: str) -> None:
        self.on_nonfinite, self.in_a_row = on_nonfinite, 0

    def record(self, record: Any, already: str | None) -> None:
        if not record.nonfinite and record.loss is not None and not math.isfinite(record.loss):
            warnings.warn(f"non-finite loss at step {record.step} ({record.loss}) while every "
                          f"gradient is finite (total norm {record.total_norm:.3g}): e.g. a "
                          f"mean over a batch whose labels are all ignored",
                          RuntimeWarning, stacklevel=user_stacklevel())
        if not record.nonfinite:
            self.in_a_row = 0
            return
        message = nonfinite_message(record, already)
        if self.on_nonfinite == "raise":
            raise NonFiniteGradientError(message + "; pass on_nonfinite='skip' to skip.")
        self.in_a_row += 1
        if self.in_a_row <= self.SHOWN:
            warnings.warn(message, RuntimeWarning, stacklevel=user_stacklevel())
        elif self.in_a_row == self.SHOWN + 1:
            warnings.warn(message + "; the steps after it that stay non-finite are not warned "
                          "about one by one (watch.diagnose() and the records have them)",
                          RuntimeWarning, stacklevel=user_stacklevel())
