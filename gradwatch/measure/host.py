"""One host transfer per step: named device values gathered and copied in one go."""

from __future__ import annotations

from typing import Any, Sequence
import torch
from torch import Tensor

__all__ = ['HostBatch', 'InFlight', 'to_device']


class HostBatch:
    """Gathers named device values and copies them to the host in ONE transfer.

    ``add(name, values)`` takes a tensor or a list of floats and 0-d tensors; `fetch`
    returns ``{name: [float, ...]}``. Python floats never travel.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._parts: list[Tensor] = []
        self._slots: dict[str, tuple[Any, ...]] = {}
        self._size = 0

    def _part(self, t: Tensor) -> None:
        if not t.is_floating_point():
            t = t.double()  # counts: exact, and never promoted to float32 by the others
        self._parts.append(t if t.device == self.device else t.to(self.device))

    def add(self, name: str, values: Tensor | Sequence[Any]) -> None:
        if isinstance(values, Tensor):
            n = values.numel()
            self._part(values.reshape(-1))
            self._slots[name] = (self._size, n)
            self._size += n
            return
        items = list(values)
        where = [k for k, v in enumerate(items) if isinstance(v, Tensor)]
        if where:
            self._part(torch.stack([items[k].reshape(()) for k in where]))
        self._slots[name] = (self._size, items, where)
        self._size += len(where)

    def add_floats(self, name: str, values: list[float]) -> None:
        """`add` for values known to be Python floats (already on the host): not scanned."""
        self._slots[name] = (self._size, values, ())

    def fetch(self) -> dict[str, list[float]]:
        """Copies and waits (one blocking device-to-host copy)."""
        return self.start(blocking=True).result()

    def start(self, *, blocking: bool = False) -> InFlight:
        """Starts the copy. On CUDA without ``blocking`` it goes ``non_blocking`` into pinned
        memory and returns at once; `InFlight.result` waits for it (the next step, normally
        long done)."""
        parts = self._parts
        dev = None if not parts else parts[0] if len(parts) == 1 else torch.cat(parts)
        event = None
        if dev is None:
            host = None
        elif dev.device.type == "cuda" and not blocking:
            host = torch.empty(dev.shape, dtype=dev.dtype, pin_memory=True)
            host.copy_(dev, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        else:
            host = dev.cpu() if blocking else dev.to("cpu", copy=True)
        return InFlight(self._slots, host, event)


class InFlight:
    """A started device-to-host copy of a `HostBatch`; `result` gives the named values."""

    def __init__(self, slots: dict[str, tuple[Any, ...]], host: Tensor | None,
                 event: Any) -> None:
        self._slots, self._host, self._event = slots, host, event

    def result(self) -> dict[str, list[float]]:
        if self._event is not None:
            self._event.synchronize()
        host = self._host.tolist() if self._host is not None else []
        out = {}
        for name, slot in self._slots.items():
            if len(slot) == 2:  # a tensor's values
                start, n = slot
                out[name] = host[start:start + n]
                continue
            start, items, where = slot
            if not where:
                out[name] = items
                continue
            values = list(items)
            for k, pos in enumerate(where):
                values[pos] = host[start + k]
            out[name] = values
        return out


def to_device(values: list[Any], dtype: torch.dtype, device: torch.device) -> Tensor:
    """A tensor of ``values`` on ``device`` without a blocking host-to-device copy (on CUDA
    from pinned memory, ``non_blocking``): no host synchronisation."""
    t = torch.tensor(values, dtype=dtype)
    if device.type == "cpu":
        return t
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)
