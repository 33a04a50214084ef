"""The floor under gradwatch's default watch on the scaling chain: what any monitor that reads
the same numbers pays in plain torch, with nothing else.

On L blocks ``nn.Linear(16, 16)`` + tanh (batch 4, SGD, CPU, 1 thread), side by side in
interleaved rounds of 10 steps: the bare step; the naive ``.item()`` loop over the parameter
gradients; ``floor_params``: one ``torch._foreach_norm`` over the parameter gradients and one
host copy; ``floor_default``: that, plus a forward hook on each Linear registering a hook on its
output's autograd node, which hands the output gradient to the same single norm pass (the
output-gradient norms of the default watch). Median extra µs per layer over the bare step.

    python benchmarks/hook_floor.py            # L = 25 and 100
    python benchmarks/hook_floor.py 25 100 400
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from torch import nn

CONFIGS = ("bare", "naive", "floor_params", "floor_default")


def _build(depth: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*(nn.Sequential(nn.Linear(16, 16), nn.Tanh()) for _ in range(depth)))


def measure(depth: int, rounds: int = 40, per_round: int = 10) -> dict[str, float]:
    """Median extra µs per layer per step over the bare step, per configuration."""
    x = torch.randn(4, 16)
    held: list[torch.Tensor] = []

    def node_hook(grad_inputs, grad_outputs):
        held.append(grad_outputs[0])

    def forward_hook(module, args, out):
        out.grad_fn.register_hook(node_hook)

    setups = {}
    for name in CONFIGS:
        model = _build(depth)
        if name == "floor_default":
            for m in model.modules():
                if isinstance(m, nn.Linear):
                    m.register_forward_hook(forward_hook)
        setups[name] = (model, torch.optim.SGD(model.parameters(), lr=1e-3),
                        list(model.parameters()))

    def step(name: str) -> None:
        model, opt, params = setups[name]
        opt.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        if name == "naive":
            [p.grad.norm().item() for p in params]
        elif name.startswith("floor"):
            torch.stack(torch._foreach_norm([p.grad for p in params] + held)).tolist()
            held.clear()
        opt.step()

    times: dict[str, list[float]] = {name: [] for name in CONFIGS}
    for _ in range(rounds):
        for name in CONFIGS:
            start = time.perf_counter()
            for _ in range(per_round):
                step(name)
            times[name].append((time.perf_counter() - start) / per_round)
    bare = statistics.median(times["bare"])
    return {name: (statistics.median(t) - bare) / depth * 1e6 for name, t in times.items()}


def main(argv: list[str]) -> None:
    """Measures each depth in ``argv`` (default 25 and 100) and prints µs per layer per step."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _cli import positive_int

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("depths", nargs="*", type=positive_int,
                        help="chain depths (default 25 100)")
    depths = parser.parse_args(argv).depths or [25, 100]
    torch.set_num_threads(1)
    for depth in depths:
        extra = measure(depth)
        print(f"L = {depth}: " + ", ".join(f"{k} {v:.1f}" for k, v in extra.items()
                                            if k != "bare") + " µs per layer per step")


if __name__ == "__main__":
    main(sys.argv[1:])
