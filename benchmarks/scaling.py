"""Host cost per layer as depth grows: gradwatch against a bare step on L tiny blocks.

A stack of L blocks ``nn.Sequential(nn.Linear(16, 16), nn.Tanh())``, batch 4, plain SGD, on the
CPU: compute is negligible, so what remains is host (Python) time per layer, the regime of a
launch-bound GPU step. Configurations are interleaved step by step (`_measure.interleave`); the
figure reported is the median extra time per step over the bare step of the same round,
divided by L, with its interquartile range.

    python benchmarks/scaling.py                       # L = 25, 100, 400; about 3 minutes
    python benchmarks/scaling.py --depths 25,100 --budget 10 --out scaling.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _measure import interleave, summarise  # noqa: E402

from gradwatch import GradWatch  # noqa: E402

CONFIGS = ("bare", "naive", "foreach", "gw_params", "gw_default", "gw_every10", "gw_unrecorded")
"""What runs beside the bare step: the naive ``.item()`` loop, one foreach norm pass with one
host copy, and gradwatch without activations, by default, every 10th step, never recorded."""


def _step(config: str, depth: int) -> Callable[[], None]:
    torch.manual_seed(0)
    model = nn.Sequential(*(nn.Sequential(nn.Linear(16, 16), nn.Tanh()) for _ in range(depth)))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    params = list(model.parameters())
    options = {"gw_params": {"activations": False}, "gw_default": {},
               "gw_every10": {"every": 10}, "gw_unrecorded": {"every": 10 ** 9}}.get(config)
    watch = GradWatch(model, optimizer=opt, **options) if options is not None else None
    x = torch.randn(4, 16)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = model(x).square().mean()
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


def run(depth: int, budget: float) -> dict[str, dict[str, float]]:
    """Per configuration: median [p25, p75] extra microseconds per layer per step."""
    samples = interleave({c: _step(c, depth) for c in CONFIGS}, block=10, warmup=20,
                         min_rounds=5, max_rounds=200, budget_s=budget)
    out = {}
    for config, times in samples.items():
        extra = [(t - b) / depth * 1e6 for t, b in zip(times, samples["bare"])]
        out[config] = {**summarise(extra), "step_ms": summarise(times)["median"] * 1e3}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depths", default="25,100,400", help="comma-separated L (default 25,100,400)")
    p.add_argument("--budget", type=float, default=40.0, help="seconds of timed rounds per L")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", default=None, help="write the results to this JSON file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    depths = [int(d) for d in args.depths.split(",") if d]
    results = {}
    print("| added host time per layer per step (µs) | " + " | ".join(f"L = {d}" for d in depths)
          + " |")
    print("|---|" + "---|" * len(depths))
    for d in depths:
        results[d] = run(d, args.budget)
    for config in CONFIGS[1:]:
        cells = [f"{results[d][config]['median']:.1f} [{results[d][config]['p25']:.1f}–"
                 f"{results[d][config]['p75']:.1f}]" for d in depths]
        print(f"| {config} | " + " | ".join(cells) + " |")
    print("| bare step (ms) | " + " | ".join(f"{results[d]['bare']['step_ms']:.2f}"
                                              for d in depths) + " |")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"threads": args.threads, "load": os.getloadavg(), "results": results},
                      f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
