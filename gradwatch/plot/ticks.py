"""One log-axis tick style for every gradwatch figure: the same locator and labels everywhere.

An axis is labelled in one style throughout: plain numbers (``0.005``, ``1``, ``2000``) when all
of its ticks lie in `PLAIN_RANGE`, powers of ten (``10^-4``, ``2×10^-4``) otherwise, never
``0.001`` beside ``10^-4``. `log_ticks` sets it on a log axis, `log10_ticks` on an axis of log10
values (a heat map's colour bar).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np

__all__ = ["PLAIN_RANGE", "log_label", "log_ticks", "log10_positions", "log10_ticks"]

PLAIN_RANGE = (1e-3, 1e4)  # an axis whose ticks all lie here is labelled 0.005, 1, 2000


def log_label(v: float, plain: bool) -> str:
    """One tick label of a log axis: a plain number (``0.5``, ``20``) or a power of ten
    (``10^-4``, ``2×10^-4``) for every tick of the axis alike (see `LogTickFormatter`)."""
    if v <= 0 or not math.isfinite(v):
        return ""
    if plain:
        return f"{v:g}"
    exp = math.floor(math.log10(v) + 1e-9)
    mant = v / 10 ** exp
    return f"$10^{{{exp}}}$" if abs(mant - 1) < 1e-6 else f"${mant:.2g}\\times10^{{{exp}}}$"


def _plain(values: Iterable[float]) -> bool:
    vals = [v for v in values if v > 0 and math.isfinite(v)]
    return bool(vals) and all(PLAIN_RANGE[0] <= v <= PLAIN_RANGE[1] for v in vals)


def _formatter(exponents: bool = False) -> Any:
    from matplotlib.ticker import Formatter

    class LogTickFormatter(Formatter):
        """Labels every tick of a log axis in one style: plain numbers when all of the axis'
        ticks lie in `PLAIN_RANGE`, powers of ten otherwise (never ``0.001`` beside
        ``10^-4``). With ``exponents`` the axis holds log10 values (a colour bar of log10
        norms) and is labelled with the norms they stand for."""

        def format_ticks(self, values: Sequence[float]) -> list[str]:
            lo, hi = sorted(self.axis.get_view_interval()) if self.axis else (-math.inf, math.inf)
            shown = [v for v in values if lo <= v <= hi] or list(values)
            plain = _plain(10.0 ** np.asarray(shown) if exponents else shown)
            return [log_label(10.0 ** v if exponents else v, plain) for v in values]

        def __call__(self, x: float, pos: int | None = None) -> str:
            view = list(self.axis.get_view_interval()) if self.axis else []
            vals = 10.0 ** np.asarray(view + [x]) if exponents else view + [x]
            return log_label(10.0 ** x if exponents else x, _plain(vals))

    return LogTickFormatter()


def log10_positions(lo: float, hi: float, most: int = 9) -> list[float]:
    """Tick positions on an axis of log10 values from ``lo`` to ``hi``: whole decades when at
    least two fit (every k-th decade past ``most``), else log10 of 1, 2, 5 × 10^k, else of
    1..9 × 10^k; never the fractional exponents (0.0251189) a plain locator picks."""
    lo, hi = min(lo, hi), max(lo, hi)
    decades = list(range(math.ceil(lo - 1e-9), math.floor(hi + 1e-9) + 1))
    if len(decades) >= 2:
        step = max(1, math.ceil(len(decades) / most))
        return [float(d) for d in decades[::step]]
    for mantissas in ((1, 2, 5), tuple(range(1, 10))):
        found = [math.log10(m) + k for k in range(math.floor(lo) - 1, math.ceil(hi) + 1)
                 for m in mantissas if lo - 1e-9 <= math.log10(m) + k <= hi + 1e-9]
        if len(found) >= 2:
            return found
    rounded = {math.log10(float(f"{10 ** v:.2g}")) for v in np.linspace(lo, hi, 3)}
    return sorted(v for v in rounded if lo - 0.05 <= v <= hi + 0.05)  # 2-digit labels


def log10_ticks(axis: Any) -> None:
    """Ticks on an axis of log10 values (a colour bar) whose limits are set, at whole decades
    (or 1, 2, 5 × 10^k on a range under two decades: `log10_positions`), labelled with the
    values themselves in `log_ticks`' style (``10^-4``, not ``-4``)."""
    from matplotlib.ticker import FixedLocator

    lo, hi = axis.get_view_interval()
    axis.set_major_locator(FixedLocator(log10_positions(float(lo), float(hi))))
    axis.set_major_formatter(_formatter(exponents=True))


def log_ticks(axis: Any) -> None:
    """Readable major ticks on a log axis whose limits are set: about 4-9 labels.

    Less than half a decade gets 1..9 × 10^k, up to two decades 1, 2, 5 × 10^k, more every
    decade (matplotlib thins wide ranges); every label of the axis in one style (`log_label`).
    """
    from matplotlib.ticker import LogLocator, NullFormatter

    lo, hi = sorted(axis.get_view_interval())
    decades = math.log10(hi / lo) if lo > 0 and hi > lo else 10.0
    subs: Any = (1.0,)
    if decades < 0.7:
        subs = tuple(float(k) for k in range(1, 10))
    elif decades < 2.2:
        subs = (1.0, 2.0, 5.0)
    axis.set_major_locator(LogLocator(base=10, subs=subs, numticks=10))
    axis.set_major_formatter(_formatter())
    axis.set_minor_formatter(NullFormatter())
