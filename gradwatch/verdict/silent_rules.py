"""Verdict rules for bugs that crash nothing: a part of the model that no gradient reaches,
gradients that are never zeroed between optimizer steps, and weights the optimizer never
moves."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .view import Hit, Mark, Rule

__all__ = ["NoGradient", "UnusedOutput", "NotZeroed", "NotMoving"]


class NoGradient(Rule):
    """The input side cut off the loss: layers that require grad, are stepped by the optimizer,
    ran in the forward pass before the first layer that gets a gradient, and get no gradient at
    all (``.grad`` is None) on `Thresholds.no_gradient` recorded steps in a row. Frozen layers
    (``requires_grad=False``, or left out of the optimizer), modules that did not run (an
    expert no token was routed to) and modules that ran after gradient-receiving layers but
    whose output the loss does not read (a pooler a token-level head skips) are not named. It
    needs the forward hooks (``activations=True``) to see what ran, except when no layer at all
    has a gradient at the optimizer step (a loss that does not depend on the parameters, or
    gradients cleared between backward and step): then every stepped layer is named."""

    kind, reads = "no_gradient", ("norm",)
    persistent = False  # the streak is its persistence

    def check(self, view, th, state):
        if th.no_gradient is None or view.absent is None:
            return None
        cut, steps = _streak(state, view.absent, th.no_gradient)
        if not cut:
            return None
        if not len(view.names):  # no layer at all has a gradient at the optimizer step
            loss = "" if view.loss is None else f" while the loss is {view.loss:.3g}"
            return Hit([], f"no watched layer has a gradient at the optimizer step: none of "
                           f"{_listed(cut)} ({len(cut)} layer(s) that require grad and are "
                           f"stepped by the optimizer) got one on {steps} recorded steps in a "
                           f"row{loss} (bound no_gradient={th.no_gradient})",
                       {"layers": float(len(cut)), "all": 1.0}, names=cut)
        return Hit([], f"no gradient reaches {_listed(cut)} ({len(cut)} layer(s)) on "
                       f"{steps} recorded steps in a row, although they "
                       f"require grad, are stepped by the optimizer and ran in the forward "
                       f"pass, while {len(view.names)} other layer(s) get gradients "
                       f"(bound no_gradient={th.no_gradient})",
                   {"layers": float(len(cut))}, names=cut)


class UnusedOutput(Rule):
    """A note: layers that require grad, are stepped by the optimizer and ran in the forward
    pass after layers that got a gradient, but get none themselves on `Thresholds.no_gradient`
    recorded steps in a row: the loss does not read their output. Often meant (a pooler a
    token-level loss skips, a head kept for another task), so it sets no status; a bug when
    that output was the one to train (the loss computed from another head), which nothing
    else can see: a layer with no gradient is in no record. Needs ``activations=True``."""

    kind, reads = "unused_output", ("norm",)
    persistent = False  # the streak is its persistence

    def check(self, view, th, state):
        if th.no_gradient is None or view.unread is None:
            return None
        unread, steps = _streak(state, view.unread, th.no_gradient)
        if not unread:
            return None
        return Hit([], f"{_listed(unread)} ({len(unread)} layer(s)) ran after layers that get "
                       f"gradients but got no gradient on {steps} recorded steps in a row, although they require grad and are stepped by the optimizer "
                       f"(bound no_gradient={th.no_gradient})", {"layers": float(len(unread))},
                   names=unread, note="an output the loss does not read is often meant (a "
                                      "pooler a token-level loss skips, a head for another "
                                      "task); it is a bug if the loss should read it")


def _streak(state: dict, names: Sequence[str], bound: int) -> tuple[tuple[str, ...], int]:
    """Counts, in ``state``, the recorded steps in a row each of ``names`` has been named (a
    name missing from a step starts over); the names at ``bound`` or more, and their shortest
    streak."""
    old = state.get("streak", {})
    streak = state["streak"] = {n: old.get(n, 0) + 1 for n in names}
    over = tuple(n for n, k in streak.items() if k >= bound)
    return over, min((streak[n] for n in over), default=0)


def _listed(names: Sequence[str]) -> str:
    """The first four names in backticks, and how many more."""
    return ", ".join(f"`{n}`" for n in names[:4]) + (f" and {len(names) - 4} more"
                                                    if len(names) > 4 else "")


class NotZeroed(Rule):
    """Gradients are never zeroed: a gradient the optimizer steps still held exactly the values
    it had right after the previous ``optimizer.step()`` (the same tensor, the same entries)
    when a backward pass added to it, and was never reset before the next step
    (`gradwatch.capture.zeroing.ZeroCheck`), on `Thresholds.not_zeroed` recorded steps in a
    row. Each step then adds its gradient to all the previous ones, and with momentum the steps
    grow until the loss climbs. Accumulating micro-batches after a reset is not this. It needs
    the optimizer and ``activations=True``."""

    kind, reads = "not_zeroed", ("norm",)
    persistent = False  # the streak is its persistence

    def check(self, view, th, state):
        if th.not_zeroed is None or view.stale is None:
            return None
        streak = state["streak"] = state.get("streak", 0.0) + 1 if view.stale else 0.0
        if streak < th.not_zeroed:
            return None
        return Hit([], f"a gradient the optimizer steps still held the values it had after "
                       f"the previous optimizer.step() when the next backward added to it, and "
                       f"was not reset before the next step, on {int(streak)} recorded steps "
                       f"in a row (bound not_zeroed={th.not_zeroed}): each step's gradient is "
                       f"added to all the earlier ones (total gradient norm now "
                       f"{view.total:.3g})", {"steps": streak})


class NotMoving(Rule):
    """The optimizer moves no weight: every layer it steps that got a non-zero gradient has an
    update/weight ratio of exactly 0 (its sampled entries are the same after
    ``optimizer.step()`` as before), on `Thresholds.not_moving` measured update ratios in a
    row. A learning rate of 0 does it, and so do updates all below the weights' resolution
    (low-precision weights and a learning rate near 0; where only most of them round away,
    as with bfloat16 weights of which some are near 0, some entries move and this does not
    hold). A param group with a learning rate of 0 beside groups that train (a backbone
    frozen that way) is not this: some layer moves.
    Non-finite and AMP-overflow steps, whose updates are skipped, leave the streak as it is.
    Once the weights moved at a measured step, a later streak is a note, not an alarm: the
    last steps of a long schedule that decays to 0 round every update away (on a small MLP,
    the last 41 (Adam) to 61 (SGD) steps of a million-step cosine schedule). An alarm whose
    streak ends (the weights move) becomes a note once the loss has fallen
    (`Thresholds.loss_falling`): a learning rate held at 0 at the start, then warmed up."""

    kind, reads, optional = "not_moving", ("update_ratio",), True
    persistent = False  # the streak is its persistence

    def check(self, view, th, state):
        ratio = view.values.get("update_ratio")
        if th.not_moving is None or ratio is None or view.broken or view.overflow:
            return None
        moved = np.isfinite(ratio) & (view.norms > 0) & np.isfinite(view.norms)
        if view.stepped is not None:
            moved &= view.stepped
        idx = np.flatnonzero(moved)
        if not len(idx):
            return None  # nothing stepped got a gradient: no evidence either way
        still = not ratio[idx].any()
        streak = state["streak"] = state.get("streak", 0.0) + 1 if still else 0.0
        if not still:
            state["moved"] = 1.0
            curve = view.curve
            if state.get("alarmed") and th.loss_falling is not None and curve is not None \
                    and curve.fell(th.loss_falling):  # the alarm's streak ended, and it learns
                state["alarmed"] = 0.0
                return Hit([], f"optimizer.step() left every weight it steps unchanged on "
                               f"{int(state['longest'])} measured steps in a row, then moved "
                               f"them (update/weight ratio up to {float(ratio[idx].max()):.3g} "
                               f"now)", {"steps": state["longest"]},
                           note=f"the weights move since and the loss fell (median "
                                f"{curve.now:.3g} over the last {th.window} recorded steps, "
                                f"from {curve.start:.3g}): a learning rate held at 0 at the "
                                f"start (a delayed warm-up) ended")
        if streak < th.not_moving:
            return None
        if not state.get("moved"):  # an alarm: a later move with the loss falling ends it
            state["alarmed"], state["longest"] = 1.0, max(streak, state.get("longest", 0.0))
        hit = Hit([Mark(idx, "update/weight ratio {:.3g} with gradient", ratio[idx])],
                  f"optimizer.step() left every weight it steps unchanged ({len(idx)} "
                  f"layer(s) with a non-zero gradient, update/weight ratio exactly 0) on "
                  f"{int(streak)} measured steps in a row (bound not_moving={th.not_moving}; "
                  f"measured at the first 4 recorded steps, then every 4th)", {"steps": streak})
        if state.get("moved"):
            hit.note = ("the weights moved earlier in the run: a learning rate that decays to "
                        "(nearly) 0 stops them at the end of its schedule")
        return hit
