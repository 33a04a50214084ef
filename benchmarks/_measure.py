"""Measuring tools of the overhead benchmark: interleaved timing, paired ratios, step memory."""

from __future__ import annotations

import gc
import random
import statistics
import time
import tracemalloc
from typing import Callable, Mapping

import torch
from torch.profiler import ProfilerActivity, profile

__all__ = ["interleave", "paired_ratios", "summarise", "step_peak_bytes", "python_bytes_per_call",
           "linear_fit"]


def interleave(fns: Mapping[str, Callable[[], None]], *, block: int, warmup: int,
               min_rounds: int, max_rounds: int, budget_s: float,
               seed: int = 0) -> dict[str, list[float]]:
    """Seconds per call of each function, one sample per round of ``block`` calls each.

    Calls are interleaved one by one: a round is ``block`` slots, and every slot calls each
    function once, in an order shuffled per slot (A B C, C A B, ...), so that load from elsewhere
    on the machine hits all of them alike and the ratios of one round are tightly paired. Each
    function still makes ``block`` consecutive calls of its own per round (``every=10`` records
    exactly once in any 10 consecutive steps). ``warmup`` calls of each
    are run first and discarded. Rounds continue until ``max_rounds``, or until ``budget_s``
    seconds (of timed rounds) have passed and ``min_rounds`` are in.
    """
    rng = random.Random(seed)
    names = list(fns)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(warmup):
        for name in names:
            fns[name]()
    start = time.perf_counter()
    clock = time.perf_counter
    for r in range(max_rounds):
        if r >= min_rounds and clock() - start > budget_s:
            break
        gc.collect()
        spent = dict.fromkeys(names, 0.0)
        for _ in range(block):
            rng.shuffle(names)
            for name in names:
                fn = fns[name]
                t0 = clock()
                fn()
                spent[name] += clock() - t0
        for name in names:
            samples[name].append(spent[name] / block)
    return samples


def paired_ratios(samples: Mapping[str, list[float]], base: str) -> dict[str, list[float]]:
    """Per round, each function's time divided by ``base``'s time in the same round."""
    return {name: [a / b for a, b in zip(times, samples[base])] for name, times in samples.items()}


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarise(values: list[float]) -> dict[str, float]:
    """Median and interquartile range."""
    return {"median": statistics.median(values), "p25": _quantile(values, 0.25),
            "p75": _quantile(values, 0.75), "n": len(values)}


_MARKER_BYTES = 12_345


def _walk(events):
    for e in events:
        yield e
        yield from _walk(e.children)


def step_peak_bytes(step: Callable[[], None]) -> dict[str, int]:
    """Peak and net tensor memory (bytes) of one call of ``step``, from the profiler's allocator
    events.

    Two calls run under ``torch.profiler`` with ``profile_memory=True``; only the second one is
    counted, so that blocks allocated by the first (gradients, optimizer state) are known when the
    second frees them. ``peak`` is the highest level of allocated bytes during the second call
    above its level at the start; ``net`` is what the call left allocated (0 in a steady state).
    """
    from torch._C._profiler import _EventType

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
        marker = torch.empty(_MARKER_BYTES, dtype=torch.uint8)  # marks the boundary
        del marker
        step()
    events = sorted((e for e in _walk(prof.profiler.kineto_results.experimental_event_tree())
                     if e.tag == _EventType.Allocation), key=lambda e: e.start_time_ns)
    sizes = [e.extra_fields.alloc_size for e in events]
    split = next((i + 2 for i in range(len(sizes) - 1)
                  if sizes[i] == _MARKER_BYTES and sizes[i + 1] == -_MARKER_BYTES), None)
    if split is None:
        raise RuntimeError("Expected the profiler to record the boundary marker between the two "
                           "profiled steps, but it did not; profile_memory may be unsupported.")
    level = peak = 0
    for e in events[split:]:
        level += e.extra_fields.alloc_size
        peak = max(peak, level)
    return {"peak": peak, "net": level}


def python_bytes_per_call(fn: Callable[[], None], calls: int) -> float:
    """Python-heap bytes still held after each call of ``fn`` (tracemalloc), averaged."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(calls):
            fn()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return (after - before) / calls


def linear_fit(xs: list[float], ys: list[float]) -> dict[str, float]:
    """Least-squares ``y = intercept + slope * x`` and its R²."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    slope = sxy / sxx if sxx else 0.0
    intercept = my - slope * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys))
    return {"slope": slope, "intercept": intercept,
            "r2": 1.0 - ss_res / ss_tot if ss_tot else 1.0}
