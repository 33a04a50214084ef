"""How many of the last steps of a cosine schedule that decays to 0 move no weight: the
measurement behind `Thresholds.not_moving` (a streak after the weights moved is a note).

A 3-layer ReLU MLP (8-32-32-4, batch 16, random data) trains 300 steps at the base learning
rate, then runs the last ``--tail`` steps of a cosine schedule of ``--total`` steps (eta_min 0)
under the default watch. It prints the longest streak of measured update ratios (every 4th
recorded step) on which every layer's ratio was exactly 0, in measured and recorded steps, and
the findings and notes.

    python benchmarks/schedule_tail.py                       # Adam 1e-3 and SGD 0.1 (momentum 0.9), 10^4 to 10^6 steps
    python benchmarks/schedule_tail.py --totals 1000000 --optimizers adam
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gradwatch import GradWatch  # noqa: E402
from gradwatch.capture.units import UNIT_EVERY  # noqa: E402

BASE = {"adam": 1e-3, "sgd": 0.1}


def tail_streak(optimizer: str, total: int, tail: int) -> tuple[int, list[str], list[str]]:
    """(longest still streak in measured steps, finding kinds, note kinds)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                          nn.Linear(32, 4))
    lr0 = BASE[optimizer]
    opt = (torch.optim.Adam(model.parameters(), lr=lr0) if optimizer == "adam" else
           torch.optim.SGD(model.parameters(), lr=lr0, momentum=0.9))
    g = torch.Generator().manual_seed(1)

    def step() -> None:
        x, y = torch.randn(16, 8, generator=g), torch.randint(0, 4, (16,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(300):  # trained weights and optimizer state
        step()
    still, longest = 0, 0
    with GradWatch(model, optimizer=opt) as watch:
        for k in range(min(tail, total), 0, -1):
            for group in opt.param_groups:
                group["lr"] = lr0 * (1 + math.cos(math.pi * (total - k) / total)) / 2
            step()
            rec = watch.history[-1]
            ratios = [s.values["update_ratio"] for s in rec.layers.values()
                      if "update_ratio" in s.values]
            if ratios:
                still = still + 1 if not any(ratios) else 0
                longest = max(longest, still)
        return longest, [f.kind for f in watch.diagnose()], [f.kind for f in watch.notes()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--totals", type=int, nargs="+", default=[10_000, 100_000, 1_000_000],
                        help="schedule lengths (default 10^4 10^5 10^6)")
    parser.add_argument("--optimizers", nargs="+", default=["adam", "sgd"], choices=list(BASE))
    parser.add_argument("--tail", type=int, default=400, help="last steps run (default 400)")
    args = parser.parse_args(argv)
    if args.tail < 1 or min(args.totals) < 1:
        parser.error(f"--tail and --totals must be >= 1, got tail={args.tail}, "
                     f"totals={args.totals}")
    print("| optimizer | schedule steps | longest still streak (measured / recorded steps) "
          "| findings | notes |\n| --- | --- | --- | --- | --- |")
    for name in args.optimizers:
        for total in args.totals:
            longest, found, notes = tail_streak(name, total, args.tail)
            recorded = (longest - 1) * UNIT_EVERY + 1 if longest else 0
            print(f"| {name} {BASE[name]:g} | {total:,} | {longest} / {recorded} | "
                  f"{', '.join(found) or '-'} | {', '.join(notes) or '-'} |", flush=True)


if __name__ == "__main__":
    main()
