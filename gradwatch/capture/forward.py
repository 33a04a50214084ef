"""The layers in forward order and the head, learnt from recorded forward passes."""

from __future__ import annotations

import bisect
import math

import numpy as np
from typing import Sequence

from .layers import Layer

__all__ = ['ForwardOrder']


class ForwardOrder:
    """The layers in forward order and the head, learnt from recorded forward passes.

    A layer whose module never ran (``nn.MultiheadAttention`` applies ``out_proj``'s weights
    without calling it) sits where its nearest ancestor that ran completed; the head is the
    layer whose weight matrix the last weight-applying module used (a tied output head resolves
    to the embedding it shares).
    """

    def __init__(self, layers: Sequence[Layer], module_names: Sequence[str],
                 owner_of: Sequence[int], weight_user: Sequence[int]) -> None:
        self.layers, self.module_names = layers, module_names
        self.owner_of, self.weight_user = owner_of, weight_user
        self.order = list(range(len(layers)))
        weights = [i for i, layer in enumerate(layers) if layer.role == "weight"]
        self.head: int | None = weights[-1] if weights else None
        self.known = False
        self.repeated: frozenset[int] = frozenset()
        """Layers whose module ran more than once in the forward pass (weights shared across
        depth): their gradient sums over several depths, so the depth trend leaves them out."""
        self._seq: tuple[tuple[int, ...], ...] = ((), (), ())
        self.order_key = 0  # changes whenever `order` does
        self.ran = np.ones(len(layers), dtype=bool)
        """Layers whose own module ran in the last recorded forward pass."""
        self.depth = np.arange(len(layers))
        """A label per layer, shared by layers whose modules read one input one after another
        (attention's query, key and value): one depth, which a depth trend does not split."""

    def learn(self, completed: Sequence[int], calls: Sequence[int] = (),
              loose: Sequence[int] = (), same: Sequence[int] = ()) -> None:
        """Learns the order from the modules in ``completed`` order; ``calls`` are the
        positions in it where a call of the model began (a module is repeated when it ran
        more than once within one call: accumulated micro-batches or a validation pass under
        ``no_grad`` run every module once per call). When the model was called, the modules
        at positions ``loose`` (run outside its calls with gradients off: features taken for
        logging) are left out. ``same`` are the positions whose module read the first input
        of the module before it (`depth`)."""
        key = (tuple(completed), tuple(calls), tuple(loose), tuple(same))
        if not completed or key == self._seq:
            return
        seq: Sequence[int] = completed
        if calls and loose:
            out = set(loose)
            kept = [k for k in range(len(completed)) if k not in out]
            seq = [completed[k] for k in kept]
            calls = [bisect.bisect_left(kept, c) for c in calls]  # the same call, new position
            was = set(same)
            same = [j for j, k in enumerate(kept) if j and k in was and kept[j - 1] == k - 1]
            if not seq:
                return
        after = set(same)  # each position's depth label: the first of its run of one input
        label = list(range(len(seq)))
        for k in range(1, len(seq)):
            if k in after:
                label[k] = label[k - 1]
        self._seq, self.known = key, True
        self.order_key += 1
        first: dict[str, int] = {}
        runs: dict[str, int] = {}  # the most times each module ran within one call
        cuts = sorted({c for c in calls if 0 < c < len(seq)})
        for start, end in zip([0, *cuts], [*cuts, len(seq)]):
            count: dict[str, int] = {}
            for k in range(start, end):
                name = self.module_names[seq[k]]
                first.setdefault(name, k)
                count[name] = count.get(name, 0) + 1
            for name, c in count.items():
                if c > runs.get(name, 0):
                    runs[name] = c
        pos: dict[int, float] = {}
        uncalled: dict[str, list[int]] = {}  # module -> its layers that never ran themselves
        repeated = set()
        for i, layer in enumerate(self.layers):
            if layer.name in first:
                pos[i] = first[layer.name]
                if runs[layer.name] > 1:
                    repeated.add(i)
                continue
            parts = layer.name.split(".")
            for cut in range(len(parts) - 1, -1, -1):
                parent = ".".join(parts[:cut]) or "(root)"
                if parent in first:  # applied inside the parent's forward, after it started
                    pos[i] = first[parent] + 0.5
                    uncalled.setdefault(parent, []).append(i)
                    if runs[parent] > 1 and parent != "(root)":
                        repeated.add(i)
                    break
        self.repeated = frozenset(repeated)
        self.depth = np.array([label[first[layer.name]] if layer.name in first else -1 - i
                               for i, layer in enumerate(self.layers)], dtype=np.int64)
        self.order = sorted(range(len(self.layers)), key=lambda i: (pos.get(i, math.inf), i))
        self.ran = np.array([layer.name in first for layer in self.layers], dtype=bool)
        users = []
        for mid in seq:
            if self.weight_user[mid] >= 0:
                users.append(self.weight_user[mid])
            users += [i for i in uncalled.pop(self.module_names[mid], ())
                      if self.layers[i].role == "weight"]
        if users:
            self.head = users[-1]
