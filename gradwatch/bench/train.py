"""A plain MNIST training loop watched by `GradWatch`, and Keras-style per-tensor clipping."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..clip import ClipPolicy
from .data import iterate_batches
from ..monitor import GradWatch
from ..records import StepRecord
from .common import Context, RecordSummary, summarize_records

__all__ = ["PerTensorNorm", "TrainRun", "train_mnist", "evaluate"]


class PerTensorNorm(ClipPolicy):
    """Clips each gradient tensor by its own norm, as Keras' ``clipnorm`` does."""

    def __init__(self, max_norm: float) -> None:
        if not 0 < max_norm < math.inf:
            raise ValueError(f"Expected `max_norm` to be a finite number > 0, but got {max_norm!r}.")
        self.max_norm = float(max_norm)

    def clip_(self, grads, total_norm, *, params, is_output):
        for g in grads:
            norm = torch.linalg.vector_norm(g, dtype=torch.float64)
            g.mul_(torch.clamp(self.max_norm / (norm + 1e-6), max=1.0).to(g.dtype))
        return None

    def __repr__(self) -> str:
        return f"PerTensorNorm(max_norm={self.max_norm})"


@dataclass
class TrainRun:
    """What one MNIST training run produced."""

    name: str
    steps: int = 0
    log_steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # mean training loss per log interval
    accs: list[float] = field(default_factory=list)  # training accuracy per log interval
    epoch_acc: list[float] = field(default_factory=list)  # training accuracy per epoch
    epoch_loss: list[float] = field(default_factory=list)
    test_acc: float = math.nan
    diverged_step: int | None = None  # first step with a non-finite loss
    records: list[StepRecord] = field(default_factory=list, repr=False)
    summary: RecordSummary | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        s = self.summary
        return {"name": self.name, "steps": self.steps, "log_steps": self.log_steps,
                "losses": self.losses, "accs": self.accs, "epoch_acc": self.epoch_acc,
                "epoch_loss": self.epoch_loss, "test_acc": self.test_acc,
                "diverged_step": self.diverged_step,
                "verdict": None if s is None else {"text": s.text(), "flagged": s.flagged,
                                                   "first_flag_step": s.first_flag_step,
                                                   "flagged_steps": s.flagged_steps,
                                                   "recorded_steps": s.steps,
                                                   "layers": s.layers, "spikes": s.spikes},
                "total_norm": [r.total_norm for r in self.records],
                "record_steps": [r.step for r in self.records]}


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    """Accuracy of ``model`` (in eval mode) on ``x``, ``y``."""
    was = model.training
    model.eval()
    correct = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
                  for i in range(0, len(y), batch))
    model.train(was)
    return correct / max(1, len(y))


def train_mnist(name: str, make_model: Callable[[], nn.Module], ctx: Context, *, epochs: int,
                seed: int, train_limit: int | None = None, clip: Any = None, lr: float = 1e-3,
                batch_size: int = 32, log_every: int = 25) -> TrainRun:
    """Adam + cross-entropy on the context's MNIST; gradwatch measures after each backward.

    Stops early at the first non-finite loss (the run diverged).
    """
    torch.manual_seed(seed)
    model = make_model().to(ctx.device)
    data = ctx.mnist()
    x, y = data.train_x[:train_limit], data.train_y[:train_limit]
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    run = TrainRun(name)
    steps_per_epoch = math.ceil(len(y) / batch_size)
    bar = tqdm(total=epochs * steps_per_epoch, desc=name, disable=not ctx.progress, leave=False,
               mininterval=1.0)
    start = time.perf_counter()
    with GradWatch(model, clip=clip, every=ctx.budget.every, history=1_000_000) as watch:
        for _ in range(epochs):
            ep_loss = ep_correct = ep_n = 0.0
            win_loss, win_correct, win_n = torch.zeros(()), torch.zeros(()), 0
            for xb, yb in iterate_batches(x, y, batch_size, generator=gen):
                out = model(xb)
                loss = F.cross_entropy(out, yb)
                opt.zero_grad()
                loss.backward()
                watch.step()
                opt.step()
                run.steps += 1
                bar.update()
                win_loss += loss.detach() * len(yb)
                win_correct += (out.argmax(1) == yb).sum()
                win_n += len(yb)
                if run.steps % log_every == 0:
                    l, c = win_loss.item(), win_correct.item()
                    run.log_steps.append(run.steps)
                    run.losses.append(l / win_n)
                    run.accs.append(c / win_n)
                    ep_loss, ep_correct, ep_n = ep_loss + l, ep_correct + c, ep_n + win_n
                    win_loss, win_correct, win_n = torch.zeros(()), torch.zeros(()), 0
                    if not math.isfinite(l):
                        run.diverged_step = run.steps
                        break
            if win_n:
                ep_loss, ep_correct = ep_loss + win_loss.item(), ep_correct + win_correct.item()
                ep_n += win_n
            run.epoch_loss.append(ep_loss / max(1, ep_n))
            run.epoch_acc.append(ep_correct / max(1, ep_n))
            if run.diverged_step is not None or not math.isfinite(run.epoch_loss[-1]):
                run.diverged_step = run.diverged_step or run.steps
                break
        run.records = list(watch.history)
    bar.close()
    run.test_acc = evaluate(model, data.test_x, data.test_y)
    run.summary = summarize_records(run.records)
    run.seconds = time.perf_counter() - start
    return run
