"""Resuming a watch: checking a saved `GradWatch.state_dict`, loading it all or nothing, and
the warnings where the state and the watch disagree (layers, clip policy)."""

from __future__ import annotations

import numbers
import warnings
from typing import Any, Mapping, Sequence

__all__ = ["check_state", "load_or_restore", "load_clip_state", "clip_state", "note_other_layers"]


_STATE_KEYS = ("step", "stats", "total_stats", "counts", "run")


def check_state(state: Any) -> None:
    """Refuses, with what to pass instead, a state that `GradWatch.state_dict` did not make."""
    if not isinstance(state, Mapping):
        raise TypeError(f"Expected `state` to be the dict GradWatch.state_dict() returned, but "
                        f"got {type(state).__name__}.")
    missing = [k for k in _STATE_KEYS if k not in state]
    if missing:
        raise ValueError(f"Expected `state` to be the dict GradWatch.state_dict() returned, but "
                         f"it lacks {missing} (it has {sorted(map(str, state))[:8]}); pass "
                         f"that dict, e.g. checkpoint['gradwatch'] if you saved it under that "
                         f"key.")
    step = state["step"]
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
        raise ValueError(f"Expected state['step'] to be an int >= 0, but got {step!r}.")
    for key, kind in _STATE_TYPES.items():
        if key in state and not isinstance(state[key], kind):
            raise ValueError(f"Expected state[{key!r}] to be a "
                             f"{'dict' if kind is Mapping else 'list'} as "
                             f"GradWatch.state_dict() wrote it, but got "
                             f"{type(state[key]).__name__} {state[key]!r:.60}; pass the dict "
                             f"state_dict() returned, unchanged.")


def clip_state(policy: Any) -> dict[str, Any]:
    """What `GradWatch.state_dict` saves of the clip policy: its statistics (``clip``; None
    without a policy) and its class (``clip_policy``), so a watch that clips otherwise can say
    what starts afresh or is dropped."""
    if policy is None:
        return {"clip": None, "clip_policy": None}
    return {"clip": policy.state_dict(), "clip_policy": type(policy).__name__}


_NOT_SAVED = object()
"""``clip_policy`` of a state saved before the class was (its statistics' keys tell)."""


def load_clip_state(policy: Any, state: Mapping[str, Any]) -> None:
    """Loads a clip policy's statistics saved in ``state`` (`clip_state`: ``clip``, and
    ``clip_policy``, the class name of the policy that saved them), and warns where the state
    and the watch disagree about them: statistics saved with no policy here to take them, or by a policy of another class (they
    are dropped), and a policy here that keeps statistics (ZClip, AutoClip) given a state
    without statistics of its own kind (it starts afresh). A policy of the saving class loads
    them as before; so does a state from before the class was saved whose statistics have the
    keys this policy's have."""
    saved = state.get("clip")
    if policy is None:
        if saved:
            warnings.warn("the state carries a clip policy's statistics but this watch does not "
                          "clip: they are dropped. Pass the same clip= as the saved watch to "
                          "resume them.", UserWarning, stacklevel=5)
        return
    mine, here = policy.state_dict(), type(policy).__name__
    saved_class = state.get("clip_policy", _NOT_SAVED)
    if saved is None:
        if mine:
            warnings.warn(f"the state has no statistics for this watch's clip policy ({policy!r};"
                          f" it was saved by a watch that did not clip that way): the policy "
                          f"starts afresh.", UserWarning, stacklevel=5)
        return
    if saved_class is _NOT_SAVED:  # (an older state: its keys tell whether it is this kind's)
        fits = set(saved) == set(mine)
        saved_class = "a policy of another kind"
    else:
        fits = saved_class == here
        saved_class = f"{saved_class}" if isinstance(saved_class, str) else "another policy"
    if fits:
        policy.load_state_dict(saved)
        return
    if saved:
        what = (f"the state's clip statistics (saved by {saved_class}: "
                f"{', '.join(map(str, saved))}) do not fit this watch's {policy!r}: they are "
                f"dropped")
        what += ", and the policy starts afresh" if mine else ""
    elif mine:
        what = (f"the state was saved by a watch clipping with {saved_class}, which keeps no "
                f"statistics: this watch's {policy!r} starts afresh")
    else:
        return  # two stateless policies: nothing to resume, nothing lost
    warnings.warn(f"{what}. Pass the same clip= as the saved watch to resume them exactly.",
                  UserWarning, stacklevel=5)


def note_other_layers(saved: Any, layers: Sequence[str]) -> None:
    """Warns when a state was saved by a watch that lacked some of ``layers`` (``saved``: its
    layer names; None for a state from before they were saved): those start afresh, and the
    head and the depth trends may have moved. (A state with statistics of layers this model
    lacks is refused when the spike statistics load.)"""
    if saved is None:
        return
    known = set(saved)
    new = [n for n in layers if n not in known]
    if new:
        warnings.warn(f"the state was saved by a watch without {len(new)} of this watch's "
                      f"{len(layers)} layers ({new[:5]}{' ...' if len(new) > 5 else ''}): their "
                      f"statistics start afresh. Load a state saved for this model to resume "
                      f"exactly.", UserWarning, stacklevel=5)


_STATE_TYPES: dict[str, Any] = {"stats": Mapping, "total_stats": Mapping, "counts": (list, tuple),
                                "run": Mapping, "judge": Mapping, "units": (list, tuple),
                                "layers": (list, tuple)}


def load_or_restore(watch: Any, state: Any, load: Any) -> None:
    """``load(state)`` after `check_state`; when it fails, the watch's own state from before is
    loaded back (``load(before, resumed=False)``: the run is not marked as resumed) and a
    ValueError says the state did not load (the first error is its cause)."""
    check_state(state)
    before = watch.state_dict()
    try:
        load(state)
    except Exception as e:  # (a malformed entry fails wherever it is read: torch, numpy)
        load(before, resumed=False)
        raise ValueError(f"Expected `state` to be what GradWatch.state_dict() returned, but "
                         f"loading it failed ({type(e).__name__}: {e}); the watch is unchanged. "
                         f"Pass the dict state_dict() returned, unchanged.") from e
