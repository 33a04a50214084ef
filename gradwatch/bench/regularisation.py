"""Weight regularisation (an L2 penalty) as a remedy for exploding gradients (seed 002's Q&A).

The exploding case is the Keras tutorial's deep linear MLP without clipping (`linear`): its
weights grow until loss and gradients blow up. The same runs, same seeds, with an L2 penalty
``(λ/2)·‖W‖²`` on every kernel (``weight_decay=λ`` in Adam, coupled as Keras' ``l2``
regulariser is, not AdamW's decoupled decay).
"""

from __future__ import annotations

from .common import Claim, Context, ExperimentResult, decide, spread
from .linear import describe, linear_runs
from .mnist import FULL_EPOCH, label_run, runs_budget, verdicts

__all__ = ["WEIGHT_DECAY", "run_regularisation"]

WEIGHT_DECAY = 0.02
"""λ of the L2 penalty: Keras' default ``regularizers.l2()`` (0.01·Σw², gradient 0.02·w), as
PyTorch's ``weight_decay``."""


def run_regularisation(ctx: Context) -> ExperimentResult:
    """The deep linear MLP without clipping, with and without an L2 penalty."""
    res = ExperimentResult("regularisation",
                           "Weight regularisation: an L2 penalty on the exploding deep linear MLP")
    base = linear_runs(ctx, "no clip")
    reg = linear_runs(ctx, "no clip", weight_decay=WEIGHT_DECAY)
    d0, d1 = describe(base), describe(reg)
    res.data["no penalty"] = d0
    res.data[f"L2 {WEIGHT_DECAY:g}"] = d1 | {"runs": [r.to_dict() for r in reg]}
    long_enough = all(r.steps >= 5 * 1875 and r.images >= FULL_EPOCH for r in reg)
    stable = [s is None for s in d1["blowup_step"]]
    for r, s in zip(reg, d1["blowup_step"]):
        label_run(res, r, "healthy", s is None and r.test_acc > 0.8,
                  f"no blow-up, test accuracy {r.test_acc:.1%}" if s is None
                  else f"blew up at step {s}")
    base_blew = sum(s is not None for s in d0["blowup_step"])
    res.claims.append(Claim(
        claim="Weight regularisation (an L2 penalty keeping weights small) prevents exploding "
              "gradients",
        source="exploding gradients are fixed by clipping, weight regularisation and proper "
               "initialisation (Q&A, seed 002)",
        measured=f"with L2 λ={WEIGHT_DECAY:g}: blow-ups {len(stable) - sum(stable)}/{len(stable)} "
                 f"(without: {base_blew}/{len(base)}); final weight norm "
                 f"{spread(d1['weight_norm'], '.3g')} vs {spread(d0['weight_norm'], '.3g')}; "
                 f"test {spread(d1['test_acc'], '.1%')} vs {spread(d0['test_acc'], '.1%')}",
        reproduced=decide(stable, decidable=(long_enough and base_blew > 0) or not all(stable)),
        verdict=verdicts(reg), seeds=len(reg), behaved=sum(stable),
        spread=spread(d1["test_acc"], ".1%"), budget=runs_budget(reg)))
    if base_blew == 0:
        res.notes.append("The unpenalised runs did not blow up within this budget, so the remedy "
                         "cannot be judged: undecided.")
    res.notes.append(f"Same model, data order and seeds as the unclipped deep linear runs "
                     f"(shared with `deep_linear` when both run); λ = {WEIGHT_DECAY:g} on every "
                     f"kernel (biases not penalised, as Keras' kernel_regularizer); {len(reg)} "
                     f"seed(s)" + ("; this budget allows no second one." if len(reg) == 1 else "."))
    return res
