"""What every experiment shares: budgets, the run context, claims with spread, labelled runs.

Data contract for the report (fields are only ever added; old ones keep their meaning):

- `Claim`: ``claim``, ``source``, ``measured``, ``reproduced`` (True / False / None = "undecided
  (budget)") and ``verdict`` as before; added: ``seeds`` (runs behind the row), ``behaved``
  (runs that behaved as claimed), ``spread`` ("median x (range a–b, n=k)"), ``quantitative``
  (the source's number, e.g. "epoch 3"), ``quantitative_measured``, ``quantitative_reproduced``
  (its own yes / no / None), ``budget`` (steps, images and seeds behind the row).
- `LabelledRun`: ``name``, ``label``, ``flagged``, ``detail`` as before; added ``findings``
  (kinds of `watch.diagnose()`), ``evidence`` (the measured check that the label is honest:
  a healthy run really trained, a pathological one really failed).
- `ExperimentResult`: added ``tables``: ``{name: {"title", "columns", "rows", "note"}}`` for
  tables the report prints as they are (the grid's closed loop is ``tables["closed_loop"]``);
  ``data["histograms"]`` where present is ``{"run": name, "weight": {layer: {epoch:
  {"counts", "edges"}}}, "gradient": {...same, one probe batch...}, "grad_norm": {layer:
  {epoch: median recorded weight-gradient norm}}}`` with epoch 0 = initialisation (biases
  excluded, as in the Keras tutorial); `ExperimentResult.calibration` counts its labelled runs.
"""

from __future__ import annotations

import math
import os
import statistics
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Sequence

import torch

from ..io.runsummary import summarize
from ..record.records import Status, StepRecord
from .data import Mnist, load_mnist

__all__ = ["Budget", "BUDGETS", "Context", "Claim", "LabelledRun", "ExperimentResult",
           "RecordSummary", "summarize_records", "mean_spread", "fmt", "spread", "decide"]

Label = Literal["pathological", "healthy"]


@dataclass(frozen=True)
class Budget:
    """How much compute each experiment gets (every field is per run, per seed)."""

    name: str
    mnist_train: int | None  # training images used (None: all 60,000)
    mnist_test: int | None  # test images used for accuracy (None: all 10,000)
    sigmoid_epochs: int  # deep sigmoid MLP
    fixed_epochs: int  # ReLU+He, +BN MLPs: at most this many epochs, stop once above 90% test
    resnet_train: int | None  # ResNet: training images per evaluation chunk (None: 60,000)
    linear_epochs: int  # deep linear MLP, each clipping variant
    grid_steps: int  # optimizer steps per mitigation-grid cell
    grid_depth: int  # hidden layers of the mitigation-grid MLP
    xor_epochs: int  # maximum XOR epochs (4 updates each)
    xor_depths: tuple[int, ...]  # hidden-layer counts of the XOR sweep
    seeds: int  # default number of seeds for random experiments
    mnist_seeds: int  # seeds for the MNIST experiments (they dominate the wall time)
    every: int = 1  # gradwatch records every `every`-th step in MNIST runs
    resnet_chunks: int = 1  # ResNet: at most this many chunks, stop once above 90% test
    linear_variants: tuple[str, ...] = ("no clip", "per-tensor 1.0")  # deep linear variants
    reg_seeds: int | None = None  # seeds of the weight-decay run (None: mnist_seeds)
    small_steps: int = 300  # optimizer steps of the small synthetic runs (RNN, lr, dying ReLU)
    small_train: int = 6_400  # MNIST images of the small MNIST runs (lr, dying ReLU)

    def with_seeds(self, seeds: int | None) -> Budget:
        """The same budget with ``seeds`` seeds everywhere (unchanged when None)."""
        if seeds is None:
            return self
        if seeds < 1:
            raise ValueError(f"Expected `seeds` to be a positive int, but got {seeds!r}.")
        return replace(self, seeds=seeds, mnist_seeds=seeds, reg_seeds=seeds)


BUDGETS: dict[str, Budget] = {
    "quick": Budget("quick", mnist_train=2_000, mnist_test=1_000, sigmoid_epochs=1,
                    fixed_epochs=1, resnet_train=320, linear_epochs=1, grid_steps=30,
                    grid_depth=10, xor_epochs=200, xor_depths=(1, 5, 10), seeds=2,
                    mnist_seeds=1, small_steps=60, small_train=1_000),
    "default": Budget("default", mnist_train=None, mnist_test=None, sigmoid_epochs=3,
                      fixed_epochs=3, resnet_train=6_400, resnet_chunks=3, linear_epochs=5,
                      grid_steps=150, grid_depth=10, xor_epochs=100_000,
                      xor_depths=(1, 2, 3, 5, 10), seeds=4, mnist_seeds=2, every=10,
                      reg_seeds=1),
    "full": Budget("full", mnist_train=None, mnist_test=None, sigmoid_epochs=10, fixed_epochs=10,
                   resnet_train=None, resnet_chunks=10, linear_epochs=10, grid_steps=1_875,
                   grid_depth=10, xor_epochs=100_000, xor_depths=tuple(range(1, 11)), seeds=5,
                   mnist_seeds=3, every=10, small_steps=1_000,
                   linear_variants=("no clip", "per-tensor 1.0", "global norm 1.0",
                                    'gradwatch clip="auto"')),
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
    figures: bool = True  # draw the experiments' figures (tests switch them off)
    _mnist: Mnist | None = field(default=None, repr=False)
    _memo: dict[str, Any] = field(default_factory=dict, repr=False)

    def mnist(self) -> Mnist:
        """The MNIST subset of the budget, on the run's device."""
        if self._mnist is None:
            data = load_mnist(self.data_dir, train_limit=self.budget.mnist_train,
                              test_limit=self.budget.mnist_test, cache_dir=self.cache_dir)
            self._mnist = data.to(self.device)
        return self._mnist

    def memo(self, key: str, make: Callable[[], Any]) -> Any:
        """``make()`` once per context: experiments share runs (e.g. the unclipped deep MLP)."""
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

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
    measured: str  # what we measured (median and range over seeds where random)
    reproduced: bool | None  # None: not decidable within this budget
    verdict: str  # what gradwatch flagged / diagnosed, where and when
    seeds: int = 0  # runs (seeds) behind the row
    behaved: int | None = None  # runs that behaved as claimed
    spread: str = ""  # median and range of the claim's main number over seeds
    quantitative: str = ""  # the source's number, when the claim has one
    quantitative_measured: str = ""
    quantitative_reproduced: bool | None = None  # None: no number, or undecided (budget)
    budget: str = ""  # what the row's runs cost: steps, images, seeds

    @property
    def reproduced_text(self) -> str:
        return {True: "yes", False: "no", None: "undecided (budget)"}[self.reproduced]


@dataclass(frozen=True)
class LabelledRun:
    """A run labelled pathological or healthy from the literature, before looking at verdicts.

    Only runs whose measured behaviour confirms the label (``evidence``) are labelled; the
    experiments keep the others out of the calibration and say why in their notes.
    """

    name: str
    label: Label
    flagged: bool  # a finding, or a layer with a status other than ok at a recorded step
    detail: str = ""
    findings: tuple[str, ...] = ()  # kinds of watch.diagnose() (empty where unavailable)
    evidence: str = ""  # the measured check behind the label


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
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)

    def calibration(self) -> dict[str, int]:
        """Healthy / pathological labelled runs and how many of each gradwatch flagged."""
        h = [r for r in self.runs if r.label == "healthy"]
        p = [r for r in self.runs if r.label == "pathological"]
        return {"healthy_flagged": sum(r.flagged for r in h), "healthy_total": len(h),
                "pathological_flagged": sum(r.flagged for r in p), "pathological_total": len(p)}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["claims"] = [asdict(c) | {"reproduced_text": c.reproduced_text} for c in self.claims]
        d["runs"] = [asdict(r) for r in self.runs]
        d["calibration"] = self.calibration()
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
            return f"none flagged ({self.steps} recorded steps)"
        parts = []
        for status, counts in self.layers.items():
            names = sorted(counts, key=lambda n: -counts[n])
            shown = ", ".join(names[:max_layers]) + (f" +{len(names) - max_layers}"
                                                     if len(names) > max_layers else "")
            parts.append(f"{status}: {shown}")
        return (f"{'; '.join(parts)} (first at step {self.first_flag_step}, "
                f"{self.flagged_steps}/{self.steps} recorded steps)")


def summarize_records(records: Iterable[StepRecord]) -> RecordSummary:
    """Condenses gradwatch records into a `RecordSummary` through `gradwatch.io.runsummary` (the
    one reduction the summary and the report use)."""
    recs = list(records)
    flagged = [r for r in recs if r.flagged]
    first = flagged[0].step if flagged else None
    run = summarize(recs)
    layers: dict[str, dict[str, int]] = {}
    for layer in run.layers:
        for status, n in layer.statuses.items():
            if n and str(status) != Status.OK.value:
                layers.setdefault(str(status), {})[layer.name] = int(n)
    return RecordSummary(run.kept, len(flagged), first, layers, len(run.spike_steps))


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


def spread(values: Sequence[float | None], spec: str = ".3g", unit: str = "") -> str:
    """``median m (range a–b, n=k)``; ``None`` entries (e.g. "never happened") are counted apart.

    >>> spread([0.95, 0.97, 0.96], ".1%")
    'median 96.0% (range 95.0%–97.0%, n=3)'
    """
    vals = [float(v) for v in values if v is not None]
    missing = len(values) - len(vals)
    tail = f", {missing} of {len(values)} none" if missing else ""
    if not vals:
        return f"none (n={len(values)})"
    if len(vals) == 1:
        return f"{vals[0]:{spec}}{unit} (n=1{tail})"
    med = statistics.median(vals)
    return (f"median {med:{spec}}{unit} (range {min(vals):{spec}}{unit}–{max(vals):{spec}}{unit}, "
            f"n={len(vals)}{tail})")


def decide(behaved: Sequence[bool], *, decidable: bool = True) -> bool | None:
    """A claim is reproduced when more than half of its runs behaved as claimed.

    Returns None ("undecided (budget)") when the budget cannot decide the claim: the caller
    says so when the runs were too short to show the behaviour and none contradicted it.
    """
    if not decidable or not behaved:
        return None
    return sum(bool(b) for b in behaved) * 2 > len(behaved)
