"""The statuses a layer can get at a step, by code, and how each is shown."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = ["Status", "STATUS_CODES", "StatusInfo", "STATUSES", "status_info"]


class Status(str, Enum):
    """Verdict on one layer's gradient at one step."""

    OK = "ok"
    VANISHING = "vanishing"
    EXPLODING = "exploding"
    NONFINITE = "nonfinite"
    DIVERGING = "diverging"
    DEAD = "dead"
    SATURATED = "saturated"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class StatusInfo:
    """How a status is shown: its label, whether it is an alarm, and its colour in plots."""

    label: str
    alarm: bool
    color: str


STATUS_CODES: tuple[Status, ...] = tuple(Status)
"""Statuses by code (``Status.OK`` is 0), as the columns of records store them."""

STATUSES: dict[Status, StatusInfo] = {
    Status.OK: StatusInfo("ok", False, "#4c72b0"),
    Status.VANISHING: StatusInfo("vanishing", True, "#dd8452"),
    Status.EXPLODING: StatusInfo("exploding", True, "#c44e52"),
    Status.NONFINITE: StatusInfo("non-finite", True, "#8c1c13"),
    Status.DIVERGING: StatusInfo("diverging", True, "#8172b3"),
    Status.DEAD: StatusInfo("dead", True, "#55a868"),  # dead units, or a gradient of 0
    Status.SATURATED: StatusInfo("saturated", True, "#937860"),
}
"""The one table of statuses that the summary, the report and the plots read."""


def status_info(status: Status | str) -> StatusInfo:
    """The `StatusInfo` of ``status``; an unknown status gets a neutral grey alarm style."""
    try:
        return STATUSES[Status(status)]
    except (ValueError, KeyError):
        return StatusInfo(str(status), True, "#7f7f7f")
