"""Verdict rules, each declared once: the statistics it reads, when it holds, the status and
evidence it writes. `gradwatch.verdict.judge.Judge` runs them over a window of recorded steps.
Each rule is a few array expressions over the step's columns (`gradwatch.verdict.view`)."""

from __future__ import annotations

import math

import numpy as np

from ..record.records import Status
from .silent_rules import NoGradient, NotMoving, NotZeroed, UnusedOutput
from .unit_rules import DeadUnits, LossRising, Saturation, ThroughTime, ZeroGradient
from .depth import Trend, depth_trend, entering
from .view import REMEDIES, Hit, Mark, Rule, StepView, add_absolute, median, fmt3, has_signal, \
    signal

__all__ = ["StepView", "Hit", "Mark", "Rule", "RULES", "REMEDIES", "Trend", "depth_trend",
           "entering"]


class NonFinite(Rule):
    """NaN/Inf in the gradients (not an AMP overflow): reported at once, where it was born."""

    kind, status, persistent, reads = "nonfinite", Status.NONFINITE, False, ("norm", "act_norm")

    def check(self, view, th, state):
        if view.overflow or (view.origin is None and math.isfinite(view.total)):
            return None
        hit = Hit([], "")
        bad = np.flatnonzero(~np.isfinite(view.norms))
        hit.add(bad, "gradient norm {}", view.norms[bad])
        bad_act = np.flatnonzero(view.act_on & ~np.isfinite(view.act))
        hit.add(bad_act, "output-gradient norm {}", view.act[bad_act])
        count = len(hit.positions)
        origin = view.origin or "backward"
        hit.numbers = {"origin": {"forward": 0.0, "backward": 1.0, "loss": 2.0}[origin]}
        if math.isfinite(view.total):  # only the loss the user passed is non-finite
            hit.evidence = (f"step {view.step}: the loss is {view.loss} while every gradient "
                            f"is finite (total norm {fmt3(view.total)})")
            return hit
        where = {"forward": f"the input of `{view.birth}`, the first module given a floating "
                            f"input (the batch entering the model)" if view.already == "batch"
                 else f"the output of `{view.birth}` in the forward pass" + (
                     ", whose weights were already non-finite" if view.already else ""),
                 "backward": f"the backward pass at `{view.birth}`",
                 "loss": "the loss (the gradient entering the model)"}[origin]
        hit.evidence = (f"step {view.step}: gradients non-finite (total norm {view.total}); "
                        f"first non-finite value: {where}; {count} layer(s) affected")
        return hit


class AmpOverflow(Rule):
    """The loss scale overflows on every step of the window (an occasional overflow is normal)."""

    kind, reads = "amp_overflow", ("total_norm",)

    def check(self, view, th, state):
        return Hit([], f"AMP loss-scale overflow at step {view.step}") if view.overflow else None


class Divergence(Rule):
    """One optimizer step moved the weight layers by more than their own size (the update
    ratio is measured at the first 4 recorded steps, where a too-high learning rate shows,
    then at every 4th). When only the first update did, and later steps stay within the bound
    while the loss has fallen (`Thresholds.loss_falling`), the alarm becomes a note: an
    adaptive optimizer's first update is the learning rate times the gradient's sign in every
    entry (Adagrad, RMSprop, Adam), more than a wide layer's small initial weights at a large
    learning rate, once, in a run that trains. A large step later in the run stays an alarm,
    whatever the loss does (a net killed by one step at its fourth update, its loss "falling"
    from a start inflated by unnormalised inputs to chance level)."""

    kind, status, persistent, reads = "divergence", Status.DIVERGING, False, ("update_ratio",)
    optional = True

    def check(self, view, th, state):
        bound = th.divergence_update_ratio
        ratio = view.values.get("update_ratio")
        if bound is None or ratio is None:
            return None
        idx = np.flatnonzero(view.weight & np.isfinite(ratio))
        if not len(idx):
            return None
        med = median(ratio[idx])
        first, state["measured"] = not state.get("measured"), 1.0  # the first measured update?
        if med <= bound:
            curve = view.curve
            if state.get("alarmed") and not state.get("later") and th.loss_falling is not None \
                    and curve is not None and curve.fell(th.loss_falling) and not view.broken:
                state["alarmed"] = 0.0  # the run trains on: the alarm becomes a note
                return Hit([], f"median update/weight ratio {fmt3(state['worst'])} at its "
                               f"worst (> {bound:g}), {fmt3(med)} now",
                           {"update_ratio": state["worst"]},
                           note=f"the later steps stay within the bound and the loss fell "
                                f"(median {fmt3(curve.now)} over the last {th.window} recorded "
                                f"steps, from {fmt3(curve.start)}): one large first update in a "
                                f"run that trains, as an adaptive optimizer's")
            return None
        state["alarmed"], state["worst"] = 1.0, max(state.get("worst", 0.0), med)
        if not first:
            state["later"] = 1.0  # past the first update: an alarm for good
        over = idx[ratio[idx] > bound]
        return Hit([Mark(over, "update/weight ratio {:.3g} > " + f"{bound:g}", ratio[over])],
                   f"median update/weight ratio {fmt3(med)} over {len(idx)} weight layers "
                   f"(> {bound:g}; healthy training stays near 1e-3)", {"update_ratio": med})


class DepthVanishing(Rule):
    """The gradient shrinks across depth: every layer of the input-side third of the weight
    layers gets orders of magnitude less than the output-side third's median (on parameter or
    output gradients), or the gradient reaching the first layer does (`entering`: a gradient
    scaled down by every block on a path that skip connections do not bypass, while layers fed
    by those skips keep the input third's largest norm up), and the net is not escaping that
    state: a ratio that has grown `Thresholds.recovery`-fold since its lowest, or
    √recovery-fold within the window (LayerScale-style γ ≈ 0 at init, growing as it trains),
    is no verdict. Layers whose own gradient is below the absolute `Thresholds.vanishing`
    carry the status too. A step whose total norm is above `Thresholds.exploding` is no
    vanishing one, whatever the input side gets (1e19 against 1e29 on the way to a NaN). An
    alarm that stops holding while the loss falls becomes a note (`_cleared`)."""

    kind, status, reads = "vanishing", Status.VANISHING, ("norm", "act_norm")

    def check(self, view, th, state):
        bound = th.relative_vanishing
        if bound is None or view.head is None or not has_signal(view, th) or (
                view.total > th.exploding):
            return None
        found = None
        trends = [(t.what, t.starved, t.layers, t.rel) for t in depth_trend(view)]
        first = entering(view)
        if first is not None:
            out = next(t for t in depth_trend(view) if t.what == "output-gradient")
            trends.append(("entering gradient", first, out.layers, out.rel))
        for what, ratio, idx, rel in trends:  # each trend updates its memory
            lowest = state[what] = min(state.get(what, math.inf), ratio)
            recent = state.setdefault(f"{what}:recent", [])  # the last `window` ratios
            earlier = recent[0] if recent else ratio
            recent[:] = (recent + [ratio])[-th.window:]
            escaping = ratio >= th.recovery * lowest or ratio >= th.recovery ** 0.5 * earlier
            if found is None and ratio < bound and not escaping:
                kind = "output-gradient" if what == "entering gradient" else what
                low = rel < bound
                found = Hit([Mark(idx[low], kind + " norm {:.2g}x the output side's", rel[low])],
                            "", {"ratio": ratio})
                if what == "entering gradient":
                    head = int(np.flatnonzero(view.act_on)[0])
                    found.add(np.array([head]), "output-gradient norm {:.2g}x the output side's",
                              np.array([ratio]))
                    found.evidence = (f"the gradient reaching the first layer "
                                      f"(`{view.names[head]}`'s output gradient) is {ratio:.2g}x "
                                      f"the output side's median output gradient (bound "
                                      f"relative_vanishing={bound:g})")
                else:
                    found.evidence = (f"the input-side weight layers' largest {what} norm is "
                                      f"{ratio:.2g}x the output side's median (bound "
                                      f"relative_vanishing={bound:g})")
        hits = state.setdefault("hits", [])  # raw hits over the window, as the judge counts
        hits[:] = (hits + [float(found is not None)])[-th.window:]
        if found is not None:
            state["alarmed"] = max(state.get("alarmed", 0.0), float(sum(hits) >= th.persistence))
            state["clear"] = 0.0
            add_absolute(found, view, view.norms < th.vanishing, f"< vanishing {th.vanishing:g}")
            return found
        state["clear"] = state.get("clear", 0.0) + 1.0
        return _cleared(view, th, state) if trends else None


def _cleared(view, th, state) -> Hit | None:
    """A vanishing alarm whose condition has not held for `Thresholds.persistence` steps while
    the loss has fallen by `Thresholds.loss_falling` since the start: a transient of the
    initialisation (a fine-tune's first layers behind small-by-design dense layers, the ratio
    climbing through the bound), which becomes a note."""
    curve = view.curve
    if not state.get("alarmed") or state["clear"] < th.persistence or view.broken \
            or th.loss_falling is None or curve is None or not curve.fell(th.loss_falling):
        return None
    return Hit([], f"the input side's gradient is back within relative_vanishing="
                   f"{th.relative_vanishing:g} of the output side's for {state['clear']:.0f} "
                   f"recorded steps", {},
               note=f"it held on the first steps only and the loss fell since (median "
                    f"{fmt3(curve.now)} over the last {th.window} recorded steps, from "
                    f"{fmt3(curve.start)}): a transient of the initialisation, not a net that "
                    f"cannot learn")


class DepthExploding(Rule):
    """The gradient grows across depth (input side orders above the output side), or the total
    norm stays above the absolute bound, `Thresholds.exploding`. The absolute bound does not
    know the loss's scale: a loss multiplied by a constant or summed over many elements has
    gradients as many times larger (its cause says so); a falling loss does not tell that
    apart from an explosion (a ReLU RNN of spectral radius 3 explodes while its loss falls
    from 8.6e6 to 1e4)."""

    kind, status, reads = "exploding", Status.EXPLODING, ("norm", "act_norm", "total_norm")

    def check(self, view, th, state):
        bound = th.relative_exploding
        for what, _, ratio, idx, rel in (depth_trend(view) if bound is not None else []):
            if ratio > bound:
                high = rel > bound
                hit = Hit([Mark(idx[high], what + " norm {:.2g}x the output side's", rel[high])],
                          f"the input-side weight layers' median {what} norm is {ratio:.2g}x "
                          f"the output side's (bound relative_exploding={bound:g})",
                          {"ratio": ratio})
                add_absolute(hit, view, view.norms > th.exploding,
                             f"> exploding {th.exploding:g}")
                return hit
        if math.isfinite(view.total) and view.total > th.exploding:
            over = np.flatnonzero(view.norms > th.exploding)
            return Hit([Mark(over, "norm {:.3g} > exploding " + f"{th.exploding:g}",
                             view.norms[over])],
                       f"total gradient norm {fmt3(view.total)} > exploding {th.exploding:g}",
                       {"total": view.total})
        return None


class Stalled(Rule):
    """No gradient enters the model while the loss is still high: the loss is at least
    `Thresholds.stalled_loss` times the highest loss of the run, and the head's output gradient
    (or, unmeasured, its parameter gradient) is at most `Thresholds.stalled_gradient` times the
    loss (times 1 for a loss above 1): far below the rounding floor a converged net sits at
    (about 1e-7 of the loss in float32, even with a loss floor above 0 as under label
    smoothing), as when output units are saturated on wrong answers (a sigmoid output trained
    with squared error, probabilities clamped before a log: exactly 0) or the loss does not
    read the model's output. A huge loss on logits still gets an O(1) gradient: no stall. It
    needs the loss (``GradWatch.step(loss=...)`` or `GradWatch.note_loss`): without it a
    stalled net and a converged one look alike, since neither gets a gradient. Gradient that
    enters through another layer (a measured output gradient above the bound: the main head,
    when the head the forward order names is an auxiliary one whose loss is weighted 0) is no
    stall."""

    kind, status, reads, optional = "stalled", Status.VANISHING, ("loss",), True

    def check(self, view, th, state):
        loss, h = view.loss, view.head
        if th.stalled_loss is None or loss is None or h is None or not math.isfinite(loss):
            return None
        peak = state["peak"] = max(state.get("peak", loss), loss)
        if peak <= 0 or loss < th.stalled_loss * peak:
            return None
        value, what = signal(view)
        if not value <= th.stalled_gradient * min(loss, 1.0):
            return None
        acts = view.act[view.act_on & np.isfinite(view.act)]
        if acts.max(initial=0.0) > th.stalled_gradient * min(loss, 1.0):
            return None  # it enters elsewhere: the loss skips what ran last (a head weighted 0)
        return Hit([Mark(np.array([h]), what + " {:.3g} at loss " + fmt3(loss),
                         np.array([value]))],
                   f"no gradient enters the model: the head's {what} is {fmt3(value)} (at "
                   f"most stalled_gradient={th.stalled_gradient:g} x the loss) while the loss, "
                   f"{fmt3(loss)}, is {loss / peak:.2g}x the run's highest ({fmt3(peak)}; "
                   f"bound stalled_loss={th.stalled_loss:g})", {"loss": loss, "signal": value})


RULES: tuple[Rule, ...] = (NonFinite(), AmpOverflow(), Divergence(), DepthExploding(),
                           DepthVanishing(), Stalled(), ThroughTime(), DeadUnits(),
                           ZeroGradient(), NoGradient(), UnusedOutput(), NotZeroed(), NotMoving(),
                           Saturation(), LossRising())
"""Every verdict rule, most severe first: the first rule that gives a layer a status wins."""
