"""What gradwatch costs per training step: time and memory, side by side with a bare step.

Run ``python benchmarks/overhead.py [--quick] [--out results.json]``. Every configuration of a
model trains its own copy (same seed, same batch, plain SGD, one torch thread by default). Steps
are interleaved one by one (A B C, C A B, ... in an order shuffled per slot) after warm-up
rounds; a round gives each configuration 10 consecutive steps of its own. The table gives the
median time per step and the median over rounds of each configuration's time divided by the bare
step's time *in the same round*, with its interquartile range. Memory is the peak of allocated
tensor bytes during one steady-state step above its starting level, from the allocator events of
``torch.profiler`` (``profile_memory=True``), and the Python heap that each recorded step leaves
behind (tracemalloc: the bounded ``history`` of records).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _measure import (interleave, linear_fit, paired_ratios, python_bytes_per_call,  # noqa: E402
                      step_peak_bytes, summarise)
from _workloads import Workload, deep_chain, make_workload  # noqa: E402
from _cli import int_list, name_list, out_file, positive_int, seconds  # noqa: E402

from gradwatch import GradWatch  # noqa: E402

CONFIGS = {
    "bare": "training step, no monitoring",
    "gw_param": "GradWatch(activations=False): parameter norms every step",
    "gw_param_act": "GradWatch(): parameter + activation-gradient norms every step",
    "gw_param_act_every10": "GradWatch(every=10): the same, recorded every 10th step",
    "torch_clip": "torch.nn.utils.clip_grad_norm_(params, 1.0) alone",
    "gw_clip": "GradWatch(activations=False, clip=1.0): norms recorded + clipping",
    "naive_item": "hand-written monitor: [p.grad.norm().item() for p in params]",
    "floor_norms": "floor of any per-tensor monitor: one torch._foreach_norm pass + one host copy",
    "floor_hooks": "floor of any output-gradient monitor: forward hooks adding a no-op tensor hook",
    "detect_anomaly": "step under torch.autograd.detect_anomaly()",
}

# Targets of issue 4 (ratios to the bare step); None: no target for this model.
PARAM_TARGET = {"resnet18": 1.02, "transformer": 1.02, "mlp": 1.05}

PRESETS = {
    # block: steps per timed sample (10, so that every=10 records once per sample); warmup: steps
    # of each configuration before timing;
    # budget: seconds of timing per model, after which rounds stop once min_rounds are in.
    "default": dict(block=10, warmup=5, min_rounds=6, max_rounds=400,
                    budget={"mlp": 60.0, "resnet18": 320.0, "transformer": 130.0, "tiny": 5.0},
                    models="mlp,resnet18,transformer", sizes="500,1000,2000,4000", deep_budget=16.0,
                    heap_calls=10),
    "quick": dict(block=10, warmup=3, min_rounds=2, max_rounds=60,
                  budget={"mlp": 6.0, "resnet18": 0.0, "transformer": 0.0, "tiny": 1.0},
                  models="mlp,resnet18,transformer", sizes="250,500,1000", deep_budget=1.0,
                  heap_calls=3),
    "smoke": dict(block=2, warmup=2, min_rounds=2, max_rounds=2, budget={"tiny": 0.0},
                  models="tiny", sizes="20,40", deep_budget=0.0, heap_calls=2),
}


@dataclass
class Arm:
    """One configuration on its own copy of the model."""

    step: Callable[[], None]
    model: nn.Module
    optimizer: torch.optim.Optimizer
    watch: GradWatch | None


def make_arm(config: str, workload: Workload, *, lr: float = 1e-3) -> Arm:
    """A fresh model copy, SGD and the monitoring of ``config``, and its training step."""
    model = workload.build()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    params = [p for p in model.parameters() if p.requires_grad]
    x, y = workload.inputs
    loss_fn = workload.loss
    watch = None
    after_backward: Callable[[], object] | None = None
    if config == "gw_param":
        watch = GradWatch(model, optimizer=opt, activations=False)
    elif config == "gw_param_act":
        watch = GradWatch(model, optimizer=opt)
    elif config == "gw_param_act_every10":
        watch = GradWatch(model, optimizer=opt, every=10)
    elif config == "gw_clip":
        watch = GradWatch(model, optimizer=opt, activations=False, clip=1.0)
    elif config == "torch_clip":
        def after_backward():
            return torch.nn.utils.clip_grad_norm_(params, 1.0)
    elif config == "naive_item":
        def after_backward():
            return [p.grad.norm().item() for p in params if p.grad is not None]
    elif config == "floor_norms":
        def after_backward():
            return torch.stack(torch._foreach_norm([p.grad for p in params])).tolist()
    elif config == "floor_hooks":
        def noop(grad: torch.Tensor) -> None:
            return None

        def forward_hook(module: nn.Module, args: object, output: object) -> None:
            if isinstance(output, torch.Tensor) and output.requires_grad:
                output.register_hook(noop)

        for module in model.modules():
            if any(p.requires_grad for p in module.parameters(recurse=False)):
                module.register_forward_hook(forward_hook)
    elif config not in ("bare", "detect_anomaly"):
        raise ValueError(f"Expected a config in {list(CONFIGS)}, but got {config!r}.")

    if config == "detect_anomaly":
        def step() -> None:
            opt.zero_grad(set_to_none=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "Anomaly Detection has been enabled ..."
                with torch.autograd.detect_anomaly():
                    loss_fn(model(x), y).backward()
            opt.step()
    else:
        def step() -> None:
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            if after_backward is not None:
                after_backward()
            opt.step()

    return Arm(step, model, opt, watch)


def _mb(n: float) -> float:
    return n / 2**20


def bench_model(workload: Workload, configs: list[str], opts: dict) -> dict:
    """Times and measures every configuration on one model."""
    arms = {c: make_arm(c, workload) for c in configs}
    model = arms["bare"].model
    params = [p for p in model.parameters() if p.requires_grad]
    probe = GradWatch(model, activations=False)
    layers = len(probe.layer_names)
    probe.close()
    t0 = time.perf_counter()
    samples = interleave({c: a.step for c, a in arms.items()}, block=opts["block"],
                         warmup=opts["warmup"], min_rounds=opts["min_rounds"],
                         max_rounds=opts["max_rounds"],
                         budget_s=opts["budget"].get(workload.name, 0.0))
    timing_s = time.perf_counter() - t0
    ratios = paired_ratios(samples, "bare")
    memory = {c: step_peak_bytes(a.step) for c, a in arms.items()}
    for arm in arms.values():
        if arm.watch is not None:
            arm.watch.close()
    fresh = make_arm("gw_param_act", workload)
    fresh.step()
    heap = python_bytes_per_call(fresh.step, opts["heap_calls"])
    fresh.watch.close()

    out = {
        "description": workload.description,
        "parameters": sum(p.numel() for p in params),
        "param_tensors": len(params),
        "layers": layers,
        "param_mb": _mb(sum(p.numel() * p.element_size() for p in params)),
        "rounds": len(samples["bare"]),
        "steps_per_round": opts["block"],
        "timing_seconds": timing_s,
        "python_heap_bytes_per_record": heap,
        "python_heap_bytes_per_record_per_layer": heap / layers,
        "configs": {},
    }
    for c in configs:
        out["configs"][c] = {
            "what": CONFIGS[c],
            "ms_per_step": {k: v * 1e3 if k != "n" else v for k, v in summarise(samples[c]).items()},
            "ratio": summarise(ratios[c]),
            "peak_step_mb": _mb(memory[c]["peak"]),
            "peak_step_mb_vs_bare": _mb(memory[c]["peak"] - memory["bare"]["peak"]),
            "net_step_mb": _mb(memory[c]["net"]),
        }
    out["targets"] = _targets(workload.name, out["configs"], samples)
    return out


def _targets(name: str, cfg: dict, samples: dict[str, list[float]]) -> list[dict]:
    r = {c: v["ratio"]["median"] for c, v in cfg.items()}
    targets = []

    def add(what: str, value: float, limit: float, higher_is_better: bool = False) -> None:
        met = value >= limit if higher_is_better else value <= limit
        targets.append({"target": what, "value": value, "limit": limit,
                        "op": ">=" if higher_is_better else "<=", "met": bool(met)})

    if name in PARAM_TARGET and "gw_param" in r:
        add("param norms every step (x bare)", r["gw_param"], PARAM_TARGET[name])
    if "gw_param_act" in r:
        add("param + activation norms every step (x bare)", r["gw_param_act"], 1.10)
    if "gw_param_act_every10" in r:
        add("every=10 (x bare)", r["gw_param_act_every10"], 1.01)
    if "floor_norms" in r and "gw_param" in r:
        add("param norms: gradwatch's cost above the norm floor (x bare)",
            1.0 + r["gw_param"] - r["floor_norms"], PARAM_TARGET.get(name, 1.02))
    if {"floor_norms", "floor_hooks", "gw_param_act"} <= set(r):
        add("param + activation norms: gradwatch's cost above both floors (x bare)",
            1.0 + r["gw_param_act"] - r["floor_norms"] - r["floor_hooks"] + 1.0, 1.10)
    if "gw_clip" in r and "torch_clip" in r:
        extra = [(g - t) / b for g, t, b in
                 zip(samples["gw_clip"], samples["torch_clip"], samples["bare"])]
        add("gradwatch clip - clip_grad_norm_ (fraction of bare step)", summarise(extra)["median"],
            0.02)
    if "detect_anomaly" in r and "gw_param_act" in r:
        gw_over = r["gw_param_act"] - 1.0
        an_over = r["detect_anomaly"] - 1.0
        value = an_over / gw_over if gw_over > 0 else math.inf
        add("NaN localisation: detect_anomaly overhead / GradWatch() overhead", value, 10.0, True)
    if "detect_anomaly" in r and "gw_param" in r:
        gw_over = r["gw_param"] - 1.0
        value = (r["detect_anomaly"] - 1.0) / gw_over if gw_over > 0 else math.inf
        add("NaN localisation: detect_anomaly overhead / GradWatch(activations=False) overhead",
            value, 10.0, True)
    return targets


class _NanInBackward(torch.autograd.Function):
    """Identity forward; NaN gradient backward (a stand-in for an op that blows up)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def nan_check(workload: Workload) -> dict:
    """Injects a NaN gradient at the output of a middle layer; what each tool points at."""
    model = workload.build()
    x, y = workload.inputs
    watch = GradWatch(model)  # no optimizer: the weights stay as built
    workload.loss(model(x), y).backward()
    watch.step()  # a clean step: learns the forward order
    target = watch.layer_names[len(watch.layer_names) // 2]
    module = dict(model.named_modules())[target]
    handle = module.register_forward_hook(lambda m, a, out: _NanInBackward.apply(out))
    model.zero_grad(set_to_none=True)
    workload.loss(model(x), y).backward()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        found = watch.step().first_nonfinite
    watch.close()
    model.zero_grad(set_to_none=True)
    message = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.autograd.detect_anomaly():
                workload.loss(model(x), y).backward()
        except RuntimeError as err:
            message = str(err).splitlines()[0]
    handle.remove()
    return {"injected_at_output_of": target, "gradwatch_first_nonfinite": found,
            "gradwatch_correct": found == target, "detect_anomaly_error": message}


def bench_scaling(sizes: list[int], opts: dict) -> dict:
    """How the cost of ``step()`` grows with the number of parameter tensors (deep Linear chain)."""
    rows = []
    for n in sizes:
        workload = deep_chain(n)
        arms = {c: make_arm(c, workload) for c in ("bare", "gw_param", "gw_param_act")}
        full = interleave({c: a.step for c, a in arms.items()}, block=max(2, opts["block"] // 2),
                          warmup=opts["warmup"], min_rounds=opts["min_rounds"],
                          max_rounds=opts["max_rounds"], budget_s=opts["deep_budget"])
        full_ratio = paired_ratios(full, "bare")
        for arm in arms.values():
            if arm.watch is not None:
                arm.watch.close()

        # step() alone, on fixed gradients: recorded, unrecorded (every=10**9), and the references.
        model = workload.build()
        params = list(model.parameters())
        x, y = workload.inputs
        watch = GradWatch(model, activations=False)
        quiet = GradWatch(model, activations=False, every=10**9)
        workload.loss(model(x), y).backward()
        watch.step()
        quiet.step()  # its one recorded step; every later call is unrecorded
        calls = {
            "gradwatch_step": watch.step,
            "gradwatch_step_unrecorded": quiet.step,
            "clip_grad_norm_": lambda: torch.nn.utils.clip_grad_norm_(params, 1e30),
            "naive_item": lambda: [p.grad.norm().item() for p in params],
        }
        alone = interleave(calls, block=opts["block"], warmup=opts["warmup"],
                           min_rounds=opts["min_rounds"], max_rounds=opts["max_rounds"],
                           budget_s=opts["deep_budget"] / 2)
        watch.close()
        quiet.close()
        row = {"param_tensors": n, "layers": n // 2,
               "bare_ms": summarise(full["bare"])["median"] * 1e3,
               "ratio_gw_param": summarise(full_ratio["gw_param"])["median"],
               "ratio_gw_param_act": summarise(full_ratio["gw_param_act"])["median"]}
        for name, times in alone.items():
            us = summarise(times)["median"] * 1e6
            row[f"{name}_us"] = us
            row[f"{name}_us_per_tensor"] = us / n
        rows.append(row)
    fits = {name: linear_fit([r["param_tensors"] for r in rows], [r[f"{name}_us"] for r in rows])
            for name in ("gradwatch_step", "gradwatch_step_unrecorded", "clip_grad_norm_",
                         "naive_item")}
    return {"model": "deep chain of Linear(8,8), batch 4 (identity init)", "rows": rows,
            "fit_us": fits}


# ---------------------------------------------------------------------------------- report


def markdown(result: dict) -> str:
    meta = result["meta"]
    lines = [f"torch {meta['torch']}, {meta['threads']} intra-op threads "
             f"({meta['interop_threads']} inter-op), {meta['cpus']} CPUs, {meta['cpu']}; "
             f"mode `{meta['mode']}`, wall time {meta['wall_seconds']:.0f} s, 1-min load average "
             f"{meta['load_average_at_start']:.1f} at start, {meta['load_average_at_end']:.1f} at "
             f"end.", "",
             "| model | configuration | ms/step | × bare [IQR] | peak step MB (Δ bare, KB) |",
             "| --- | --- | ---: | ---: | ---: |"]
    for name, m in result["models"].items():
        for c, v in m["configs"].items():
            r = v["ratio"]
            lines.append(f"| {name} | {c} | {v['ms_per_step']['median']:.2f} | "
                         f"{r['median']:.3f} [{r['p25']:.3f}–{r['p75']:.3f}] | "
                         f"{v['peak_step_mb']:.2f} ({v['peak_step_mb_vs_bare'] * 1024:+.0f}) |")
    lines += ["", "| model | what | rounds × steps | params | tensors | layers | "
              "heap per record (per layer) |", "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, m in result["models"].items():
        lines.append(f"| {name} | {m['description']} | {m['rounds']} × {m['steps_per_round']} | "
                     f"{m['parameters']:,} | {m['param_tensors']} | {m['layers']} | "
                     f"{m['python_heap_bytes_per_record']:.0f} B "
                     f"({m['python_heap_bytes_per_record_per_layer']:.0f} B) |")
    lines += ["", "| model | target | measured | limit | met |", "| --- | --- | ---: | ---: | --- |"]
    for name, m in result["models"].items():
        for t in m["targets"]:
            lines.append(f"| {name} | {t['target']} | {t['value']:.3f} | {t['op']} {t['limit']} | "
                         f"{'yes' if t['met'] else '**no**'} |")
    s = result.get("scaling")
    if s:
        lines += ["", f"Scaling with the number of parameter tensors ({s['model']}); µs per call "
                  "of each on fixed gradients, and full-step ratios:", "",
                  "| tensors | bare ms/step | × bare: param | × bare: param+act | "
                  "step() µs (/tensor) | unrecorded step() µs (/tensor) | "
                  "clip_grad_norm_ µs (/tensor) | naive .item() µs (/tensor) |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in s["rows"]:
            cells = [f"{r[k + '_us']:.0f} ({r[k + '_us_per_tensor']:.2f})" for k in
                     ("gradwatch_step", "gradwatch_step_unrecorded", "clip_grad_norm_",
                      "naive_item")]
            lines.append(f"| {r['param_tensors']} | {r['bare_ms']:.2f} | "
                         f"{r['ratio_gw_param']:.3f} | {r['ratio_gw_param_act']:.3f} | "
                         + " | ".join(cells) + " |")
        fit = s["fit_us"]
        lines += ["", "Linear fits, µs = a + b·tensors: " + "; ".join(
            f"{k}: b = {f['slope']:.3f} µs/tensor, a = {f['intercept']:.0f} µs, R² = {f['r2']:.4f}"
            for k, f in fit.items()) + "."]
    nan = result.get("nan_check")
    if nan:
        lines += ["", f"NaN check ({nan['model']}): NaN injected into the gradient at the output of "
                  f"`{nan['injected_at_output_of']}`; gradwatch `first_nonfinite` = "
                  f"`{nan['gradwatch_first_nonfinite']}`; detect_anomaly: "
                  f"\"{nan['detect_anomaly_error']}\"."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="about 1-2 minutes, fewer rounds")
    mode.add_argument("--smoke", action="store_true",
                      help="seconds: a tiny model, two rounds (for the test suite; numbers are noise)")
    parser.add_argument("--out", default="overhead_results.json", type=out_file,
                        help="where to write the JSON")
    parser.add_argument("--models", type=name_list(chains=True),
                        help="comma-separated: mlp, resnet18, transformer, tiny")
    parser.add_argument("--deep-sizes", type=int_list,
                        help="comma-separated parameter-tensor counts ('' to skip)")
    parser.add_argument("--budget", type=seconds, help="seconds of timing per model")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch intra-op threads (default 1: on a shared 2-core machine, two "
                             "threads make a step wait on a descheduled thread, which swamps "
                             "the differences measured here)")
    args = parser.parse_args(argv)

    mode_name = "quick" if args.quick else "smoke" if args.smoke else "default"
    opts = dict(PRESETS[mode_name])
    if args.models is not None:
        opts["models"] = ",".join(args.models)
    if args.deep_sizes is not None:
        opts["sizes"] = ",".join(map(str, args.deep_sizes))
    if args.budget is not None:
        opts["budget"] = {name: args.budget for name in opts["budget"]}
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    result: dict = {"meta": {
        "torch": torch.__version__, "python": platform.python_version(),
        "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
        "cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
        "load_average_at_start": os.getloadavg()[0],
        "mode": mode_name, "options": opts,
        "method": "median over rounds; ratio = median over rounds of time/bare-time in the same "
                  "round; rounds interleave one block of each configuration in shuffled order",
    }, "models": {}}
    models = [m for m in opts["models"].split(",") if m]
    for name in models:
        print(f"[overhead] {name} ...", file=sys.stderr, flush=True)
        result["models"][name] = bench_model(make_workload(name), list(CONFIGS), opts)
    sizes = [int(s) for s in opts["sizes"].split(",") if s]
    if sizes:
        print(f"[overhead] deep chain {sizes} ...", file=sys.stderr, flush=True)
        result["scaling"] = bench_scaling(sizes, opts)
    nan_model = "mlp" if "mlp" in models else models[0] if models else None
    if nan_model is not None:
        result["nan_check"] = {"model": nan_model, **nan_check(make_workload(nan_model))}
    result["meta"]["wall_seconds"] = time.perf_counter() - start
    result["meta"]["load_average_at_end"] = os.getloadavg()[0]
    result["markdown"] = markdown(result)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(result["markdown"])
    return result


if __name__ == "__main__":
    main()
