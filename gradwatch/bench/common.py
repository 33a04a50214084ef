"""What every experiment shares: budgets, the run context, claims, labelled runs, verdict summaries."""

from __future__ import annotations

import math
import os
import statistics
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

import torch

from .data import Mnist, load_mnist
from ..records import Status, StepRecord

__all__ = ["Budget", "BUDGETS", "Context", "Claim", "LabelledRun", "ExperimentResult",
           "RecordSummary", "summarize_records", "mean_spread", "fmt"]

Label = Literal["pathological", "healthy"]


@dataclass(frozen=True)
class Budget:
    """How much compute each experiment gets (every field is per run, per seed)."""

    name: str
    mnist_train: int | None  # training images used (None: all 60,000)
    mnist_test: int | None  # test images used for accuracy (None: all 10,000)
    sigmoid_epochs: int  # deep sigmoid MLP
    fixed_epochs: int  # ReLU+He, +BN MLPs
    resnet_train: int | None  # training images for the (slow) ResNet, per epoch
    linear_epochs: int  # deep linear MLP, each clipping variant
    grid_steps: int  # optimizer steps per mitigation-grid cell
    grid_depth: int  # hidden layers of the mitigation-grid MLP
    xor_epochs: int  # maximum XOR epochs (4 updates each)
    xor_depths: tuple[int, ...]  # hidden-layer counts of the XOR sweep
    seeds: int  # default number of seeds for random experiments
    mnist_seeds: int  # seeds for the MNIST experiments (they dominate the wall time)
    every: int = 1  # gradwatch records every `every`-th step in MNIST runs

    def with_seeds(self, seeds: int | None) -> Budget:
        """The same budget with ``seeds`` seeds everywhere (unchanged when None)."""
        if seeds is None:
            return self
        if seeds < 1:
            raise ValueError(f"Expected `seeds` to be a positive int, but got {seeds!r}.")
        return replace(self, seeds=seeds, mnist_seeds=seeds)


BUDGETS: dict[str, Budget] = {
    "quick": Budget("quick", mnist_train=2_000, mnist_test=1_000, sigmoid_epochs=1,
                    fixed_epochs=1, resnet_train=320, linear_epochs=1, grid_steps=30,
                    grid_depth=10, xor_epochs=200, xor_depths=(1, 5, 10), seeds=2,
                    mnist_seeds=1),
    "default": Budget("default", mnist_train=10_000, mnist_test=2_000, sigmoid_epochs=3,
                      fixed_epochs=2, resnet_train=2_000, linear_epochs=6, grid_steps=150,
                      grid_depth=10, xor_epochs=15_000, xor_depths=(1, 2, 3, 5, 10), seeds=4,
                      mnist_seeds=1),
    "full": Budget("full", mnist_train=None, mnist_test=None, sigmoid_epochs=10, fixed_epochs=10,
                   resnet_train=None, linear_epochs=10, grid_steps=1_875, grid_depth=10,
                   xor_epochs=100_000, xor_depths=tuple(range(1, 11)), seeds=5, mnist_seeds=3),
}


@dataclass
class Context:
    """Where and how an experiment runs; loads MNIST once, on first use."""

    budget: Budget
    out: Path
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    data_dir: str | os.PathLike[str] | None = None
    progress: bool = True
    cache_dir: str | os.PathLike[str] | None = None  # writable mirror of a read-only data root
    _mnist: Mnist | None = field(default=None, repr=False)

    def mnist(self) -> Mnist:
        """The MNIST subset of the budget, on the run's device."""
        if self._mnist is None:
            data = load_mnist(self.data_dir, train_limit=self.budget.mnist_train,
                              test_limit=self.budget.mnist_test, cache_dir=self.cache_dir)
            self._mnist = data.to(self.device)
        return self._mnist

    def figure(self, name: str) -> Path:
        """The path of a figure file in the report folder (created on demand)."""
        path = self.out / "figures" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


@dataclass(frozen=True)
class Claim:
    """One row of the headline table: a documented claim against what we measured."""

    claim: str
    source: str  # the figure the source reports
    measured: str  # what we measured (mean ± spread over seeds where random)
    reproduced: bool | None  # None: not decidable within this budget
    verdict: str  # what gradwatch flagged, where and when


@dataclass(frozen=True)
class LabelledRun:
    """A run labelled pathological or healthy from the literature, before looking at verdicts."""

    name: str
    label: Label
    flagged: bool  # gradwatch flagged at least one layer at some recorded step
    detail: str = ""


@dataclass
class ExperimentResult:
    """What one experiment hands the report writer."""

    name: str
    title: str
    claims: list[Claim] = field(default_factory=list)
    runs: list[LabelledRun] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["claims"] = [asdict(c) for c in self.claims]
        d["runs"] = [asdict(r) for r in self.runs]
        return d


@dataclass(frozen=True)
class RecordSummary:
    """The gradwatch verdict of a run, condensed from its records."""

    steps: int  # recorded steps
    flagged_steps: int  # recorded steps with at least one flagged layer
    first_flag_step: int | None  # optimizer step of the first flag
    layers: dict[str, dict[str, int]]  # status -> layer -> recorded steps with that status
    spikes: int  # recorded steps with a total-norm spike

    @property
    def flagged(self) -> bool:
        return self.flagged_steps > 0

    def text(self, max_layers: int = 4) -> str:
        """A short human verdict: statuses, the most-flagged layers, the first step."""
        if not self.flagged:
            return f"none flagged ({self.steps} steps)"
        parts = []
        for status, counts in self.layers.items():
            names = sorted(counts, key=lambda n: -counts[n])
            shown = ", ".join(names[:max_layers]) + (f" +{len(names) - max_layers}"
                                                     if len(names) > max_layers else "")
            parts.append(f"{status}: {shown}")
        return (f"{'; '.join(parts)} (first at step {self.first_flag_step}, "
                f"{self.flagged_steps}/{self.steps} steps)")


def summarize_records(records: Iterable[StepRecord]) -> RecordSummary:
    """Condenses gradwatch records into a `RecordSummary`."""
    steps = flagged_steps = spikes = 0
    first: int | None = None
    layers: dict[str, dict[str, int]] = {}
    for rec in records:
        steps += 1
        spikes += bool(rec.spike)
        if rec.flagged:
            flagged_steps += 1
            first = rec.step if first is None else first
        for name, stat in rec.layers.items():
            if stat.status is not Status.OK:
                per = layers.setdefault(stat.status.value, {})
                per[name] = per.get(name, 0) + 1
    return RecordSummary(steps, flagged_steps, first, layers, spikes)


def mean_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value; NaN for none)."""
    vals = [float(v) for v in values]
    if not vals:
        return math.nan, math.nan
    if len(vals) == 1:
        return vals[0], 0.0
    return statistics.fmean(vals), statistics.stdev(vals)


def fmt(values: Sequence[float], spec: str = ".3g", unit: str = "") -> str:
    """``mean ± std (n=k)`` for several values, the value alone for one."""
    m, s = mean_spread(values)
    if len(values) <= 1:
        return f"{m:{spec}}{unit}"
    return f"{m:{spec}}{unit} ± {s:{spec}}{unit} (n={len(values)})"
