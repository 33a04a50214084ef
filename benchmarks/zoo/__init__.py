"""A labelled zoo of short training runs, healthy and broken, to measure gradwatch's verdicts.

Nothing in ``gradwatch`` imports this package. Run it with ``python -m benchmarks.zoo``.
"""

from __future__ import annotations

from .spec import HEALTHY, KINDS, Label, Run, Setup, split_of

__all__ = ["HEALTHY", "KINDS", "Label", "Run", "Setup", "split_of"]
