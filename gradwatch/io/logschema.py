"""The schema of a JSON-lines log line: precise messages naming the key that is wrong."""

from __future__ import annotations

import json
import math
from typing import Any

from ..record.records import Status

__all__ = ["HEADER_KEY", "check_header", "check_layers", "check_record_dict", "check_record_head"]

HEADER_KEY = "gradwatch_run"
"""A line ``{"gradwatch_run": {...}}`` starts a run; every other line is one `StepRecord`."""

_STATUSES = {s.value for s in Status}


def _show(v: Any) -> str:
    """A value as it appears in the file, with its JSON type for containers and strings."""
    text = json.dumps(v)
    text = text if len(text) <= 40 else text[:37] + "..."
    kind = {list: "a list ", dict: "an object ", str: "a string "}.get(type(v), "")
    return f"{kind}{text}"


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_LAYER_WANTS = {"norm": "a number", "status": f"one of {sorted(_STATUSES)}",
                "spike": "true or false", "reason": "a string"}
"""What the fixed keys of a layer hold; ``act_norm`` and every extra key (a per-layer
statistic such as ``update_ratio``) hold a number or null."""


def _check_layer(name: str, stat: Any) -> str | None:
    """Why one layer's statistics are not what a record holds, or None (the message, with
    the layer's name as JSON, is built only on a failure)."""
    if not isinstance(stat, dict):
        return f"{_where(name)}` must be an object of statistics, but got {_show(stat)}"
    if "norm" not in stat:
        return f"{_where(name)}` has no key `norm`"
    for key, value in stat.items():  # plain type tests
        t = type(value)
        if t is float or t is int:
            if key in ("norm", "act_norm") and value < 0:  # NaN passes: it is a measurement
                return (f"{_where(name)}.{key}` must be a norm >= 0 (or NaN/Infinity), but got "
                        f"{value!r}")
            if key not in ("status", "spike", "reason"):
                continue
        elif value is None:
            if key not in _LAYER_WANTS:
                continue
        elif (t is str and (key == "reason" or (key == "status" and value in _STATUSES))
              or (t is bool and key == "spike")):
            continue
        wants = _LAYER_WANTS.get(key, "a number or null")
        return f"{_where(name)}.{key}` must be {wants}, but got {_show(value)}"
    return None


def _where(name: str) -> str:
    return f"`layers[{json.dumps(name)}]"


def _check_findings(findings: Any) -> str | None:
    """Why a line's ``findings`` is not a list of `Finding.to_dict()` objects (naming the
    entry and key), or None: the record reader would fail with a bare KeyError otherwise."""
    if not isinstance(findings, list):
        return f"`findings` must be a list of finding objects, but got {_show(findings)}"
    for k, f in enumerate(findings):
        if not isinstance(f, dict):
            return f"`findings[{k}]` must be an object (a finding), but got {_show(f)}"
        if not isinstance(f.get("kind"), str):
            return (f"`findings[{k}]` has no key `kind`" if "kind" not in f else
                    f"`findings[{k}].kind` must be a string, but got {_show(f['kind'])}")
        for key in ("layers", "remedies", "plans"):
            if key in f and not isinstance(f[key], list):
                return f"`findings[{k}].{key}` must be a list, but got {_show(f[key])}"
        for key in ("first_step", "steps"):
            if key in f and not (_is_num(f[key]) and math.isfinite(f[key])):
                return f"`findings[{k}].{key}` must be a whole number, but got {_show(f[key])}"
    return None


def check_record_dict(obj: Any) -> str | None:
    """Why ``obj`` is not a `StepRecord.to_dict()` (naming the key), or ``None`` when it is."""
    return check_record_head(obj) or check_layers(obj.get("layers", {}))


def check_layers(layers: dict[str, Any]) -> str | None:
    """Why a record's ``layers`` object is not one of layer statistics (naming the first layer
    and key that is wrong), or ``None``. Slow: one layer and key at a time (the reader checks
    in bulk first, `gradwatch.io.layerparse`, and asks here only to name a problem)."""
    for name, stat in layers.items():
        why = _check_layer(name, stat)
        if why:
            return why
    return None


def check_record_head(obj: Any) -> str | None:
    """`check_record_dict` without the per-layer checks (`check_layers`)."""
    if not isinstance(obj, dict):
        return f"expected one JSON object per line, but got {_show(obj)}"
    for key in ("step", "total_norm"):
        if key not in obj:
            return f"key `{key}` is missing (keys present: {', '.join(sorted(obj)) or 'none'})"
    step = obj["step"]
    if not (_is_num(step) and math.isfinite(step) and step == int(step) and step >= 0):
        return f"`step` must be a whole number >= 0, but got {_show(step)}"
    rules = {"total_norm": (_is_num, "a number"), "clip_coef": (_is_num, "a number"),
             "first_nonfinite": (lambda v: v is None or isinstance(v, str),
                                 "a layer name (string) or null"),
             "spike": (lambda v: isinstance(v, bool), "true or false"),
             "skipped": (lambda v: isinstance(v, bool), "true or false"),
             "amp_overflow": (lambda v: isinstance(v, bool), "true or false"),
             "loss": (lambda v: v is None or _is_num(v), "a number or null"),
             "layers": (lambda v: isinstance(v, dict), "an object of layer statistics"),
             "held": (lambda v: isinstance(v, list) and all(isinstance(k, str) for k in v),
                      "a list of finding kinds (strings)"),
             "run_id": (lambda v: isinstance(v, str) and v != "",
                        "a non-empty string (the id of its run's header)")}
    for key, (ok, what) in rules.items():
        if key in obj and not ok(obj[key]):
            return f"`{key}` must be {what}, but got {_show(obj[key])}"
    if obj["total_norm"] < 0:  # NaN passes: a non-finite step is a measurement
        return f"`total_norm` must be a norm >= 0 (or NaN/Infinity), but got {obj['total_norm']!r}"
    return _check_findings(obj.get("findings", []))


def check_header(h: Any) -> str | None:
    """Why ``h`` is not a run header (naming the key), or ``None`` when it is."""
    if not isinstance(h, dict):
        return f"`{HEADER_KEY}` must be an object (the run header), but got {_show(h)}"
    rules = {"run_id": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
             "resumed": (lambda v: isinstance(v, bool), "true or false"),
             "resume_step": (lambda v: v is None or (isinstance(v, int) and not isinstance(
                 v, bool) and v >= 0), "a whole number >= 0 or null")}
    for key, (ok, what) in rules.items():
        if key in h and not ok(h[key]):
            return f"header `{key}` must be {what}, but got {_show(h[key])}"
    return None
