"""The source's XOR training loop over a batch of trials: epochs, stopping, curves, snapshots."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from .core import XorBatch, XorTrial

__all__ = ["PLATEAU", "PRINTS_ZERO", "Snapshot", "TrialResult", "train_trials",
           "sample_updates"]

PLATEAU = 0.49
"""A summed XOR loss at or above this is no better than a constant output (whose best is 0.5)."""
PRINTS_ZERO = 5e-7
"""Below this the source's six-decimal log prints the loss as 0.000000; a change of more than
this is a change of the printed value."""


@dataclass(frozen=True)
class Snapshot:
    """A trial's parameters and Adam state right before update ``update`` (0-based).

    ``theta``, ``m`` and ``v`` are rows in `XorBatch` layout; ``update`` updates were done
    before it (so the next Adam step is ``t = update + 1``), on pattern ``update % 4``.
    """

    update: int
    theta: np.ndarray
    m: np.ndarray
    v: np.ndarray

    @property
    def epoch(self) -> int:
        """The (1-based) epoch this update belongs to."""
        return self.update // 4 + 1


@dataclass
class TrialResult:
    """What one trial did."""

    trial: XorTrial
    converged_epoch: int | None  # first epoch whose summed loss <= tol (1-based); None: never
    epochs_run: int
    final_loss: float  # summed loss of the last epoch run
    outputs: list[float]  # on the four patterns, with the final weights
    plateau_end: int | None  # first epoch whose summed loss < PLATEAU; None: never
    first_change: int | None  # first epoch whose loss differs from epoch 1's by > PRINTS_ZERO
    prints_zero: int | None  # first epoch whose summed loss < PRINTS_ZERO; None: never
    curve: list[float]  # summed epoch loss at the batch's curve epochs (NaN once stopped)
    snapshots: list[Snapshot] = field(default_factory=list)


def sample_updates(epochs: int, *, log_points: int = 30, linear_points: int = 30) -> list[int]:
    """Update indices to snapshot: log-spaced from update 0, plus evenly spaced epoch starts."""
    last = 4 * epochs - 1
    logs = {int(round(math.expm1(k * math.log1p(last) / max(1, log_points - 1))))
            for k in range(log_points)}
    lin = {4 * (epochs * k // linear_points) for k in range(linear_points)}
    return sorted(u for u in logs | lin if 0 <= u <= last)


def train_trials(trials: Sequence[XorTrial], *, epochs: int, tol: float = 1e-7,
                 curve_epochs: Sequence[int] = (), snapshot_at: Sequence[int] = (),
                 snapshot_trials: Sequence[int] | None = None, progress: bool = False,
                 desc: str = "xor") -> list[TrialResult]:
    """Trains each trial as the source does: per epoch the four patterns in order, one Adam
    update each; a trial stops after the first epoch whose summed loss is ``<= tol``.

    Args:
        trials: The runs; they train in one `XorBatch`, each exactly as if alone.
        epochs: The most epochs any trial runs.
        tol: The source's stopping criterion on the summed epoch loss.
        curve_epochs: Epochs (1-based) at which each trial's summed loss is recorded.
        snapshot_at: Updates (0-based) before which a `Snapshot` is kept; every trial that
            stops also gets one of its final state (the update it would do next).
        snapshot_trials: Indices of the trials to snapshot (default all).
        progress: Show a progress bar.
        desc: The bar's label.

    Raises:
        ValueError: ``epochs`` is not a positive int or ``tol`` is negative.
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"Expected `epochs` to be a positive int, but got {epochs!r}.")
    if not tol >= 0:
        raise ValueError(f"Expected `tol` >= 0, but got {tol!r}.")
    batch = XorBatch(trials)
    n = len(trials)
    watched = np.zeros(n, bool)
    watched[list(range(n)) if snapshot_trials is None else list(snapshot_trials)] = True
    curve_col = {e: i for i, e in enumerate(sorted(set(curve_epochs)))}
    curves = np.full((n, len(curve_col)), np.nan)
    plateau_end = np.full(n, -1)
    first_change = np.full(n, -1)
    zero = np.full(n, -1)
    first_loss = np.full(n, np.nan)
    last_loss = np.full(n, np.nan)
    converged = np.full(n, -1)
    epochs_run = np.zeros(n, int)
    outputs = np.full((n, 4), np.nan)
    snaps: list[list[Snapshot]] = [[] for _ in range(n)]
    pending = sorted(set(snapshot_at))
    si = 0

    def snapshot(update: int, rows: np.ndarray) -> None:
        for r in rows:
            i = batch.rows[r]
            if watched[i]:
                snaps[i].append(Snapshot(update, batch.theta[r].copy(), batch.m[r].copy(),
                                         batch.v[r].copy()))

    def finish(rows: np.ndarray, epoch: int) -> None:
        snapshot(4 * epoch, rows)
        idx = batch.rows[rows]
        outputs[idx] = batch.outputs()[rows]
        epochs_run[idx] = epoch
        batch.remove(rows)

    bar = tqdm(total=epochs, desc=desc, disable=not progress, leave=False, mininterval=2.0)
    epoch = 0
    while epoch < epochs and len(batch.rows):
        batch.reset_loss()
        for p in range(4):
            while si < len(pending) and pending[si] < 4 * epoch + p:
                si += 1
            if si < len(pending) and pending[si] == 4 * epoch + p:
                snapshot(4 * epoch + p, np.arange(len(batch.rows)))
            batch.update(p)
        epoch += 1
        loss = batch.loss
        idx = batch.rows
        last_loss[idx] = loss
        if epoch == 1:
            first_loss[idx] = loss
        changed = np.abs(loss - first_loss[idx]) > PRINTS_ZERO
        for mark, hit in ((plateau_end, loss < PLATEAU), (first_change, changed),
                          (zero, loss < PRINTS_ZERO)):
            new = hit & (mark[idx] < 0)
            if new.any():
                mark[idx[new]] = epoch
        col = curve_col.get(epoch)
        if col is not None:
            curves[idx, col] = loss
        done = np.flatnonzero(loss <= tol)
        if done.size:
            converged[idx[done]] = epoch
            finish(done, epoch)
        if epoch % 1000 == 0:
            bar.update(1000)
    bar.close()
    if len(batch.rows):
        finish(np.arange(len(batch.rows)), epoch)
    return [TrialResult(t, int(converged[i]) if converged[i] > 0 else None, int(epochs_run[i]),
                        float(last_loss[i]), outputs[i].tolist(),
                        int(plateau_end[i]) if plateau_end[i] > 0 else None,
                        int(first_change[i]) if first_change[i] > 0 else None,
                        int(zero[i]) if zero[i] > 0 else None,
                        curves[i].tolist(), snaps[i])
            for i, t in enumerate(trials)]
