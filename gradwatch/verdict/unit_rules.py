"""Verdict rules on units, zeros, the loss and time: dead and saturated units, exact-zero gradients, a climbing loss, vanishing through time."""

from __future__ import annotations

import math
import statistics
from ..record.records import Status
from .view import Hit, Rule, _fmt, _has_signal, depth_trend

__all__ = ['DeadUnits', 'ZeroGradient', 'LossRising', 'Saturation', 'ThroughTime']


class DeadUnits(Rule):
    """Most units of a layer output exactly 0 after its ReLU for the whole batch (on the steps
    dead units are measured), and weight layers whose gradient is then exactly 0.

    A dead unit gets no gradient, so dying is absorbing: a layer whose dead share fell by a
    quarter or more within the window (`REVIVED`; units came back as the layers before it
    trained, e.g. a squeeze-excitation layer all negative at init) is no verdict."""

    kind, status, reads, optional = "dead_units", Status.DEAD, ("dead_frac",), True
    REVIVED = 0.75

    def check(self, view, th, state):
        if th.dead_units is None:
            return None
        hits = {}
        for i, v in enumerate(view.values):
            share = v.get("dead_frac")
            if share is None:
                continue
            recent = state.setdefault(view.names[i], [])  # the last `window` measured shares
            recent[:] = (recent + [share])[-th.window:]
            if share >= th.dead_units and share >= self.REVIVED * max(recent):
                hits[i] = f"{100 * share:.0f}% of its units are dead"
        head_ok = view.head is not None and view.norms[view.head] > 0
        hits.update({i: "gradient exactly 0" for i, n in enumerate(view.norms)
                     if n == 0 and head_ok and view.roles[i] == "weight" and i not in hits})
        if not hits:
            return None
        worst = max((view.values[i].get("dead_frac") or 1.0) for i in hits)
        return Hit(hits, f"{len(hits)} layer(s) with at least {100 * th.dead_units:.0f}% dead "
                         f"units (worst {100 * worst:.0f}%)", {"dead_frac": worst})


class ZeroGradient(Rule):
    """Weight layers whose gradient is exactly 0 on `Thresholds.zero_gradient` recorded steps
    in a row while a gradient enters the model: another layer's output gradient or parameter
    gradient is above 0. Exact zeros in some entries are normal (ReLU nets), a whole layer at 0
    step after step is not: two factors both initialised at 0 (LoRA's A and B) give each other
    a gradient of 0 forever, and float16 without loss scaling underflows the input side's to
    0. LoRA's A gets 0 at step 0 only (B starts at 0 by design), a zero-initialised head's
    inputs likewise: the streak is what tells them apart. Dead ReLU units (`DeadUnits`) are
    left to their own rule."""

    kind, status, reads = "zero_gradient", Status.DEAD, ("norm",)

    def check(self, view, th, state):
        if th.zero_gradient is None:
            return None
        streaks = {}
        for i, n in enumerate(view.norms):
            if view.roles[i] == "weight":
                streaks[i] = state[view.names[i]] = state.get(view.names[i], 0) + 1 if n == 0 \
                    else 0
        zero = [i for i, k in streaks.items() if k >= th.zero_gradient]
        if not zero:
            return None
        acts = [a for a in view.act if a is not None and math.isfinite(a)]
        others = [n for i, n in enumerate(view.norms) if n > 0 and math.isfinite(n)]
        signal = max(acts + others, default=0.0)
        if signal < th.vanishing:
            return None  # nothing enters the model: a converged or stalled net
        if th.dead_units is not None and any(
                (v.get("dead_frac") or 0.0) >= th.dead_units for v in view.values):
            state[":dead"] = 1.0  # dead ReLU units (measured on some steps) explain the zeros
        if state.get(":dead"):
            return None
        weights = len(streaks)
        every = len(zero) == weights and not others
        smallest = min(others, default=0.0)
        return Hit({i: f"gradient exactly 0 on {int(streaks[i])} recorded steps in a row"
                    for i in zero},
                   f"{len(zero)} of {weights} weight layers get a gradient of exactly 0 "
                   f"(on at least zero_gradient={th.zero_gradient} recorded steps in a row) "
                   f"while gradient enters the model (largest output or parameter gradient "
                   f"{_fmt(signal)}" + ("" if every else f", smallest nonzero layer gradient "
                                                        f"{_fmt(smallest)}") + ")",
                   {"zero_layers": float(len(zero)), "all": float(every),
                    "signal": signal})


class LossRising(Rule):
    """The loss climbs: its median over the last `Thresholds.window` recorded steps is at least
    `Thresholds.loss_rising` times its median over the first ones (the run is now worse than
    at its start). The median ignores minibatch noise; schedules (warm-up, cyclic learning
    rates) and healthy runs never end that far above where they started. It needs the loss
    (``GradWatch.step(loss=...)`` or `GradWatch.note_loss`) and a positive one (a loss that
    goes negative, as a log-likelihood may, has no ratio): the evidence names the total
    gradient norm and the update/weight ratio beside it."""

    kind, reads, optional = "loss_rising", ("loss",), True

    def check(self, view, th, state):
        bound, loss = th.loss_rising, view.loss
        if bound is None or loss is None or not math.isfinite(loss):
            return None
        if loss <= 0:
            state["off"] = 1.0
        recent = state.setdefault("recent", [])
        recent[:] = (recent + [loss])[-th.window:]
        if math.isfinite(view.total):
            state.setdefault("total0", view.total)
        if len(recent) < th.window or state.get("off"):
            return None
        now = statistics.median(recent)
        start = state.setdefault("start", now)
        best = state["best"] = min(state.get("best", now), now)
        if not now >= bound * start:
            return None
        ratios = [v.get("update_ratio") for v, r in zip(view.values, view.roles)
                  if r == "weight"]
        ratios = [r for r in ratios if r is not None and math.isfinite(r)]
        update = (f", median update/weight ratio {_fmt(statistics.median(ratios))}"
                  if ratios else "")
        return Hit({}, f"the loss climbs: its median over the last {th.window} recorded steps "
                       f"is {_fmt(now)}, {now / start:.2g}x its first {th.window} steps' "
                       f"({_fmt(start)}; bound loss_rising={bound:g}) and {now / best:.2g}x its "
                       f"best ({_fmt(best)}); total gradient norm {_fmt(view.total)} (at the "
                       f"start {_fmt(state['total0'])}){update}",
                   {"loss": now, "start": start, "total": view.total})


class Saturation(Rule):
    """Most outputs of a hidden saturating activation sit at its bounds, where its slope is ~0,
    and it costs the gradient: even the input side's largest gets less than 1e-2 of the output
    side's median (a net whose skip connections carry the gradient past saturated blocks is not
    held back by them; the output activation is meant to saturate on confident predictions)."""

    kind, status, reads, optional = "saturation", Status.SATURATED, ("sat_frac",), True

    def check(self, view, th, state):
        if th.saturation is None or view.head is None or not _has_signal(view, th):
            return None  # a converged net's outputs may sit at their bounds
        hits = {i: f"{100 * v['sat_frac']:.0f}% of its activations saturated"
                for i, v in enumerate(view.values)
                if (v.get("sat_frac") or 0.0) >= th.saturation and i != view.head}
        trend = depth_trend(view)
        if not hits or (trend and min(t.starved for t in trend) >= 1e-2):
            return None
        worst = max(view.values[i]["sat_frac"] for i in hits)
        return Hit(hits, f"{len(hits)} layer(s) whose following sigmoid/tanh outputs are at "
                         f"least {100 * th.saturation:.0f}% saturated (worst {100 * worst:.0f}%)",
                   {"sat_frac": worst})


class ThroughTime(Rule):
    """The gradient reaching a recurrent module's first time step is orders below the last's."""

    kind, status, reads, optional = ("vanishing_through_time", Status.VANISHING,
                                     ("time_ratio",), True)

    def check(self, view, th, state):
        if th.time_vanishing is None:
            return None
        hits = {i: f"first/last time-step gradient ratio {v['time_ratio']:.2g}"
                for i, v in enumerate(view.values)
                if v.get("time_ratio") is not None and v["time_ratio"] < th.time_vanishing}
        if not hits:
            return None
        worst = min(view.values[i]["time_ratio"] for i in hits)
        return Hit(hits, f"the gradient reaching the first time step is {worst:.2g}x the one "
                         f"reaching the last (bound time_vanishing={th.time_vanishing:g})",
                   {"time_ratio": worst})
