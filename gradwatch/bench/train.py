"""A plain, fast MNIST training loop watched by `GradWatch` (Keras' setup), and its outcome."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..monitor import GradWatch
from ..record.records import StepRecord
from .common import Context, RecordSummary, summarize_records
from .data import iterate_batches

__all__ = ["TrainRun", "train_mnist", "evaluate",
           "findings_of", "make_optimizer", "weight_histograms"]


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
    eval_steps: list[int] = field(default_factory=list)  # steps at which test accuracy was read
    eval_acc: list[float] = field(default_factory=list)
    test_acc: float = math.nan  # on the context's test images after the last step
    diverged_step: int | None = None  # first logged step with a non-finite loss
    records: list[StepRecord] = field(default_factory=list, repr=False)
    summary: RecordSummary | None = None
    findings: list[dict[str, Any]] = field(default_factory=list)  # watch.diagnose(), as dicts
    histograms: dict[str, Any] | None = None  # see the data contract in `common`
    images: int = 0  # training images the run drew from
    weight_norm: float = math.nan  # ‖all dense/conv weights‖ after the last step
    model: nn.Module | None = field(default=None, repr=False)  # kept with keep_model=True
    seconds: float = 0.0

    @property
    def flagged(self) -> bool:
        """A finding, or a layer with a status other than ok at some recorded step."""
        return bool(self.findings) or bool(self.summary and self.summary.flagged)

    def verdict(self, max_layers: int = 3) -> str:
        """gradwatch's verdict in words: the findings' kinds and layers, then the statuses."""
        s = self.summary.text(max_layers) if self.summary else "no records"
        if not self.findings:
            return f"no finding; {s}"
        kinds = ", ".join(f"{f['kind']} ({', '.join(f['layers'][:max_layers])})"
                          for f in self.findings)
        return f"{kinds}; {s}"

    def to_dict(self) -> dict[str, Any]:
        s = self.summary
        return {"name": self.name, "steps": self.steps, "images": self.images,
                "log_steps": self.log_steps, "losses": self.losses, "accs": self.accs,
                "epoch_acc": self.epoch_acc, "epoch_loss": self.epoch_loss,
                "eval_steps": self.eval_steps, "eval_acc": self.eval_acc,
                "test_acc": self.test_acc, "diverged_step": self.diverged_step,
                "weight_norm": self.weight_norm,
                "seconds": self.seconds, "findings": self.findings,
                "verdict": None if s is None else {"text": self.verdict(), "flagged": self.flagged,
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


def findings_of(watch: GradWatch) -> list[dict[str, Any]]:
    """``watch.diagnose()`` as JSON-ready dicts (layers and remedies as lists)."""
    out = []
    for f in watch.diagnose():
        d = f.to_dict()
        d["layers"] = list(d.get("layers", ()))
        d["remedies"] = list(d.get("remedies", ()))
        out.append(d)
    return out


def make_optimizer(params, kind: Literal["adam", "sgd"] = "adam", lr: float = 1e-3,
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Keras' Adam (ε = 1e-7; fused on CPU, 1.4× faster) or plain SGD.

    ``weight_decay`` is an L2 penalty ``(wd/2)·‖W‖²`` on the kernels (parameters with two or
    more dimensions; biases are not penalised, as Keras' ``kernel_regularizer``), added to the
    loss's gradient (coupled, not AdamW's decoupled decay).
    """
    params = list(params)
    groups = [{"params": [p for p in params if p.dim() > 1], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr)
    if kind != "adam":
        raise ValueError(f"Expected `kind` to be 'adam' or 'sgd', but got {kind!r}.")
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(groups, lr=lr, eps=1e-7, fused=fused)


def _weighted(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """``(module name, weight)`` of every dense / conv layer, in registration order."""
    return [(n, m.weight) for n, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv2d)) and m.weight is not None]


def _hist(t: torch.Tensor, bins: int) -> dict[str, list[float]]:
    t = t.detach().flatten().double().cpu()
    t = t[torch.isfinite(t)]
    lo, hi = (float(t.min()), float(t.max())) if len(t) else (0.0, 1.0)
    hi = hi if hi > lo else lo + 1e-12
    counts = torch.histc(t, bins, lo, hi)
    edges = torch.linspace(lo, hi, bins + 1)
    return {"counts": [int(c) for c in counts], "edges": [float(e) for e in edges]}


def weight_histograms(model: nn.Module, hist: dict[str, Any], epoch: int, probe, *,
                      bins: int = 30) -> None:
    """Adds epoch ``epoch``'s weight and probe-batch gradient histograms to ``hist``."""
    x, y = probe
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    for name, w in _weighted(model):
        hist["weight"].setdefault(name, {})[epoch] = _hist(w, bins)
        if w.grad is not None:
            hist["gradient"].setdefault(name, {})[epoch] = _hist(w.grad, bins)
    model.zero_grad()


def _epoch_norms(records: list[StepRecord], steps_per_epoch: int) -> dict[str, dict[int, float]]:
    """Per layer, per epoch (1-based; record steps are 0-based), the median recorded norm."""
    by: dict[str, dict[int, list[float]]] = {}
    for r in records:
        for name, s in r.layers.items():
            by.setdefault(name, {}).setdefault(1 + r.step // steps_per_epoch, []).append(s.norm)
    return {n: {e: sorted(v)[len(v) // 2] for e, v in per.items()} for n, per in by.items()}


def train_mnist(name: str, make_model: Callable[[], nn.Module], ctx: Context, *, epochs: int,
                seed: int, train_limit: int | None = None, clip: Any = None, lr: float = 1e-3,
                batch_size: int = 32, log_every: int = 25, optimizer: str = "adam",
                weight_decay: float = 0.0, every: int | None = None,
                stop_at_acc: float | None = None, eval_each_epoch: bool = False,
                histograms: bool = False, max_steps: int | None = None,
                eval_every: int | None = None, keep_model: bool = False) -> TrainRun:
    """Cross-entropy on the context's MNIST; gradwatch measures after each backward.

    Keras' setup by default: the model's own init (Glorot-uniform, zero biases in `DeepMLP`),
    Adam 1e-3 with ε = 1e-7, batch 32, reshuffled every epoch. Stops at the first non-finite
    loss, after ``max_steps``, or (with ``stop_at_acc``) at the first evaluation (each epoch's
    end, and every ``eval_every`` steps) whose test accuracy is above it.
    """
    torch.manual_seed(seed)
    model = make_model().to(ctx.device)
    data = ctx.mnist()
    x, y = data.train_x[:train_limit], data.train_y[:train_limit]
    opt = make_optimizer(model.parameters(), optimizer, lr, weight_decay)
    gen = torch.Generator().manual_seed(seed)
    run = TrainRun(name, images=len(y))
    steps_per_epoch = math.ceil(len(y) / batch_size)
    total = epochs * steps_per_epoch if max_steps is None else min(max_steps, epochs * steps_per_epoch)
    bar = tqdm(total=total, desc=name, disable=not ctx.progress, leave=False, mininterval=2.0)
    hist = {"run": name, "weight": {}, "gradient": {}} if histograms else None
    probe = (data.test_x[:256], data.test_y[:256])
    if hist is not None:
        weight_histograms(model, hist, 0, probe)
    start = time.perf_counter()
    every = ctx.budget.every if every is None else every
    stop = False

    def read_test_acc() -> bool:
        if not run.eval_steps or run.eval_steps[-1] != run.steps:
            run.eval_steps.append(run.steps)
            run.eval_acc.append(evaluate(model, data.test_x, data.test_y))
        return stop_at_acc is not None and run.eval_acc[-1] > stop_at_acc

    with GradWatch(model, clip=clip, every=every, history=1_000_000) as watch:
        for epoch in range(1, epochs + 1):
            ep = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, n
            win, win_n = torch.zeros(2, dtype=torch.float64), 0
            for xb, yb in iterate_batches(x, y, batch_size, generator=gen):
                out = model(xb)
                loss = F.cross_entropy(out, yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                watch.step(loss=loss)
                opt.step()
                run.steps += 1
                bar.update()
                win += torch.stack([loss.detach().double() * len(yb),
                                    (out.detach().argmax(1) == yb).sum().double()])
                win_n += len(yb)
                if run.steps % log_every == 0 or run.steps == total:
                    l, c = win.tolist()
                    run.log_steps.append(run.steps)
                    run.losses.append(l / win_n)
                    run.accs.append(c / win_n)
                    ep += torch.tensor([l, c, win_n], dtype=torch.float64)
                    win, win_n = torch.zeros(2, dtype=torch.float64), 0
                    if not math.isfinite(l):
                        run.diverged_step = run.steps
                        break
                if eval_every and run.steps % eval_every == 0 and run.steps < total:
                    stop = read_test_acc()
                if run.steps >= total or stop:
                    break
            if win_n:
                ep += torch.cat([win, torch.tensor([win_n], dtype=torch.float64)])
            l, c, n = ep.tolist()
            run.epoch_loss.append(l / max(1, n))
            run.epoch_acc.append(c / max(1, n))
            if hist is not None:
                weight_histograms(model, hist, epoch, probe)
            if (eval_each_epoch or stop_at_acc is not None) and not stop:
                stop = read_test_acc()
            if run.diverged_step is not None or not math.isfinite(run.epoch_loss[-1]):
                run.diverged_step = run.diverged_step or run.steps
                break
            if run.steps >= total or stop:
                break
        run.records = list(watch.history)
        run.findings = findings_of(watch)
    bar.close()
    run.test_acc = (run.eval_acc[-1] if run.eval_steps and run.eval_steps[-1] == run.steps
                    else evaluate(model, data.test_x, data.test_y))
    run.summary = summarize_records(run.records)
    with torch.no_grad():
        run.weight_norm = math.sqrt(sum(float(w.double().square().sum()) for _, w in _weighted(model)))
    if hist is not None:
        hist["grad_norm"] = _epoch_norms(run.records, steps_per_epoch)
        run.histograms = hist
    run.model = model if keep_model else None
    run.seconds = time.perf_counter() - start
    return run
