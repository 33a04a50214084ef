"""Per-layer statistics, each declared once: what it computes, how a layer's tensors combine,
and how it is labelled. Records, loggers, summary, report and plots iterate the declarations.

A user statistic reads the gradients (or the parameters) of the watched tensors on recorded
steps, batched on the device, and lands in ``LayerStat.values[name]``, the logs and the report::

    class GradMaxAbs(Statistic):
        name, label = "grad_max", "max |gradient|"

        def per_tensor(self, tensors):
            return torch.stack(torch._foreach_norm(tensors, math.inf))

        def combine(self, values):
            return max(values)

    GradWatch(model, statistics=[GradMaxAbs()])
"""

from __future__ import annotations

import math
import numbers
from typing import Any, ClassVar, Iterable, Literal, Sequence

import torch
from torch import Tensor

from . import norms

__all__ = ["Statistic", "GradNorm", "OutputGradNorm", "UpdateRatio", "WeightNorm",
           "ZeroFraction", "DeadUnits", "Saturation", "TimeRatio", "BUILTIN", "label_of",
           "check_statistics", "checked_per_tensor", "values_per_tensor", "layer_value", "RESERVED"]

Reads = Literal["grad", "param", "output_grad", "update", "forward", "time"]


class Statistic:
    """Base class of a per-layer statistic.

    Subclasses set `name` (the key in records and logs) and `label` (for people). A statistic
    that ``reads`` ``"grad"`` (the default) or ``"param"`` implements `per_tensor`, which gets
    the watched gradients (or parameters) of one step as a list and returns one value per
    tensor as a 1-d tensor on their device, or k of them as an (n, k) tensor (one batched
    computation, no host sync); gradwatch
    copies it to the host together with everything else of the step and combines each layer's
    values with `combine`. The other kinds are measured by gradwatch's hooks.
    """

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    reads: ClassVar[Reads] = "grad"
    log_scale: ClassVar[bool] = True
    """Whether plots draw it on a log axis."""

    def per_tensor(self, tensors: Sequence[Tensor]) -> Tensor:
        """One value per tensor, as a 1-d tensor (any float dtype) on the tensors' device."""
        raise NotImplementedError(f"{type(self).__name__} reads {self.reads!r}: implement "
                                  f"per_tensor(tensors) returning one value per tensor.")

    def combine(self, values: Sequence[float]) -> float | None:
        """A layer's value from its tensors' values (default: the L2 norm of the values)."""
        return norms.combine(values)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class GradNorm(Statistic):
    """L2 norm of a layer's parameter gradients (``LayerStat.norm``), exact over fp32's range."""

    name, label = "norm", "gradient norm"

    def per_tensor(self, tensors: Sequence[Tensor]) -> Tensor:
        return norms.per_tensor_norms(tensors)


class OutputGradNorm(Statistic):
    """L2 norm of the gradient w.r.t. a layer's output(s) (``LayerStat.act_norm``), over the
    backward passes that accumulate parameter gradients (``torch.autograd.grad`` passes, as in
    gradient penalties, do not count)."""

    name, label, reads = "act_norm", "output-gradient norm", "output_grad"


class UpdateRatio(Statistic):
    """‖Δθ‖/‖θ‖ of a layer across ``optimizer.step()`` (needs ``optimizer=``).

    Estimated from a fixed sample of `sample` entries per tensor (16 evenly spaced runs)
    (exact for smaller tensors), so it costs two small copies whatever the model size. Measured
    on every 4th recorded step (`gradwatch.capture.units.UNIT_EVERY`, the first included), like the
    unit statistics. About 1e-3 is the classic healthy range; orders above means the learning rate
    is too high.
    """

    name, label, reads = "update_ratio", "update/weight ratio", "update"
    sample: int = 256


class WeightNorm(Statistic):
    """L2 norm of a layer's parameters (one extra pass over the weights per recorded step)."""

    name, label, reads = "weight_norm", "weight norm", "param"

    def per_tensor(self, tensors: Sequence[Tensor]) -> Tensor:
        return norms.per_tensor_norms(tensors)


class ZeroFraction(Statistic):
    """Share of exactly-zero entries in a layer's gradients (normal in ReLU nets; 1.0 on every
    step is a dead layer). One extra kernel per tensor per recorded step."""

    name, label, log_scale = "zero_frac", "zero-gradient share", False

    def per_tensor(self, tensors: Sequence[Tensor]) -> Tensor:
        rows = [torch.stack([(t == 0).sum() if not t.is_sparse else
                             t.numel() - t.coalesce()._values().count_nonzero(),
                             torch.tensor(t.numel(), device=t.device)]).double()
                for t in tensors]  # (a complex entry is 0 when both parts are: t == 0)
        return torch.stack(rows)  # (zeros, entries) per tensor

    def combine(self, values: Sequence[tuple[float, float]]) -> float | None:
        entries = sum(n for _, n in values)
        return sum(z for z, _ in values) / entries if entries else None


class DeadUnits(Statistic):
    """Share of a layer's units that a following ReLU-family module kept at zero on every input
    of the last `gradwatch.capture.units.UNIT_WINDOW` measured steps (dead units), from the
    forward outputs of every 4th recorded step (`gradwatch.capture.units.UNIT_EVERY`, the
    first included). A module called several times in a step (shared across time or depth)
    counts a unit alive when it fired on any of its calls; a layer followed by several such
    modules reads the largest share. A unit is a channel where the last module that applied a
    weight before the ReLU is a convolution (normalisation or pooling in between included:
    Conv → BatchNorm → ReLU), else an entry of the last dimension (a Linear's features)."""

    name, label, reads, log_scale = "dead_frac", "dead-unit share", "forward", False

    def combine(self, values: Sequence[float]) -> float | None:
        return max(values) if values else None


class Saturation(Statistic):
    """Share of the outputs of a following saturating module (sigmoid, tanh, hardtanh,
    softmax-like) within 1% of its range from a bound, from the forward outputs of every 4th
    recorded step (an evenly strided sample of at most 4096 outputs). Outputs of at most 4096
    entries are counted together when the step is measured; one changed in place before then
    (its version moved: not what the module gave) is left out of that step. A module called
    several times in a step is counted over all its calls' outputs; a layer followed by
    several such modules reads the largest share."""

    name, label, reads, log_scale = "sat_frac", "saturated share", "forward", False

    def combine(self, values: Sequence[float]) -> float | None:
        return max(values) if values else None


class TimeRatio(Statistic):
    """For recurrent modules (``nn.RNN``/``LSTM``/``GRU``): the norm of the gradient reaching
    the first time step of the input over the one reaching the last step. Tiny or 0 means the
    gradient vanishes through time."""

    name, label, reads = "time_ratio", "first/last time-step gradient", "time"

    def combine(self, values: Sequence[float]) -> float | None:
        return min(values) if values else None


BUILTIN: tuple[Statistic, ...] = (GradNorm(), OutputGradNorm(), UpdateRatio(), DeadUnits(),
                                  Saturation(), TimeRatio(), WeightNorm(), ZeroFraction())
"""Every statistic gradwatch ships, by declaration."""

_LABELS = {s.name: s.label for s in BUILTIN}

RESERVED = frozenset({s.name for s in BUILTIN if s.reads not in ("grad", "param")} | {
    "norm", "status", "spike", "reason", "values", "layer", "layers", "run_id", "nonfinite",
    "step", "total_norm", "clip_coef", "first_nonfinite", "skipped", "amp_overflow",
    "nonfinite_origin", "findings", "loss"})
"""Names a user statistic cannot take: the statistics gradwatch's hooks measure (the rules read
them by name) and the fields of a record and of a CSV row."""


def label_of(name: str, statistics: Iterable[Statistic] = ()) -> str:
    """The label of the statistic called ``name`` (the name itself when unknown)."""
    for s in statistics:
        if s.name == name:
            return s.label
    return _LABELS.get(name, name)


def check_statistics(statistics: object) -> tuple[Statistic, ...]:
    """Validates ``GradWatch(statistics=...)``: user statistics read gradients or parameters."""
    if isinstance(statistics, Statistic) or not isinstance(statistics, (list, tuple)):
        raise TypeError(f"Expected `statistics` to be a list of gradwatch.measure.statistics.Statistic, "
                        f"but got {type(statistics).__name__}; wrap it: statistics=[MyStat()].")
    out, names = [], set(RESERVED)
    for s in statistics:
        if not isinstance(s, Statistic):
            raise TypeError(f"Expected each of `statistics` to be a Statistic instance, but got "
                            f"{type(s).__name__}; subclass gradwatch.measure.statistics.Statistic.")
        if s.reads not in ("grad", "param"):
            raise ValueError(f"Expected statistic {s.name!r} to read 'grad' or 'param', but it "
                             f"reads {s.reads!r}; the other kinds are built in.")
        if not s.name or not isinstance(s.name, str) or s.name in names:
            raise ValueError(f"Expected each statistic to have a unique `name`, not one of "
                             f"gradwatch's own ({', '.join(sorted(RESERVED))}), but got "
                             f"{s.name!r} ({type(s).__name__}); rename it (name = 'my_...').")
        names.add(s.name)
        out.append(s)
    return tuple(out)


def checked_per_tensor(statistic: Statistic, result: Any, n_tensors: int) -> Any:
    """``result`` of `Statistic.per_tensor` for ``n_tensors`` tensors, when it is a tensor of
    shape (n,) or (n, k) (a count that only divides, as 2n values in one row or (1, n, k),
    mixed the tensors' values: one layer read another's).

    Raises:
        ValueError: a tensor of another shape.
    """
    if isinstance(result, Tensor) and n_tensors and not (
            result.dim() in (1, 2) and result.shape[0] == n_tensors
            and (result.dim() == 1 or result.shape[1] > 0)):
        raise _count_error(statistic, result.numel(), n_tensors, tuple(result.shape))
    return result


def _count_error(statistic: Statistic, n_values: int, n_tensors: int,
                 shape: tuple[int, ...] | None = None) -> ValueError:
    shown = f"{n_values} value{'s' * (n_values != 1)}" + (
        f" (shape {shape})" if shape is not None else "")
    return ValueError(f"Expected statistic {statistic.name!r} ({type(statistic).__name__}) to "
                      f"return one value per tensor from per_tensor: {n_tensors} values for the "
                      f"{n_tensors} tensors it was given (or a ({n_tensors}, k) tensor), but it "
                      f"returned {shown}; return e.g. torch.stack([f(t) for t in tensors]).")


def values_per_tensor(statistic: Statistic, n_values: int, n_tensors: int) -> int:
    """How many values `per_tensor` gave per tensor (k of an (n, k) result, 1 of a 1-d one),
    from the number of values it returned for ``n_tensors`` tensors (a length the host knows).

    Raises:
        ValueError: ``n_values`` is not one value (or one row of k) per tensor.
    """
    if n_tensors == 0:
        return 1
    if n_values < n_tensors or n_values % n_tensors:
        raise _count_error(statistic, n_values, n_tensors)
    return n_values // n_tensors


def layer_value(statistic: Statistic, values: Sequence[Any]) -> float:
    """``statistic.combine(values)`` as a float (NaN where it gives None: not measured).

    Raises:
        TypeError: `combine` returned something other than a number or None.
    """
    value = statistic.combine(values)
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"Expected statistic {statistic.name!r} ({type(statistic).__name__}) "
                        f"to return a number or None from combine, but it returned "
                        f"{type(value).__name__} ({value!r:.60}); return a Python float, "
                        f"e.g. float(...) of a tensor.")
    return float(value)
