"""Verdict rules, each declared once: the statistics it reads, when it holds, the status and
evidence it writes. `gradwatch.verdict.judge.Judge` runs them over a window of recorded steps."""

from __future__ import annotations

import math
import statistics

from ..record.records import Status
from .unit_rules import DeadUnits, LossRising, Saturation, ThroughTime, ZeroGradient
from .view import REMEDIES, Hit, Rule, StepView, Trend, _add_absolute, _fmt, _has_signal, \
    _signal, depth_trend, entering

__all__ = ["StepView", "Hit", "Rule", "RULES", "REMEDIES", "Trend", "depth_trend", "entering"]


class NonFinite(Rule):
    """NaN/Inf in the gradients (not an AMP overflow): reported at once, where it was born."""

    kind, status, persistent, reads = "nonfinite", Status.NONFINITE, False, ("norm", "act_norm")

    def check(self, view, th, state):
        if view.overflow or (view.origin is None and math.isfinite(view.total)):
            return None
        bad = {i: f"gradient norm {view.norms[i]}" for i, n in enumerate(view.norms)
               if not math.isfinite(n)}
        bad.update({i: f"output-gradient norm {a}" for i, a in enumerate(view.act)
                    if a is not None and not math.isfinite(a) and i not in bad})
        origin = view.origin or "backward"
        numbers = {"origin": {"forward": 0.0, "backward": 1.0, "loss": 2.0}[origin]}
        if math.isfinite(view.total):  # only the loss the user passed is non-finite
            return Hit(bad, f"step {view.step}: the loss is {view.loss} while every gradient "
                            f"is finite (total norm {_fmt(view.total)})", numbers)
        where = {"forward": f"the output of `{view.birth}` in the forward pass",
                 "backward": f"the backward pass at `{view.birth}`",
                 "loss": "the loss (the gradient entering the model)"}[origin]
        return Hit(bad, f"step {view.step}: gradients non-finite (total norm {view.total}); "
                        f"first non-finite value: {where}; {len(bad)} layer(s) affected",
                   numbers)


class AmpOverflow(Rule):
    """The loss scale overflows on every step of the window (an occasional overflow is normal)."""

    kind, reads = "amp_overflow", ("total_norm",)

    def check(self, view, th, state):
        return Hit({}, f"AMP loss-scale overflow at step {view.step}") if view.overflow else None


class Divergence(Rule):
    """One optimizer step moved the weight layers by more than their own size."""

    kind, status, persistent, reads = "divergence", Status.DIVERGING, False, ("update_ratio",)
    optional = True

    def check(self, view, th, state):
        bound = th.divergence_update_ratio
        if bound is None:
            return None
        ratios = {i: v.get("update_ratio") for i, v in enumerate(view.values)
                  if view.roles[i] == "weight"}
        ratios = {i: r for i, r in ratios.items() if r is not None and math.isfinite(r)}
        if not ratios:
            return None
        med = statistics.median(list(ratios.values()))
        if med <= bound:
            return None
        return Hit({i: f"update/weight ratio {_fmt(r)} > {bound:g}" for i, r in ratios.items()
                    if r > bound},
                   f"median update/weight ratio {_fmt(med)} over {len(ratios)} weight layers "
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
    carry the status too."""

    kind, status, reads = "vanishing", Status.VANISHING, ("norm", "act_norm")

    def check(self, view, th, state):
        bound = th.relative_vanishing
        if bound is None or view.head is None or not _has_signal(view, th):
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
                layers = {i: f"{kind} norm {r:.2g}x the output side's" for i, r in
                          zip(idx, rel) if r < bound}
                if what == "entering gradient":
                    head = next(i for i, a in enumerate(view.act) if a is not None)
                    layers.setdefault(head, f"output-gradient norm {ratio:.2g}x the output "
                                            f"side's")
                    evidence = (f"the gradient reaching the first layer (`{view.names[head]}`'s "
                                f"output gradient) is {ratio:.2g}x the output side's median "
                                f"output gradient (bound relative_vanishing={bound:g})")
                else:
                    evidence = (f"the input-side weight layers' largest {what} norm is "
                                f"{ratio:.2g}x the output side's median (bound "
                                f"relative_vanishing={bound:g})")
                found = Hit(layers, evidence, {"ratio": ratio})
        if found is not None:
            _add_absolute(found, view, lambda n: n < th.vanishing,
                          f"< vanishing {th.vanishing:g}")
        return found


class DepthExploding(Rule):
    """The gradient grows across depth (input side orders above the output side), or the total
    norm stays above the absolute bound."""

    kind, status, reads = "exploding", Status.EXPLODING, ("norm", "act_norm", "total_norm")

    def check(self, view, th, state):
        bound = th.relative_exploding
        for what, _, ratio, idx, rel in (depth_trend(view) if bound is not None else []):
            if ratio > bound:
                hit = Hit({i: f"{what} norm {r:.2g}x the output side's" for i, r in
                           zip(idx, rel) if r > bound},
                          f"the input-side weight layers' median {what} norm is {ratio:.2g}x "
                          f"the output side's (bound relative_exploding={bound:g})",
                          {"ratio": ratio})
                _add_absolute(hit, view, lambda n: n > th.exploding,
                              f"> exploding {th.exploding:g}")
                return hit
        if math.isfinite(view.total) and view.total > th.exploding:
            return Hit({i: f"norm {_fmt(n)} > exploding {th.exploding:g}" for i, n in
                        enumerate(view.norms) if n > th.exploding},
                       f"total gradient norm {_fmt(view.total)} > exploding {th.exploding:g}",
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
    stalled net and a converged one look alike, since neither gets a gradient."""

    kind, status, reads, optional = "stalled", Status.VANISHING, ("loss",), True

    def check(self, view, th, state):
        loss, h = view.loss, view.head
        if th.stalled_loss is None or loss is None or h is None or not math.isfinite(loss):
            return None
        peak = state["peak"] = max(state.get("peak", loss), loss)
        if peak <= 0 or loss < th.stalled_loss * peak:
            return None
        signal, what = _signal(view)
        if not signal <= th.stalled_gradient * min(loss, 1.0):
            return None
        return Hit({h: f"{what} {_fmt(signal)} at loss {_fmt(loss)}"},
                   f"no gradient enters the model: the head's {what} is {_fmt(signal)} (at "
                   f"most stalled_gradient={th.stalled_gradient:g} x the loss) while the loss, "
                   f"{_fmt(loss)}, is {loss / peak:.2g}x the run's highest ({_fmt(peak)}; "
                   f"bound stalled_loss={th.stalled_loss:g})", {"loss": loss, "signal": signal})


RULES: tuple[Rule, ...] = (NonFinite(), AmpOverflow(), Divergence(), DepthExploding(),
                           DepthVanishing(), Stalled(), ThroughTime(), DeadUnits(),
                           ZeroGradient(), Saturation(), LossRising())
"""Every verdict rule, most severe first: the first rule that gives a layer a status wins."""
