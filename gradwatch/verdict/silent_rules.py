"""Verdict rules for bugs that crash nothing: a part of the model that no gradient reaches,
and gradients that are never zeroed between optimizer steps."""

from __future__ import annotations

from .view import Hit, Rule

__all__ = ["NoGradient", "NotZeroed"]


class NoGradient(Rule):
    """The input side cut off the loss: layers that require grad, are stepped by the optimizer,
    ran in the forward pass before the first layer that gets a gradient, and get no gradient at
    all (``.grad`` is None) on `Thresholds.no_gradient` recorded steps in a row. Frozen layers
    (``requires_grad=False``, or left out of the optimizer), modules that did not run (an
    expert no token was routed to) and modules that ran after gradient-receiving layers but
    whose output the loss does not read (a pooler a token-level head skips) are not named. It
    needs the forward hooks (``activations=True``) to see what ran."""

    kind, reads = "no_gradient", ("norm",)
    persistent = False  # the streak is its persistence

    def check(self, view, th, state):
        if th.no_gradient is None or view.absent is None:
            return None
        old = state.get("streak", {})
        streak = state["streak"] = {n: old.get(n, 0) + 1 for n in view.absent}
        cut = tuple(n for n, k in streak.items() if k >= th.no_gradient)
        if not cut or not len(view.names):
            return None
        shown = ", ".join(f"`{n}`" for n in cut[:4]) + (f" and {len(cut) - 4} more"
                                                        if len(cut) > 4 else "")
        return Hit([], f"no gradient reaches {shown} ({len(cut)} layer(s)) on "
                       f"{min(streak[n] for n in cut)} recorded steps in a row, although they "
                       f"require grad, are stepped by the optimizer and ran in the forward "
                       f"pass, while {len(view.names)} other layer(s) get gradients "
                       f"(bound no_gradient={th.no_gradient})",
                   {"layers": float(len(cut))}, names=cut)


class NotZeroed(Rule):
    """Gradients are never zeroed: when a backward pass begins, a gradient still holds exactly
    the values it had right after the previous ``optimizer.step()`` (the same tensor, the same
    entries), on `Thresholds.not_zeroed` recorded steps in a row. Each step then adds its
    gradient to all the previous ones, and with momentum the steps grow until the loss climbs.
    Accumulating micro-batches between two optimizer steps is not this: the check runs at the
    first backward after a step. It needs the optimizer and ``activations=True``."""

    kind, reads = "not_zeroed", ("norm",)
    persistent = False  # the streak is its persistence

    def check(self, view, th, state):
        if th.not_zeroed is None or view.stale is None:
            return None
        streak = state["streak"] = state.get("streak", 0.0) + 1 if view.stale else 0.0
        if streak < th.not_zeroed:
            return None
        return Hit([], f"when the backward pass began, the gradients still held the values "
                       f"they had after the previous optimizer.step() on {int(streak)} "
                       f"recorded steps in a row (bound not_zeroed={th.not_zeroed}): each "
                       f"step's gradient is added to all the earlier ones (total gradient norm "
                       f"now {view.total:.3g})", {"steps": streak})
