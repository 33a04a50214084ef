"""Verdict rules on units, zeros, the loss and time: dead and saturated units, exact-zero
gradients, a climbing loss, vanishing through time."""

from __future__ import annotations

import math

import numpy as np

from ..record.records import Status
from .depth import depth_trend
from .view import Hit, Mark, Rule, fmt3, grow, has_signal, median

__all__ = ["DeadUnits", "ZeroGradient", "LossRising", "Saturation", "ThroughTime"]


class DeadUnits(Rule):
    """Most units of a layer output exactly 0 after its ReLU for every input of the last
    measured steps (`gradwatch.capture.units.UNIT_WINDOW`: a unit silent on one small batch is
    not dead), and weight layers whose gradient is then exactly 0. A step with no layer of
    dead units is no hit, whatever gradients are 0 at it (a residual branch dropped by
    stochastic depth, an expert no token was routed to: `ZeroGradient` judges lasting zeros).

    A dead unit gets no gradient, so dying is absorbing: a layer whose dead share fell by a
    quarter or more within the rule's window (`REVIVED`; units came back as the layers before
    it trained, e.g. a squeeze-excitation layer all negative at init) is no verdict. Once the
    loss has fallen (`Thresholds.loss_falling`: its lowest median of `Thresholds.window`
    recorded steps against its start) the dead units do not hold the run back (a narrow
    bottleneck, features the task does not use): the hit is a note, until the median climbs
    back above where it was when they were first seen (and above the bound), so a noisy loss
    (mixup) whose median swings keeps its note. After `Thresholds.window` measured steps with
    dead units the loss must have fallen so since they were first seen, not only since the
    run's start: a net that dies once its loss reached chance level (a first loss inflated by
    unnormalised inputs) did not learn with them."""

    kind, status, reads, optional = "dead_units", Status.DEAD, ("dead_frac",), True
    REVIVED = 0.75

    def check(self, view, th, state):
        if th.dead_units is None:
            return None
        share = view.values.get("dead_frac")
        if share is None:
            return None
        on = np.flatnonzero(~np.isnan(share))
        recent = grow(state, "shares", view, math.nan, width=th.window)
        count = grow(state, "measured", view, 0.0)
        uid = view.uid[on]  # the last `window` measured shares of each layer, in a ring
        recent[uid, count[uid].astype(np.int64) % th.window] = share[on]
        count[uid] += 1
        peak = np.fmax.reduce(recent[uid], axis=1)
        dead = on[(share[on] >= th.dead_units) & (share[on] >= self.REVIVED * peak)]
        if not len(dead):
            return None
        hit = Hit([], "")
        hit.add(dead, "{:.0f}% of its units are dead", 100 * share[dead])
        zero = np.zeros(0, dtype=np.int64)
        if view.head is not None and view.norms[view.head] > 0:
            zero = np.flatnonzero((view.norms == 0) & view.weight)
            hit.add(zero, "gradient exactly 0")
        worst = float(share[dead].max())
        zero = np.setdiff1d(zero, dead)
        hit.evidence = (f"{len(dead)} layer(s) with at least {100 * th.dead_units:.0f}% dead "
                        f"units (worst {100 * worst:.0f}%)" + (
                            f"; {len(zero)} weight layer(s) with a gradient of exactly 0"
                            if len(zero) else ""))
        hit.numbers = {"dead_frac": worst}
        curve = view.curve
        if curve is not None and not state.get("since", math.nan) >= 0:
            state["since"] = curve.now if curve.ready else curve.first  # units first seen dead
        since, hits = state.get("since", math.nan), state.get("hits", 0.0) + 1
        state["hits"] = hits  # (the loss gets `window` measured steps to fall with them)
        if curve is not None and curve.ready:  # the lowest median since they were first seen
            state["low"] = min(state.get("low", math.inf), curve.now)
        low = state.get("low", math.nan)
        if th.loss_falling is not None and curve is not None and curve.ready \
                and curve.best <= th.loss_falling * min(curve.first, curve.start) \
                and (hits <= th.window or low <= th.loss_falling * since) \
                and not curve.now > max(since, th.loss_falling * min(curve.first, curve.start)):
            hit.note = (f"the loss falls meanwhile: median {fmt3(curve.now)} over the last "
                        f"{th.window} recorded steps, from {fmt3(since)} when dead units were "
                        f"first seen and {fmt3(curve.first)} at the first recorded step (bound "
                        f"loss_falling={th.loss_falling:g})")
        return hit


class ZeroGradient(Rule):
    """Weight layers whose gradient is exactly 0 on `Thresholds.zero_gradient` recorded steps
    in a row while a gradient enters the model: another layer's output gradient or parameter
    gradient is above 0. Exact zeros in some entries are normal (ReLU nets), a whole layer at 0
    step after step is not: two factors both initialised at 0 (LoRA's A and B) give each other
    a gradient of 0 forever, and float16 without loss scaling underflows the input side's to
    0. LoRA's A gets 0 at step 0 only (B starts at 0 by design), a zero-initialised head's
    inputs likewise: the streak is what tells them apart. A layer no backward pass of the step
    added to (its ``.grad`` zeroed in place, the layer unused: an auxiliary head on other steps)
    neither extends nor ends its streak. Dead ReLU units (`DeadUnits`) are left to their own
    rule."""

    kind, status, reads = "zero_gradient", Status.DEAD, ("norm",)

    def check(self, view, th, state):
        if th.zero_gradient is None:
            return None
        zero_now = view.norms[view.weight] == 0
        if not zero_now.any() and not state.get("active"):
            return None  # no streak to extend or end (the common step)
        streak = grow(state, "streak", view, 0.0)
        w = view.uid[view.weight]
        counted = np.where(zero_now, streak[w] + 1, 0.0)
        if view.idle is not None:  # not used in this step (a .grad zeroed in place): no news
            counted = np.where(view.idle[view.weight], streak[w], counted)
        streak[w] = counted
        state["active"] = float(streak.any())
        zero = np.flatnonzero(view.weight)[streak[w] >= th.zero_gradient]
        if not len(zero):
            return None
        acts = view.act[view.act_on & np.isfinite(view.act)]
        finite = np.isfinite(view.norms)
        others = view.norms[(view.norms > 0) & finite]
        value = float(max(acts.max(initial=0.0), others.max(initial=0.0)))
        if value < th.vanishing:
            return None  # nothing enters the model: a converged or stalled net
        dead = view.values.get("dead_frac")
        if th.dead_units is not None and dead is not None and (dead >= th.dead_units).any():
            state[":dead"] = 1.0  # dead ReLU units (measured on some steps) explain the zeros
        if state.get(":dead"):
            return None
        weights = int(view.weight.sum())
        every = len(zero) == weights and not len(others)
        smallest = float(others.min(initial=math.inf)) if len(others) else 0.0
        return Hit([Mark(zero, "gradient exactly 0 on {:.0f} recorded steps in a row",
                         streak[view.uid[zero]])],
                   f"{len(zero)} of {weights} weight layers get a gradient of exactly 0 "
                   f"(on at least zero_gradient={th.zero_gradient} recorded steps in a row) "
                   f"while gradient enters the model (largest output or parameter gradient "
                   f"{fmt3(value)}" + ("" if every else f", smallest nonzero layer gradient "
                                                       f"{fmt3(smallest)}") + ")",
                   {"zero_layers": float(len(zero)), "all": float(every), "signal": value})


class LossRising(Rule):
    """The loss climbs: its median over the last `Thresholds.window` recorded steps is at least
    `Thresholds.loss_rising` times its median over the first ones (the run is now worse than
    at its start). The median ignores minibatch noise; schedules (warm-up, cyclic learning
    rates) and healthy runs never end that far above where they started. It needs the loss
    (``GradWatch.step(loss=...)`` or `GradWatch.note_loss`) and a positive one (a loss that
    goes negative, as a log-likelihood may, has no ratio): the evidence names the total
    gradient norm and the update/weight ratio beside it. A rise the loss has since fallen back
    from (`Thresholds.loss_falling` below its start: a warm-up or a restart that began at a
    small loss, as a fine-tune does) becomes a note."""

    kind, reads, optional = "loss_rising", ("loss",), True

    def check(self, view, th, state):
        bound, curve = th.loss_rising, view.curve
        if bound is None or view.loss is None or not math.isfinite(view.loss) or curve is None:
            return None
        if math.isfinite(view.total):
            state.setdefault("total0", view.total)
        if not curve.ready:
            return None
        now, start, best = curve.now, curve.start, curve.best
        if not now >= bound * start:
            peak = state.get("peak")
            if peak is None or th.loss_falling is None or not curve.fell(th.loss_falling):
                return None
            return Hit([], f"the loss rose to {peak:.2g}x its first {th.window} steps' median "
                           f"({fmt3(start)}; bound loss_rising={bound:g}) and fell back: its "
                           f"median over the last {th.window} recorded steps is {fmt3(now)}, "
                           f"{now / start:.2g}x", {"loss": now, "start": start},
                       note=f"the loss is now below its start (bound "
                            f"loss_falling={th.loss_falling:g}): a warm-up or a restart that "
                            f"began at a small loss, not a run getting worse")
        state["peak"] = max(state.get("peak", 0.0), now / start)
        ratio = view.values.get("update_ratio")
        ratios = ratio[view.weight & np.isfinite(ratio)] if ratio is not None else ()
        update = (f", median update/weight ratio {fmt3(median((ratios)))}"
                  if len(ratios) else "")
        return Hit([], f"the loss climbs: its median over the last {th.window} recorded steps "
                       f"is {fmt3(now)}, {now / start:.2g}x its first {th.window} steps' "
                       f"({fmt3(start)}; bound loss_rising={bound:g}) and {now / best:.2g}x its "
                       f"best ({fmt3(best)}); total gradient norm {fmt3(view.total)} (at the "
                       f"start {fmt3(state['total0'])}){update}",
                   {"loss": now, "start": start, "total": view.total})


class Saturation(Rule):
    """Most outputs of a hidden saturating activation sit at its bounds, where its slope is ~0,
    and it costs the gradient: even the input side's largest gets less than 1e-2 of the output
    side's median (a net whose skip connections carry the gradient past saturated blocks is not
    held back by them; the output activation is meant to saturate on confident predictions).
    Without a depth trend (fewer than 3 weight layers, or layers run twice in one forward pass)
    that cost is not known, and the rule is quiet."""

    kind, status, reads, optional = "saturation", Status.SATURATED, ("sat_frac",), True

    def check(self, view, th, state):
        sat = view.values.get("sat_frac")
        if th.saturation is None or sat is None or view.head is None \
                or not has_signal(view, th):
            return None  # a converged net's outputs may sit at their bounds
        over = sat >= th.saturation
        over[view.head] = False
        idx = np.flatnonzero(over)
        trend = depth_trend(view)
        if not len(idx) or not trend or min(t.starved for t in trend) >= 1e-2:
            return None  # (no trend, as in a Siamese net: whether it costs is not known)
        worst = float(sat[idx].max())
        return Hit([Mark(idx, "{:.0f}% of its activations saturated", 100 * sat[idx])],
                   f"{len(idx)} layer(s) whose following sigmoid/tanh outputs are at least "
                   f"{100 * th.saturation:.0f}% saturated (worst {100 * worst:.0f}%)",
                   {"sat_frac": worst})


class ThroughTime(Rule):
    """The gradient reaching a recurrent module's first time step is orders below the one
    reaching the last step that gets any (the last one the loss reads). True of any LSTM/GRU read at its last state
    over 30 steps or more from initialisation on, and harmless when the task needs only recent
    steps: while the loss has fallen to `Thresholds.loss_falling` squared of its start (0.56:
    a task being learned, not a noisy loss dipping, as a net that cannot recall across the
    sequence still learns the targets' mean) it is a note."""

    kind, status, reads, optional = ("vanishing_through_time", Status.VANISHING,
                                     ("time_ratio",), True)

    def check(self, view, th, state):
        ratio = view.values.get("time_ratio")
        if th.time_vanishing is None or ratio is None:
            return None
        idx = np.flatnonzero(ratio < th.time_vanishing)
        if not len(idx):
            return None
        worst = float(ratio[idx].min())
        hit = Hit([Mark(idx, "first/last time-step gradient ratio {:.2g}", ratio[idx])],
                  f"the gradient reaching the first time step is {worst:.2g}x the one "
                  f"reaching the last (bound time_vanishing={th.time_vanishing:g})",
                  {"time_ratio": worst})
        curve = view.curve
        if th.loss_falling is not None and curve is not None \
                and curve.fell(th.loss_falling ** 2):
            hit.note = (f"the loss falls meanwhile: median {fmt3(curve.now)} over the last "
                        f"{th.window} recorded steps, from {fmt3(curve.first)} at the first "
                        f"(bound loss_falling²={th.loss_falling ** 2:.3g}): the task needs no "
                        f"memory that long")
        return hit
