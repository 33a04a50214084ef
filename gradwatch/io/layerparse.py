"""A record's layers turned into columns (`RecordStore.append`): from a log line's ``layers``
object, checked in bulk, or from `LayerStat`s.

Checking a line's layers one by one cost a quarter of the reading time of a 400-layer log
(`check_layers` runs per layer and per key); here each statistic is checked over all layers at
once (one set of the value types, one comparison of an array). A line that fails a bulk check
is not read here: the caller names its problem with `check_layers`, which builds the message.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ..record.records import STATUS_CODES, LayerStat
from .columns import FIXED, RecordStore

__all__ = ["JsonLayers", "stat_columns"]

_NUMBER = {float, int}
_NUMBER_OR_NULL = {float, int, type(None)}
_CODE = {s.value: k for k, s in enumerate(STATUS_CODES)}  # a status as written -> its code
_FAILED = (TypeError, ValueError, KeyError, OverflowError)


def _numbers(values: Sequence[Any], null: bool, norm: bool = False
             ) -> tuple[np.ndarray, list[int]] | None:
    """The values as float64 and the positions of the nulls, or None when one is not a number
    (or null, where ``null``) or, for a ``norm``, is negative (NaN passes: a measurement)."""
    types = set(map(type, values))
    if not types <= (_NUMBER_OR_NULL if null else _NUMBER):
        return None
    out = np.array(values, dtype=np.float64)  # null -> NaN; its position is kept apart
    if norm and bool((out < 0).any()):
        return None
    return out, [j for j, v in enumerate(values) if v is None] if type(None) in types else []


def _plain(values: Sequence[Any], kind: type) -> bool:
    return set(map(type, values)) <= {kind}


class JsonLayers:
    """Reads the ``layers`` object of log lines into a `RecordStore`'s columns."""

    def __init__(self, store: RecordStore) -> None:
        self.store = store
        self._plans: dict[tuple, tuple[int, tuple[str, ...] | None]] = {}

    def _plan(self, names: tuple[str, ...], keys: tuple[tuple[str, ...], ...]
              ) -> tuple[int, tuple[str, ...] | None]:
        """The layout id of layers with these keys, and the keys when every layer has the same
        ones in the same order (then the values are read column by column, in one ``zip``)."""
        found = self._plans.get((names, keys))
        if found is None:
            extras = tuple(tuple(k for k in ks if k not in FIXED) for ks in keys)
            same = keys[0] if keys and all(ks == keys[0] for ks in keys) else None
            found = self._plans[(names, keys)] = (self.store.layout_id(names, extras), same)
        return found

    def columns(self, layers: Mapping[str, Any]) -> tuple[int, dict[str, Any]] | None:
        """(layout id, columns) of a line's ``layers`` when every layer passes the schema and
        reads as `LayerStat.from_dict` reads it; None when one does not."""
        stats = list(layers.values())
        if not _plain(stats, dict):
            return None
        names = tuple(layers)
        lid, same = self._plan(names, tuple(map(tuple, stats)))
        layout = self.store.layouts[lid]
        if same is not None:
            if "norm" not in same:
                return None
            got = dict(zip(same, zip(*map(dict.values, stats)))) if stats else {"norm": ()}
            n = len(stats)
            col = {"norm": got["norm"], "act_norm": got.get("act_norm", (None,) * n),
                   "status": got.get("status", ("ok",) * n),
                   "spike": got.get("spike", (False,) * n), "reason": got.get("reason", ("",) * n)}
            extra = {k: got[k] for k in layout.keys}
        else:
            try:
                col = {"norm": [s["norm"] for s in stats],
                       "act_norm": [s.get("act_norm") for s in stats],
                       "status": [s.get("status", "ok") for s in stats],
                       "spike": [s.get("spike", False) for s in stats],
                       "reason": [s.get("reason", "") for s in stats]}
            except KeyError:
                return None
            extra = {k: [stats[p][k] for p in where.tolist()] for k, where in layout.has.items()}
        try:
            checked = self._checked(col, extra)
        except _FAILED:  # not a status (KeyError), an int too large for a float: one by one
            return None
        return None if checked is None else (lid, checked)

    def _checked(self, col: Mapping[str, Sequence[Any]], extra: Mapping[str, Sequence[Any]]
                 ) -> dict[str, Any] | None:
        """The columns of `columns`, or None where a value is not what its key holds. A status
        column of "ok" only, a reason column of "" only (healthy layers) is None."""
        norm = _numbers(col["norm"], null=False, norm=True)
        act = _numbers(col["act_norm"], null=True, norm=True)
        statuses, reasons = col["status"], col["reason"]
        healthy = statuses.count("ok") == len(statuses)  # only the string "ok" equals "ok"
        quiet = reasons.count("") == len(reasons)
        if norm is None or act is None or not _plain(col["spike"], bool) \
                or not (quiet or _plain(reasons, str)):
            return None
        values = {k: _numbers(v, null=True) for k, v in extra.items()}
        if any(v is None for v in values.values()):
            return None
        return {"norm": norm[0], "act": act[0],
                "act_on": [v is not None for v in col["act_norm"]] if act[1] else None,
                "status": None if healthy else list(map(_CODE.__getitem__, statuses)),
                "spike": col["spike"],
                "reason": None if quiet else self.store.reason_codes(reasons), "extra": values}


def stat_columns(store: RecordStore, layers: Mapping[str, LayerStat]
                 ) -> tuple[int, dict[str, Any]]:
    """(layout id, columns) of `LayerStat`s: a line the bulk check left to `LayerStat.from_dict`,
    or records from elsewhere (`watch.history`) that a summary reads as columns."""
    names, stats = tuple(layers), list(layers.values())
    lid = store.layout_id(names, tuple(tuple(s.values) for s in stats))
    acts = [s.act_norm for s in stats]
    extra = {}
    for k, where in store.layouts[lid].has.items():
        vals = [stats[p].values[k] for p in where.tolist()]
        extra[k] = (np.array(vals, dtype=np.float64),
                    [j for j, v in enumerate(vals) if v is None])
    return lid, {"norm": np.array([s.norm for s in stats], dtype=np.float64),
                 "act": np.array(acts, dtype=np.float64), "act_on": [a is not None for a in acts],
                 "status": [store.status_code(s.status) for s in stats],
                 "spike": [bool(s.spike) for s in stats],
                 "reason": store.reason_codes([s.reason for s in stats]), "extra": extra}
