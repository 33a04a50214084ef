"""The peer table on a GPU: gradwatch vs the loops it replaces, and host syncs per step (<= 5 min).

Run ``python benchmarks/gpu.py [--budget 25] [--out gpu.json]`` on a machine with CUDA; without
one it says so and exits 0. The configurations and models are those of `peers.py`, on
``cuda``. A timed call is 10 training steps followed by one ``torch.cuda.synchronize()``, so a
monitor that makes the host wait for the device (``.item()``, a blocking copy) pays for the
queue it drains, and one that does not lets the CPU run ahead as a bare loop does. Calls are
interleaved (A B C ..., shuffled per slot) after warm-up; cells are medians over rounds of the
time of a call divided by the bare call's time in the same round, with the interquartile range.
The second table counts the synchronising CUDA calls of each configuration over 10 steps
(``torch.cuda.set_sync_debug_mode("warn")``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from typing import Any, Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from peers import PEERS, HEADERS, markdown, run_models  # noqa: E402
from _cli import name_list, out_file, positive_float  # noqa: E402

__all__ = ["count_syncs", "main"]

STEPS_PER_CALL = 10


def _grouped(device: str) -> Callable[[Callable[[], None]], Callable[[], None]]:
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def group(step: Callable[[], None]) -> Callable[[], None]:
        def call() -> None:
            for _ in range(STEPS_PER_CALL):
                step()
            sync()

        return call

    return group


def count_syncs(step: Callable[[], None]) -> dict[str, Any]:
    """Synchronising CUDA calls made by ``STEPS_PER_CALL`` calls of ``step``."""
    if not torch.cuda.is_available():
        return {"syncs_per_10_steps": None}
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(STEPS_PER_CALL):
                step()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    torch.cuda.synchronize()
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    return {"syncs_per_10_steps": len(syncs),
            "first_sync": None if not syncs else f"{syncs[0].filename}:{syncs[0].lineno}"}


def sync_table(result: dict[str, Any]) -> str:
    configs = [c for c in PEERS if any(c in m["configs"] for m in result["models"].values())]
    lines = ["| model | " + " | ".join(HEADERS.get(c, "bare") for c in configs) + " |",
             "|---|" + "---:|" * len(configs)]
    for name, m in result["models"].items():
        counts = [m["configs"][c].get("probe", {}).get("syncs_per_10_steps")
                  if c in m["configs"] else None for c in configs]
        cells = ["–" if n is None else str(n) for n in counts]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=positive_float, default=25.0,
                        help="seconds of timed rounds per model (25; three models)")
    parser.add_argument("--models", default="mlp,resnet18,transformer", type=name_list())
    parser.add_argument("--device", default="cuda",
                        help="cuda (default), or cpu to try the script without a GPU")
    parser.add_argument("--out", type=out_file, default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      "results", "gpu.json"))
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("benchmarks/gpu.py: skipped, no CUDA device (torch.cuda.is_available() is False "
              f"with torch {torch.__version__}); nothing was measured.")
        return 0
    name = (torch.cuda.get_device_name(args.device) if args.device.startswith("cuda")
            else "CPU (dry run)")
    opts = dict(warmup=2, min_rounds=5, max_rounds=200,
                budget=dict.fromkeys(args.models, args.budget))
    start = time.perf_counter()
    result = run_models(args.models, list(PEERS), opts, device=args.device,
                        group=_grouped(args.device), block=1, steps_per_call=STEPS_PER_CALL,
                        probe=count_syncs)
    wall = time.perf_counter() - start
    result["meta"] = {
        "device": name, "torch": torch.__version__, "cuda": torch.version.cuda,
        "wall_seconds": wall,
        "method": (f"{name}, torch {torch.__version__}; each configuration on its own model "
                   f"copy; a timed call is {STEPS_PER_CALL} steps + one synchronize; calls "
                   f"interleaved in an order shuffled per slot after {opts['warmup']} warm-up "
                   f"calls each; cells: median over rounds of (time / bare time in the same "
                   f"round) [interquartile range]; wall time {wall:.0f} s"),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    print(markdown(result))
    print(f"\nSynchronising CUDA calls in {STEPS_PER_CALL} steps (set_sync_debug_mode('warn')):\n")
    print(sync_table(result))
    print(f"\nwrote {args.out} ({wall:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
