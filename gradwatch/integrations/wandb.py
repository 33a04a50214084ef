"""`WandbLogger`: a gradwatch logger that writes every `StepRecord` to a Weights & Biases run."""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Any, Literal, Mapping

from ..record.records import Status, StepRecord

__all__ = ["WandbLogger", "STATUS_CODES", "history_row"]

STATUS_CODES: dict[str, int] = {status.value: i for i, status in enumerate(Status)}
"""The number logged for each layer status (``ok`` is 0), in the order `Status` declares them."""

_INSTALL = "pip install wandb (or pip install -e '.[wandb]' in a gradwatch checkout)"


def _import_wandb() -> Any:
    try:
        import wandb
    except ImportError as err:
        raise ImportError(f"WandbLogger needs Weights & Biases ({err}); install it with "
                          f"{_INSTALL}.") from err
    return wandb


def _number(value: Any) -> float | int | None:
    """``value`` as a number wandb charts (bools as 0/1), or ``None`` when it is not one."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return value
    return None


def _cell(value: Any) -> Any:
    """A table cell: numbers and strings as they are, sequences joined (a sequence of
    sequences, as remedy plans, ``a+b, c``), anything else as text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple, set, frozenset)):
        return ", ".join("+".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
                         for v in value)
    return str(value)


def _plain(value: Any) -> Any:
    """``value`` as JSON-ready config: dataclasses and mappings as dicts, sequences as lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return repr(value)


def history_row(record: StepRecord, *, prefix: str = "grad",
                statuses: Literal["number", "table"] = "number") -> tuple[dict[str, Any],
                                                                         dict[str, list]]:
    """The scalars `WandbLogger` logs for ``record``, and the tables it builds, by key.

    Everything comes from ``record.to_dict()``, so a statistic added to records or to
    `LayerStat.to_dict` is logged without a change here. Step level: every number (bools as
    0/1) as ``{prefix}/{key}``, strings as text (``first_nonfinite`` when set), a list of dicts
    (``findings``) as a table with its length as ``{prefix}/{key}/count``, a dict's numbers as
    ``{prefix}/{key}/{name}``; ``None`` is left out. Per layer: every number of the layer's dict
    as ``{prefix}/{layer}/{name}`` (``norm``, ``act_norm`` when measured, ``spike`` as 0/1, ...)
    and the status as its `STATUS_CODES` number (``statuses="number"``) or as one row of a
    ``{prefix}/statuses`` table with the reason (``statuses="table"``). Also
    ``{prefix}/flagged_layers`` and ``{prefix}/spike_layers``: how many layers are not ok / spiked.

    Returns:
        ``(scalars, tables)``: ``tables`` maps a key to ``[columns, rows]``.
    """
    data = record.to_dict()
    row: dict[str, Any] = {}
    tables: dict[str, list] = {}
    for key, value in data.items():
        if key in ("step", "layers") or value is None:
            continue
        number = _number(value)
        if number is not None or isinstance(value, str):
            row[f"{prefix}/{key}"] = value if number is None else number
        elif isinstance(value, (list, tuple)):
            row[f"{prefix}/{key}/count"] = len(value)
            if value and all(isinstance(v, Mapping) for v in value):
                columns = list(dict.fromkeys(k for v in value for k in v))
                tables[f"{prefix}/{key}"] = [
                    columns, [[_cell(v.get(c)) for c in columns] for v in value]]
        elif isinstance(value, Mapping):
            for name, item in value.items():
                if _number(item) is not None:
                    row[f"{prefix}/{key}/{name}"] = _number(item)
    status_rows = []
    for layer, stat in data.get("layers", {}).items():
        for name, value in stat.items():
            number = _number(value)
            if number is not None:
                row[f"{prefix}/{layer}/{name}"] = number
        status = stat.get("status", Status.OK.value)
        if statuses == "number":
            row[f"{prefix}/{layer}/status"] = STATUS_CODES.get(status, -1)
        else:
            status_rows.append([layer, status, bool(stat.get("spike", False)),
                                str(stat.get("reason", ""))])
    if statuses == "table":
        tables[f"{prefix}/statuses"] = [["layer", "status", "spike", "reason"], status_rows]
    row[f"{prefix}/flagged_layers"] = len(record.flagged)
    row[f"{prefix}/spike_layers"] = len(record.spikes)
    return row, tables


class WandbLogger:
    """Logs every record to a Weights & Biases run, at ``step=record.step``.

    What is logged is `history_row`: per-layer statistics (``grad/<layer>/norm``,
    ``grad/<layer>/act_norm``, ``grad/<layer>/status`` as a number, ...), the total norm, the clip
    coefficient, spikes, ``first_nonfinite`` and findings. `start_run` puts the run header
    (thresholds, layers, options) into ``run.config[prefix]``.

    The run is, in this order: ``run`` when given, the user's ``wandb.run`` when one is active
    at the first record, or a run this logger starts with ``wandb.init(**init_kwargs)`` and
    finishes on `close`. Records reach loggers one step late on the device path, so log your own
    metrics with ``step=`` the same optimizer step index; wandb drops rows whose step is lower
    than one it has already seen.

    Args:
        run: A ``wandb`` run to log to (left running on `close`).
        prefix: Key prefix of everything logged (and the config key of the header).
        statuses: ``"number"``: one chartable ``{prefix}/{layer}/status`` per layer
            (`STATUS_CODES`: 0 ok, 1 vanishing, 2 exploding, 3 nonfinite); ``"table"``: a
            ``{prefix}/statuses`` table of (layer, status, spike, reason) at every record.
        **init_kwargs: Passed to ``wandb.init`` when this logger starts its own run.

    Raises:
        ImportError: wandb is not installed (``pip install wandb``, or
            ``pip install -e '.[wandb]'`` in a gradwatch checkout).
    """

    def __init__(self, run: Any = None, *, prefix: str = "grad",
                 statuses: Literal["number", "table"] = "number", **init_kwargs: Any) -> None:
        self._wandb = _import_wandb()
        if not isinstance(prefix, str) or not prefix:
            raise ValueError(f"Expected `prefix` to be a non-empty string, but got {prefix!r}.")
        if statuses not in ("number", "table"):
            raise ValueError(f"Expected `statuses` to be 'number' or 'table', but got "
                             f"{statuses!r}.")
        if run is not None and not callable(getattr(run, "log", None)):
            raise TypeError(f"Expected `run` to be a wandb run (with a log method), but got "
                            f"{type(run).__name__}; fix by passing wandb.init(...) or None.")
        if run is not None and init_kwargs:
            raise ValueError(f"Expected either `run` or wandb.init keyword arguments, but got "
                             f"both (run and {sorted(init_kwargs)}); pass one of them.")
        self.prefix, self.statuses = prefix, statuses
        self._run, self._owned, self._init_kwargs = run, False, init_kwargs
        self._header: dict[str, Any] | None = None
        self._closed = False

    @property
    def run(self) -> Any:
        """The wandb run records go to (resolved, or started, at first use)."""
        if self._closed:
            raise RuntimeError("This WandbLogger is closed; create a new one for a new run.")
        if self._run is None:
            if self._wandb.run is not None and not self._init_kwargs:
                self._run = self._wandb.run
            else:
                self._run, self._owned = self._wandb.init(**self._init_kwargs), True
        return self._run

    def start_run(self, header: Mapping[str, Any]) -> None:
        """Stores the run header (thresholds, layers, options) in ``run.config[prefix]``."""
        if not isinstance(header, Mapping):
            raise TypeError(f"Expected `header` to be a mapping, but got "
                            f"{type(header).__name__}.")
        self._header = _plain(header)
        self.run.config.update({self.prefix: self._header}, allow_val_change=True)

    def __call__(self, record: StepRecord) -> None:
        row, tables = history_row(record, prefix=self.prefix, statuses=self.statuses)
        for key, (columns, rows) in tables.items():
            row[key] = self._wandb.Table(columns=columns, data=rows)
        self.run.log(row, step=record.step)

    def close(self) -> None:
        """Finishes a run this logger started (a borrowed run keeps running); safe twice."""
        if self._owned and self._run is not None:
            self._run.finish()
        self._run, self._owned, self._closed = None, False, True

    def __repr__(self) -> str:
        where = ("closed" if self._closed else "unresolved" if self._run is None
                 else getattr(self._run, "id", "run"))
        return f"WandbLogger(run={where!r}, prefix={self.prefix!r}, statuses={self.statuses!r})"
