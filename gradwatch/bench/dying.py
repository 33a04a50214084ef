"""The dying-ReLU problem (seed 004) and whether gradwatch names the dead units.

The small ReLU MLP of `lr` (784-256 + 3×256, He init) trained with Adam: at lr 1e-3 it learns;
at lr 0.1 the first large updates push pre-activations below zero for every input, those units
output 0 and get no gradient again, and the net stops learning. A unit counts as dead when its
pre-activation is ≤ 0 on every one of 1,000 test images (measured here with plain torch).
"""

from __future__ import annotations

import torch
from torch import nn

from .common import Claim, Context, ExperimentResult, decide, spread
from .lr import small_mnist_run
from .mnist import label_run, runs_budget, verdicts
from .rnn import ENOUGH_STEPS
from .train import TrainRun

__all__ = ["dead_shares", "named_dead", "run_dying_relu", "DEAD_LAYER"]

DEAD_LAYER = 0.5  # a layer "has died" when at least half of its units are dead


@torch.no_grad()
def dead_shares(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Per dense layer feeding a ReLU (all but the last): the share of units dead on ``x``."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)][:-1]
    outs: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_hook(lambda mod, i, o, n=n: outs.__setitem__(n, o))
               for n, m in linears]
    try:
        model.eval()
        model(x)
    finally:
        for h in handles:
            h.remove()
    return {n: float((outs[n].amax(0) <= 0).double().mean()) for n, _ in linears}


def _unit(name: str) -> str:
    """The block a gradwatch layer name belongs to: ``hidden.2.act`` and ``hidden.2.linear`` are
    ``hidden.2``; ``input_act`` is ``input`` (DeepMLP's own naming)."""
    for suffix in (".linear", ".act", ".bn", "_act", "_bn"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def named_dead(run: TrainRun) -> set[str]:
    """The blocks gradwatch names as dead: the layers of its ``dead_units`` findings."""
    return {_unit(l) for f in run.findings if f["kind"] == "dead_units" for l in f["layers"]}


def run_dying_relu(ctx: Context) -> ExperimentResult:
    """Adam at lr 1e-3 and 0.1, ``seeds`` seeds each."""
    res = ExperimentResult("dying_relu", "Dying ReLU: Adam lr 1e-3 vs 0.1 on a ReLU MLP")
    seeds = list(range(ctx.budget.seeds))
    probe = ctx.mnist().test_x[:1000]
    rows: dict[str, list[dict]] = {}
    runs: dict[float, list[TrainRun]] = {}
    for lr in (1e-3, 0.1):
        runs[lr] = [small_mnist_run(f"Adam lr {lr:g} seed {s}", ctx, s, lr=lr, keep_model=True)
                    for s in seeds]
        for r in runs[lr]:
            shares = dead_shares(r.model, probe)
            named = named_dead(r)
            dead = {_unit(n) for n, v in shares.items() if v >= DEAD_LAYER}
            rows.setdefault(f"lr {lr:g}", []).append(
                r.to_dict() | {"dead_shares": shares, "dead_layers": sorted(dead),
                               "gradwatch_named": sorted(named),
                               "final_loss": r.losses[-1]})
            r.model = None
    res.data.update(rows)
    died = [bool(x["dead_layers"]) and x["final_loss"] > 2.0 for x in rows["lr 0.1"]]
    for r, x, ok in zip(runs[0.1], rows["lr 0.1"], died):
        label_run(res, r, "pathological", ok, f"dead layers {x['dead_layers']}, final loss "
                  f"{x['final_loss']:.2f}")
    for r, x in zip(runs[1e-3], rows["lr 0.001"]):
        label_run(res, r, "healthy", not x["dead_layers"] and x["final_loss"] < 0.5,
                  f"no layer with ≥ {DEAD_LAYER:.0%} dead units, final loss {x['final_loss']:.2f}")
    top = [max(x["dead_shares"].values()) for x in rows["lr 0.1"]]
    calm = [max(x["dead_shares"].values()) for x in rows["lr 0.001"]]
    res.claims.append(Claim(
        claim="ReLU units can die: after large updates most units of a layer output 0 for every "
              "input and the net stops learning",
        source="\"ReLU can introduce the dying ReLU problem\" (seed 004)",
        measured=f"lr 0.1: largest dead share per run {spread(top, '.0%')}, final loss "
                 f"{spread([x['final_loss'] for x in rows['lr 0.1']], '.2f')}; lr 1e-3: "
                 f"{spread(calm, '.0%')}, final loss "
                 f"{spread([x['final_loss'] for x in rows['lr 0.001']], '.2f')}",
        reproduced=decide(died, decidable=any(died) or ctx.budget.small_steps >= ENOUGH_STEPS),
        verdict=verdicts(runs[0.1]), seeds=len(died),
        behaved=sum(died), spread=spread(top, ".0%"), budget=runs_budget(runs[0.1])))
    named = [x["gradwatch_named"] for x in rows["lr 0.1"] + rows["lr 0.001"]]
    truth = [set(x["dead_layers"]) for x in rows["lr 0.1"] + rows["lr 0.001"]]
    match = [set(n) == t for n, t in zip(named, truth)]
    res.claims.append(Claim(
        claim="gradwatch names the dead units (the layers whose units died)",
        source="gradwatch's dead_units finding",
        measured=(f"named = measured dead layers in {sum(match)}/{len(match)} runs "
                  f"(dead_units findings); seed 0 at lr 0.1: named "
                  f"{rows['lr 0.1'][0]['gradwatch_named']}, measured {rows['lr 0.1'][0]['dead_layers']}"),
        reproduced=decide(match), verdict=verdicts(runs[0.1]),
        seeds=len(match), behaved=sum(match), budget=runs_budget(runs[0.1] + runs[1e-3])))
    res.notes.append(f"Dead unit: pre-activation ≤ 0 on all 1,000 probe test images (plain "
                     f"torch, after training); a layer has died at ≥ {DEAD_LAYER:.0%} dead units. "
                     f"gradwatch's names are compared block by block (hidden.2.act and "
                     f"hidden.2.linear are the block hidden.2).")
    return res
