"""What each part of gradwatch's default costs on the seeds' MLP: the full watch against the
same watch with one part switched off, side by side in one interleaved run.

Run ``python benchmarks/ablation.py [--budget 40]`` (1 torch thread). Parts are switched off by
replacing one internal call on that watch's own objects (this is a measurement script, not an
API): the update-ratio tracker, the verdict rules, the forward NaN check of non-elementwise
modules, the input-gradient hooks, the dead/saturated-unit reductions.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _measure import interleave, paired_ratios, summarise  # noqa: E402
from _workloads import make_workload  # noqa: E402
from _cli import seconds  # noqa: E402

from gradwatch import GradWatch  # noqa: E402


def _no_updates(w: GradWatch) -> None:
    w._watched.updates = None


def _no_rules(w: GradWatch) -> None:
    w._recorder.judge.rules = ()


def _no_forward_check(w: GradWatch) -> None:
    c = w._watched.collector
    c.elementwise = [True] * len(c.elementwise)


def _no_input_hooks(w: GradWatch) -> None:
    c = w._watched.collector
    hook = c._hook_grad
    c._hook_grad = lambda t, layer, out: hook(t, layer, out) if out else None


def _no_units(w: GradWatch) -> None:
    w._watched.collector._unit_stats = lambda *args: None


CONFIGS = {
    "bare": (None, None), "params": ({"activations": False}, None),
    "params - update ratio": ({"activations": False}, _no_updates),
    "params - rules": ({"activations": False}, _no_rules),
    "default": ({}, None), "default - update ratio": ({}, _no_updates),
    "default - rules": ({}, _no_rules), "default - forward NaN check": ({}, _no_forward_check),
    "default - input-gradient hooks": ({}, _no_input_hooks),
    "default - unit statistics": ({}, _no_units),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=seconds, default=40.0,
                        help="seconds of timed rounds (default 40)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    workload = make_workload("mlp")
    fns, watches = {}, []
    for name, (kw, switch_off) in CONFIGS.items():
        model = workload.build()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        watch = GradWatch(model, optimizer=opt, **kw) if kw is not None else None
        if switch_off is not None:
            switch_off(watch)
        x, y = workload.inputs

        def step(model=model, opt=opt, x=x, y=y) -> None:
            opt.zero_grad(set_to_none=True)
            workload.loss(model(x), y).backward()
            opt.step()

        fns[name] = step
        watches.append(watch)
    samples = interleave(fns, block=10, warmup=5, min_rounds=8, max_rounds=400,
                         budget_s=args.budget)
    ratios = paired_ratios(samples, "bare")
    print(f"{workload.description}; 1 thread; load {os.getloadavg()[0]:.1f}")
    print("| configuration | ratio to the bare step |\n|---|---|")
    for name in CONFIGS:
        s = summarise(ratios[name])
        print(f"| {name} | {s['median']:.3f} ({s['p25']:.3f}–{s['p75']:.3f}) |")
    for watch in watches:
        if watch is not None:
            watch.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
