"""Verdict rules, each declared once: the statistics it reads, when it holds, the status and
evidence it writes. `gradwatch.verdict.judge.Judge` runs them over a window of recorded steps."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple

from ..record.records import Status
from .thresholds import Thresholds

__all__ = ["StepView", "Hit", "Rule", "RULES", "REMEDIES", "Trend", "depth_trend", "entering"]

REMEDIES = ("relu", "he_init", "xavier_init", "normalization", "residual", "lower_lr", "warmup",
            "clip", "weight_decay", "loss_scaling", "fix_op", "gated_rnn", "logit_loss",
            "nonzero_init", "zero_grad")
"""The machine-readable remedy codes a `Finding` may name."""


@dataclass
class StepView:
    """What the rules read at one recorded step; lists are per layer in forward order."""

    step: int
    names: list[str]
    roles: list[str]
    norms: list[float]
    act: list[float | None]
    values: list[Mapping[str, float | None]]
    head: int | None
    total: float
    overflow: bool = False
    origin: str | None = None
    birth: str | None = None
    recurrent: list[bool] = field(default_factory=list)
    shared: list[bool] = field(default_factory=list)  # ran more than once per forward
    saturating: bool = False
    loss: float | None = None  # the user's loss of the step, when passed
    cache: dict[str, Any] = field(default_factory=dict)  # shared by the rules of one step


@dataclass
class Hit:
    """A rule holding at one step: evidence per layer (index into the view) and in sum."""

    layers: dict[int, str]
    evidence: str
    numbers: dict[str, float] = field(default_factory=dict)


def _fmt(x: float) -> str:
    return f"{x:.3g}"


class Trend(NamedTuple):
    """One depth trend (see `depth_trend`); ratios are over the output side's median norm."""

    what: str  # "gradient" or "output-gradient"
    starved: float  # the input side's largest norm: vanishing reads it
    median: float  # the input side's median norm: exploding reads it
    layers: list[int]  # the weight layers it spans (indices into the view)
    rel: list[float]  # each of those layers' norm


def depth_trend(view: StepView) -> list[Trend]:
    """The depth trend of the weight layers up to the head, on the parameter-gradient norms
    and (when measured) on the output-gradient norms.

    The input side is the first third of the weight layers, the output side the last third
    (the head included), so a net whose layers are all small alike (LayerScale γ near 0 at
    init) shows no trend, while a gradient that shrinks or grows layer after layer does.
    Vanishing reads the input side's largest norm: the whole input side must be starved, since
    layers small by design sit beside big ones at the same depth (attention query/key
    projections and the layers that only feed attention logits get little gradient while
    attention is near uniform, and in forward order they can fill most of the first third, as
    in ConvBERT). Exploding reads the input side's median, which one large layer does not move.
    A layer whose module ran more than once in the forward pass (weights shared across depth,
    as in ALBERT) has no single depth: its gradient sums over all of them, and it is left out.
    """
    cached = view.cache.get("trend")
    if cached is not None:
        return cached
    view.cache["trend"] = out = []
    h = view.head
    if h is None:
        return out
    roles, shared = view.roles, view.shared or [False] * len(view.roles)
    idx = [i for i in range(h + 1) if roles[i] == "weight" and not shared[i]]
    if len(idx) < 3:
        return out
    k = max(1, len(idx) // 3)
    isfinite = math.isfinite
    for what, values in (("gradient", view.norms), ("output-gradient", view.act)):
        vals = [values[i] for i in idx]
        if None in vals or not all(map(isfinite, vals)):
            continue
        ref = statistics.median(vals[-k:])
        if ref <= 0:
            continue
        first = vals[:k]
        out.append(Trend(what, max(first) / ref, statistics.median(first) / ref, idx,
                         [v / ref for v in vals]))
    return out


def entering(view: StepView) -> float | None:
    """The output gradient of the first layer in forward order (the gradient that reaches the
    input side: an embedding's, a stem's), over the output side's median output gradient (the
    last third of the weight layers up to the head); None when output gradients are not
    measured. Layers small by design sit beside the path the gradient takes (attention
    query/key projections hang off the residual stream), so the stream's own entry reads big
    in a healthy net however small they are, while a gradient that every block scales down on
    its way (an activation after each residual sum) arrives orders smaller."""
    trend = next((t for t in depth_trend(view) if t.what == "output-gradient"), None)
    first = next((a for a in view.act if a is not None), None)
    if trend is None or first is None or not math.isfinite(first):
        return None
    k = max(1, len(trend.layers) // 3)
    ref = statistics.median(view.act[i] for i in trend.layers[-k:])
    return first / ref if ref > 0 else None


class Rule:
    """Base class: ``check`` returns a `Hit` when the rule's condition holds at a step.

    ``state`` is the rule's own memory across steps (saved with the watch's state_dict)."""

    kind: str = ""
    status: Status | None = None
    persistent: bool = True
    reads: tuple[str, ...] = ("norm",)
    optional: bool = False
    """Whether the statistics it reads may be missing (then the rule is skipped that step)."""

    def check(self, view: StepView, th: Thresholds, state: dict[str, Any]) -> Hit | None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r})"


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


def _add_absolute(hit: Hit, view: StepView, beyond: Any, bound: str) -> None:
    """Names in ``hit`` every layer whose own gradient norm is beyond the user's absolute
    bound (a finding that holds on the trend sets the status of each of them too)."""
    for i, n in enumerate(view.norms):
        if i not in hit.layers and math.isfinite(n) and beyond(n):
            hit.layers[i] = f"gradient norm {_fmt(n)} {bound}"


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


def _signal(view: StepView) -> tuple[float, str]:
    """The gradient entering the model and what it is: the head's output gradient, or
    (unmeasured) its parameter gradient."""
    h = view.head
    if view.act[h] is not None:
        return view.act[h], "output gradient"
    return view.norms[h], "gradient norm"


def _has_signal(view: StepView, th: Thresholds) -> bool:
    """Whether a gradient enters the model (`_signal` at least `Thresholds.vanishing`). A
    converged net has none."""
    signal, _ = _signal(view)
    return math.isfinite(signal) and signal >= th.vanishing


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


RULES: tuple[Rule, ...] = (NonFinite(), AmpOverflow(), Divergence(), DepthExploding(),
                           DepthVanishing(), Stalled(), ThroughTime(), DeadUnits(),
                           ZeroGradient(), Saturation(), LossRising())
"""Every verdict rule, most severe first: the first rule that gives a layer a status wins."""
