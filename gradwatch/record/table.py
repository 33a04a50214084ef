"""A record's layers: per-layer columns and the mapping of layer name to  over them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence
import numpy as np

from .records import STATUS_CODES, LayerStat, Status

__all__ = ['DictView', 'LayerTable', 'LayerColumns']


class DictView(Mapping[str, "LayerStat"]):
    """A mapping of layer name to `LayerStat` built on demand (``_dict``) that compares,
    prints, pickles (as a dict) and copies as a plain dict would."""

    __slots__ = ()

    def _dict(self) -> dict[str, LayerStat]:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        return self._dict() == (dict(other) if isinstance(other, Mapping) else other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self._dict())

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (self._dict(),))


class LayerTable(DictView):
    """A record's layers (name -> `LayerStat`, in forward order): a view over per-layer
    columns (`LayerColumns`), turned into `LayerStat` objects the first time an entry is read,
    so a monitor whose records nobody reads per layer builds none. Reads, equality, pickling
    and copies behave as a plain dict's (a pickled table is a dict)."""

    __slots__ = ("_cols", "_built")

    def __init__(self, cols: LayerColumns) -> None:
        self._cols = cols
        self._built: dict[str, LayerStat] | None = None

    def _dict(self) -> dict[str, LayerStat]:
        if self._built is None:
            c = self._cols
            norm, act, act_on = c.norm.tolist(), c.act.tolist(), c.act_on.tolist()
            status, spike = c.status.tolist(), c.spike.tolist()
            values = {k: [None if v != v else v for v in col.tolist()]
                      for k, col in c.values.items()}
            self._built = {
                name: LayerStat(norm[k], act[k] if act_on[k] else None, STATUS_CODES[status[k]],
                                spike[k] > 0, c.reason(k), {s: vals[k] for s, vals in
                                                            values.items() if vals[k] is not None})
                for k, name in enumerate(c.names)}
        return self._built

    def marks(self) -> list[tuple[str, Status, bool]]:
        """(name, status, spiked) of every layer that is not ok or spiked (nothing built)."""
        c = self._cols
        return [(c.names[k], STATUS_CODES[c.status[k]], bool(c.spike[k] > 0))
                for k in np.flatnonzero((c.status != 0) | (c.spike > 0)).tolist()]

    def __getitem__(self, name: str) -> LayerStat:
        return self._dict()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._cols.names)

    def __len__(self) -> int:
        return len(self._cols.names)

    def __contains__(self, name: object) -> bool:
        return name in self._cols.names


@dataclass(frozen=True)
class LayerColumns:
    """One record's per-layer numbers as arrays, in forward order (see `LayerTable`).

    ``status`` holds codes into `STATUS_CODES`; a layer's status words are
    ``templates[template[k]].format(value[k])``; ``spike`` is the ratio of a layer's spiking
    norm to its running mean (0: no spike) and ``spike_z`` its z-score; a value column is NaN
    where its statistic was not measured."""

    names: Sequence[str]
    norm: np.ndarray
    act: np.ndarray
    act_on: np.ndarray
    status: np.ndarray
    template: np.ndarray
    value: np.ndarray
    templates: tuple[str, ...]
    spike: np.ndarray
    spike_z: np.ndarray
    values: Mapping[str, np.ndarray]

    def reason(self, k: int) -> str:
        """The words of layer ``k``: its status's evidence, then its spike's."""
        parts = []
        t = int(self.template[k])
        if t >= 0:
            parts.append(self.templates[t].format(float(self.value[k])))
        ratio = float(self.spike[k])
        if ratio > 0:
            parts.append(f"norm {float(self.norm[k]):.3g} is {ratio:.3g}x its running mean "
                         f"(z={float(self.spike_z[k]):.1f})")
        return "; ".join(parts)
