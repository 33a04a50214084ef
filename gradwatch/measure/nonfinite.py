"""Where a NaN/Inf was born: the forward pass, the backward pass, or the loss."""

from __future__ import annotations

import itertools
import math
from typing import Any, Sequence

import torch

from ..capture.collected import Collected
from ..capture.collector import Collector

__all__ = ["locate_nonfinite", "event_values"]


def locate_nonfinite(collector: Collector, data: Collected, host: dict[str, list[float]],
                     layer_names: Sequence[str], norms: dict[int, float],
                     order: Sequence[int]) -> tuple[str | None, str | None, str | None]:
    """(origin, birth, already) of a non-finite step: the first module in forward order whose
    output went non-finite (``already``: "batch" when its input already was, the batch entering
    the model; "weights" when its own weights were, written by an earlier optimizer step);
    else in backward order the first output gradient that went non-finite (the gradient
    entering the model: the loss) or a module whose input gradient went non-finite while its
    output gradient was finite; else the parameter gradients."""
    for module, total in zip(data.forward_bad, host.get("forward", [])):
        if not math.isfinite(total):
            if module < 0:
                return "forward", collector.names[~module], "batch"
            return "forward", collector.names[module], \
                "weights" if _bad_weights(collector.modules[module]) else None
    events = [(e, v) for e, v in event_values(data, host)
              if not data.tasks or e[2] in data.tasks]
    for k, ((layer, is_output, _, gid), v) in enumerate(events):
        if math.isfinite(v):
            continue
        if is_output and k == 0:
            return "loss", None, None
        # the same bad gradient reaches a module's input: it went bad inside that module's
        # backward; reaching only outputs, it went bad between modules (at this output)
        same = list(itertools.takewhile(lambda e: e[3] == gid, (e for e, _ in events[k:])))
        inside = next((e[0] for e in same if not e[1]), None)
        if inside is not None:
            return "backward", layer_names[inside], None
        between = _applied_after(collector, data.completed, layer, events[k - 1][0][0])
        return "backward", between if between is not None else layer_names[layer], None
    for i in sorted(order, key=lambda i: -order.index(i)):
        if i in norms and not math.isfinite(norms[i]):
            return "backward", layer_names[i], None
    return None, None, None


def _bad_weights(module: Any) -> bool:
    """Whether ``module``'s parameters (its children's included: a module may apply a child's
    weights without calling it) hold a NaN/Inf (read on a non-finite step only)."""
    try:
        with torch.no_grad():
            return any(not bool(torch.isfinite(p).all()) for p in module.parameters())
    except (RuntimeError, TypeError, NotImplementedError):  # (a tensor subclass that refuses)
        return False


def event_values(data: Collected, host: dict[str, list[float]]
                  ) -> list[tuple[tuple[int, bool, int, int], float]]:
    """Each backward event with its gradient's norm (output and input events are reduced
    apart; see `gradwatch.capture.hooks.Collector.take`)."""
    outs, ins = iter(host.get("act_out", [])), iter(host.get("act_in", []))
    events = [((layer, True, task, gid), seq) for layer, task, gid, seq in data.out.rows]
    events += [((layer, False, task, gid), seq) for layer, task, gid, seq in data.inp.rows]
    events.sort(key=lambda e: e[1])
    return [(e, next(outs if e[1] else ins, math.nan)) for e, _ in events]


def _applied_after(collector: Collector, completed: Sequence[int], bad: int, good: int
                   ) -> str | None:
    """The module a gradient went non-finite in between two layers: the first parameter-free,
    non-element-wise leaf module that ran after layer ``bad`` and before layer ``good`` in the
    forward pass (a normalisation by hand, ``x / x.norm()``), whose backward turned the finite
    gradient reaching it into the non-finite one reaching ``bad``'s output; None when no such
    module ran between them (the operation is in a parent's forward code)."""
    position = {m: k for k, m in reversed(list(enumerate(completed)))}  # first completion
    start = position.get(collector.module_of_layer(bad))
    stop = position.get(collector.module_of_layer(good))
    if start is None or stop is None or stop <= start:
        return None
    for m in completed[start + 1:stop]:
        if collector.owner_of[m] < 0 and not collector.elementwise[m] and collector.leaf[m]:
            return collector.names[m]
    return None
