"""Host cost per layer as depth grows: gradwatch against a bare step on L tiny blocks, on a deep
Transformer, and what its history costs in memory.

A stack of L blocks ``nn.Sequential(nn.Linear(16, 16), nn.Tanh())``, batch 4, plain SGD, on the
CPU: compute is negligible, so what remains is host (Python) time per layer, the regime of a
launch-bound GPU step. Beside it a 48-layer Transformer encoder (d_model 32, 2 heads, sequence
8, batch 2: 48 x 6 = 288 watched layers) as a real deep model. Configurations are interleaved
step by step (`_measure.interleave`); the figure reported is the median extra time per step
over the bare step of the same round, divided by the number of watched layers, with its
interquartile range. Each round starts from a full ``gc.collect()``, so that table leaves
out the full collections a long run pays; ``--gc`` measures them: each configuration alone for
1,500 steps at L = 400 (mean step time with every collection in it, which differs by a tenth
between runs; time in the collector, and in its full collections; objects moved to the oldest
generation per step, which decides how often a full collection comes). ``--memory`` adds the
history's bytes per layer per record (from its columns, and from the process's allocations over
1,500 records at L = 400) and the resident memory over a long run with the history full.

    python benchmarks/scaling.py                       # L = 25, 100, 400 and the Transformer
    python benchmarks/scaling.py --depths 25,100 --budget 10 --no-transformer --out s.json
    python benchmarks/scaling.py --memory --long 50000  # + memory (about 3 minutes more)
    python benchmarks/scaling.py --gc               # + garbage collection (about 3 minutes)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import tracemalloc
from typing import Callable

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _measure import interleave, summarise  # noqa: E402
from _cli import int_list, out_file, positive_int, seconds  # noqa: E402

from gradwatch import GradWatch  # noqa: E402

CONFIGS = ("bare", "naive", "foreach", "gw_params", "gw_default", "gw_every10", "gw_unrecorded")
"""What runs beside the bare step: the naive ``.item()`` loop, one foreach norm pass with one
host copy, and gradwatch without activations, by default, every 10th step, never recorded."""

OPTIONS = {"gw_params": {"activations": False}, "gw_default": {}, "gw_every10": {"every": 10},
           "gw_unrecorded": {"every": 10 ** 9}}


def chain(depth: int) -> tuple[nn.Module, Callable[[nn.Module], torch.Tensor]]:
    """L Linear(16, 16) + tanh blocks and their loss on a fixed batch of 4."""
    torch.manual_seed(0)
    model = nn.Sequential(*(nn.Sequential(nn.Linear(16, 16), nn.Tanh()) for _ in range(depth)))
    x = torch.randn(4, 16)
    return model, lambda m: m(x).square().mean()


def transformer(depth: int = 48) -> tuple[nn.Module, Callable[[nn.Module], torch.Tensor]]:
    """A ``depth``-layer Transformer encoder (d_model 32, 2 heads) on a fixed batch."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 2, dim_feedforward=64, dropout=0.0, batch_first=True)
    model = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
    x = torch.randn(2, 8, 32)
    return model, lambda m: m(x).square().mean()


def _step(config: str, build: Callable[[], tuple[nn.Module, Callable]]) -> Callable[[], None]:
    model, loss_of = build()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    params = list(model.parameters())
    options = OPTIONS.get(config)
    watch = GradWatch(model, optimizer=opt, **options) if options is not None else None

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = loss_of(model)
        loss.backward()
        if config == "naive":
            [p.grad.norm().item() for p in params]
        elif config == "foreach":
            torch.stack(torch._foreach_norm([p.grad for p in params])).tolist()
        elif watch is not None:
            watch.note_loss(loss)
        opt.step()

    step.watch = watch  # keeps the watch alive with its step
    return step


def run(build: Callable[[], tuple[nn.Module, Callable]], budget: float
        ) -> dict[str, dict[str, float]]:
    """Per configuration: median [p25, p75] extra microseconds per watched layer per step."""
    steps = {c: _step(c, build) for c in CONFIGS}
    layers = len(steps["gw_default"].watch.layer_names)
    samples = interleave(steps, block=10, warmup=20, min_rounds=5, max_rounds=200,
                         budget_s=budget)
    out = {}
    for config, times in samples.items():
        extra = [(t - b) / layers * 1e6 for t, b in zip(times, samples["bare"])]
        out[config] = {**summarise(extra), "step_ms": summarise(times)["median"] * 1e3,
                       "layers": layers}
    return out


def history_memory(depth: int = 400, records: int = 1500) -> dict[str, float]:
    """Bytes per layer per record of the history: from its columns, and measured as the
    allocations that 1,500 records of an L-block chain leave (tracemalloc, history full)."""
    model, loss_of = chain(depth)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    watch = GradWatch(model, optimizer=opt, history=records)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_of(model).backward()
        opt.step()

    for _ in range(20):
        step()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for _ in range(records):
        step()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    hist = watch.history
    watch.close()
    return {"columns_bytes_per_layer_record": hist.bytes_per_layer_record(),
            "measured_bytes_per_layer_record": (after - before) / (records * depth),
            "records": records, "layers": depth}


GC_CONFIGS = ("bare", "gw_params", "gw_default", "gw_every10")


def collector_cost(depth: int = 400, steps: int = 1500) -> dict[str, dict[str, float]]:
    """Per configuration, run alone for ``steps`` steps from a full collection (all models built
    first, so every run sees the same heap): the mean step time with every collection in it,
    the time spent in the garbage collector and its full collections per 1,000 steps, and (in
    a second, untimed pass of ``steps // 5`` steps) the objects that each collection of the
    middle generation moves to the oldest one, per step. Those promotions are what sets off a
    full collection (when they reach a quarter of the objects already there), and a full
    collection walks every object of the program."""
    runs = {c: _step(c, lambda: chain(depth)) for c in GC_CONFIGS}
    out = {}
    for config, step in runs.items():
        for _ in range(30):
            step()
        spent, full, full_s, started = [0.0], [0], [0.0], [0.0]

        def timer(phase: str, info: dict) -> None:
            if phase == "start":
                started[0] = time.perf_counter()
                return
            took = time.perf_counter() - started[0]
            spent[0] += took
            if info["generation"] == 2:
                full[0] += 1
                full_s[0] += took

        gc.collect()
        gc.callbacks.append(timer)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        wall = time.perf_counter() - start
        gc.callbacks.remove(timer)
        promoted, oldest = [0], [0]

        def counter(phase: str, info: dict) -> None:
            if info["generation"] != 1:
                return
            if phase == "start":
                oldest[0] = len(gc.get_objects(2))
            else:
                promoted[0] += len(gc.get_objects(2)) - oldest[0]

        gc.collect()
        gc.callbacks.append(counter)
        for _ in range(steps // 5):
            step()
        gc.callbacks.remove(counter)
        out[config] = {"step_ms": wall / steps * 1e3, "collector_us": spent[0] / steps * 1e6,
                       "full_us": full_s[0] / steps * 1e6, "full_per_1000": full[0] / steps * 1e3,
                       "promoted_per_step": promoted[0] / (steps // 5),
                       "objects": len(gc.get_objects()), "layers": depth, "steps": steps}
    return out


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def flat_memory(steps: int, depth: int = 25, history: int = 1000) -> dict[str, list[float]]:
    """Resident memory (MB) every tenth of a ``steps``-step run whose history is full after
    ``history`` steps (the default watch on an L-block chain)."""
    model, loss_of = chain(depth)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    watch = GradWatch(model, optimizer=opt, history=history)
    marks, rss, start = [], [], time.perf_counter()
    for k in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = loss_of(model)
        loss.backward()
        watch.note_loss(loss)
        opt.step()
        if (k + 1) % max(1, steps // 10) == 0:
            gc.collect()
            marks.append(k + 1)
            rss.append(_rss() / 2 ** 20)
    watch.close()
    return {"step": marks, "rss_mb": rss, "wall_s": time.perf_counter() - start}


def _print_table(results: dict, names: list[str]) -> None:
    """The interleaved table: median [p25–p75] extra µs per watched layer per step."""
    print("| added host time per watched layer per step (µs) | "
          + " | ".join(f"{n} ({results[n]['bare']['layers']} layers)" for n in names) + " |")
    print("|---|" + "---|" * len(names))
    for config in CONFIGS[1:]:
        cells = [f"{results[n][config]['median']:.1f} [{results[n][config]['p25']:.1f}–"
                 f"{results[n][config]['p75']:.1f}]" for n in names]
        print(f"| {config} | " + " | ".join(cells) + " |")
    print("| bare step (ms) | " + " | ".join(f"{results[n]['bare']['step_ms']:.2f}"
                                              for n in names) + " |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depths", default="25,100,400", type=int_list,
                   help="comma-separated L (default 25,100,400; '' for none)")
    p.add_argument("--budget", type=seconds, default=40.0,
                   help="seconds of timed rounds per model")
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")
    p.add_argument("--no-transformer", action="store_true", help="skip the 48-layer Transformer")
    p.add_argument("--memory", action="store_true", help="also measure the history's memory")
    p.add_argument("--long", type=positive_int, default=50_000, help="steps of the flat-memory run")
    p.add_argument("--gc", action="store_true",
                   help="also measure garbage collection, each configuration alone (L = 400)")
    p.add_argument("--gc-steps", type=positive_int, default=1500, help="steps of each --gc run")
    p.add_argument("--gc-depth", type=positive_int, default=400, help="L of the --gc runs (default 400)")
    p.add_argument("--out", default=None, type=out_file, help="write the results to this JSON file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = {f"L = {d}": (lambda d=d: chain(d)) for d in args.depths}
    if not args.no_transformer:
        models["Transformer 48"] = transformer
    results = {}
    for name, build in models.items():
        print(f"[scaling] {name} ...", file=sys.stderr, flush=True)
        results[name] = run(build, args.budget)
    names = list(results)
    if names:
        _print_table(results, names)
    memory = None
    if args.memory:
        print("[scaling] history memory ...", file=sys.stderr, flush=True)
        memory = {"history": history_memory(), "flat": flat_memory(args.long)}
        h, f = memory["history"], memory["flat"]
        print(f"\nhistory: {h['columns_bytes_per_layer_record']:.0f} bytes per layer-record in "
              f"its columns, {h['measured_bytes_per_layer_record']:.1f} measured (L = "
              f"{h['layers']}, {h['records']} records)")
        print(f"resident memory over {args.long} steps (history full at 1,000): " + ", ".join(
            f"{s}: {m:.1f} MB" for s, m in zip(f["step"], f["rss_mb"])))
    collection = None
    if args.gc:
        print("[scaling] garbage collection ...", file=sys.stderr, flush=True)
        collection = collector_cost(args.gc_depth, args.gc_steps)
        bare = collection["bare"]
        print(f"\n| alone, L = {bare['layers']}, {bare['steps']} steps | mean step (ms) | in the collector "
              "(µs/step) | of which full collections | full collections per 1,000 steps | "
              "objects promoted per step |\n|---|---|---|---|---|---|")
        for config, c in collection.items():
            print(f"| {config} | {c['step_ms']:.2f} | {c['collector_us']:.0f} | "
                  f"{c['full_us']:.0f} | {c['full_per_1000']:.1f} | "
                  f"{c['promoted_per_step']:.0f} |")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump({"threads": args.threads, "load": os.getloadavg(), "results": results,
                       "memory": memory, "gc": collection}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
