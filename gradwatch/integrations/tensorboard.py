"""`TensorBoardLogger`: a gradwatch logger that writes each `StepRecord` as TensorBoard scalars."""

from __future__ import annotations

import os
from typing import Any

from ..record.records import StepRecord

__all__ = ["TensorBoardLogger"]


class TensorBoardLogger:
    """Writes scalars for every record to a ``torch.utils.tensorboard.SummaryWriter``.

    Tags, all at ``global_step=record.step``: ``{prefix}/total_norm``, ``{prefix}/clip_coef``,
    ``{prefix}/flagged_layers`` (layers whose status is not ok), ``{prefix}/findings`` (new
    diagnosis findings) and ``{prefix}/{statistic}/{layer}`` for every declared statistic
    measured (``norm``, ``act_norm``, ``update_ratio``, ...). Non-finite norms are written as they are
    (TensorBoard shows NaN/Inf points).

    Args:
        writer_or_logdir: A ``SummaryWriter`` (left open on `close`, only flushed) or a log
            directory for a writer this logger owns and closes.
        prefix: Tag prefix (a non-empty string).
        layers: Also write the per-layer norms (one chart per layer): True or False.

    Raises:
        ValueError: ``prefix`` is not a non-empty string, or the log directory is empty.
        TypeError: ``layers`` is not a bool, or ``writer_or_logdir`` is neither a writer nor a
            directory.
        ImportError: TensorBoard is not installed (``pip install tensorboard``, or
            ``pip install -e '.[tensorboard]'`` in a gradwatch checkout).
    """

    def __init__(self, writer_or_logdir: Any, *, prefix: str = "gradwatch",
                 layers: bool = True) -> None:
        if not isinstance(prefix, str) or not prefix:  # (checked before a writer is made)
            raise ValueError(f"Expected `prefix` to be a non-empty string, but got {prefix!r}; "
                             f"e.g. prefix='gradwatch'.")
        if not isinstance(layers, bool):
            raise TypeError(f"Expected `layers` to be True or False, but got {layers!r}.")
        if isinstance(writer_or_logdir, (str, os.PathLike)):
            if not os.fspath(writer_or_logdir):  # (SummaryWriter would pick runs/<date>_<host>)
                raise ValueError("Expected `writer_or_logdir` to be a SummaryWriter or a log "
                                 "directory, but got an empty path; e.g. "
                                 "TensorBoardLogger('runs/exp1').")
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise ImportError(f"TensorBoardLogger needs TensorBoard ({err}); install it with "
                                  f"pip install tensorboard (or pip install -e "
                                  f"'.[tensorboard]' in a gradwatch checkout).") from err
            self.writer, self._owned = SummaryWriter(log_dir=os.fspath(writer_or_logdir)), True
        elif callable(getattr(writer_or_logdir, "add_scalar", None)):
            self.writer, self._owned = writer_or_logdir, False
        else:
            raise TypeError(f"Expected `writer_or_logdir` to be a SummaryWriter or a directory, "
                            f"but got {type(writer_or_logdir).__name__}.")
        self.prefix, self.layers = prefix, layers

    def __call__(self, record: StepRecord) -> None:
        add, step, p = self.writer.add_scalar, record.step, self.prefix
        add(f"{p}/total_norm", record.total_norm, step)
        add(f"{p}/clip_coef", record.clip_coef, step)
        add(f"{p}/flagged_layers", len(record.flagged), step)
        add(f"{p}/findings", sum(not f.note for f in record.findings), step)
        if self.layers:
            for name, stat in record.layers.items():
                for key, value in stat.numbers().items():  # every declared statistic
                    if value is not None:
                        add(f"{p}/{key}/{name}", value, step)

    def flush(self) -> None:
        """Writes pending events to disk."""
        self.writer.flush()

    def close(self) -> None:
        """Closes an owned writer (flushes a borrowed one); safe to call twice."""
        if self._owned:
            self.writer.close()
        else:
            self.writer.flush()

    def __repr__(self) -> str:
        return f"TensorBoardLogger({self.writer.log_dir!r}, prefix={self.prefix!r})" \
            if hasattr(self.writer, "log_dir") else f"TensorBoardLogger(prefix={self.prefix!r})"
