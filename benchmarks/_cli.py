"""Argument types shared by the benchmark scripts: a bad flag is a usage error before anything runs.

Each function here is an ``argparse`` ``type=``: it raises ``argparse.ArgumentTypeError``, which
argparse prints as one line naming the flag (``overhead.py: error: argument --threads: ...``)
and exit code 2, instead of a traceback from torch after minutes of measuring.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
from typing import Callable, Iterable

__all__ = ["positive_int", "positive_float", "seconds", "int_list", "name_list", "out_file"]

MODELS = ("mlp", "resnet18", "transformer", "tiny")
"""The models every timing script builds (`_workloads.make_workload`, `peers.workload`)."""


def positive_int(text: str) -> int:
    """An integer >= 1 (threads, steps, depths): torch refuses 0 threads, a 0-layer net has no
    parameters to optimise."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (a time budget in seconds)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def seconds(text: str) -> float:
    """A finite time budget >= 0 seconds; 0 times the fewest rounds a script allows (its
    presets and the smoke tests use that)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def int_list(text: str) -> list[int]:
    """Comma-separated positive integers, e.g. ``25,100``; ``''`` is the empty list (skip)."""
    items = [t for t in text.split(",") if t.strip()]
    try:
        return [positive_int(t) for t in items]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected positive integers separated by commas (e.g. 25,100), got {text!r}"
        ) from None


def name_list(choices: Iterable[str] = MODELS, *,
              chains: bool = False) -> Callable[[str], list[str]]:
    """A type for comma-separated names from ``choices`` (``chain<L>`` too when ``chains``)."""
    known = tuple(choices)

    def parse(text: str) -> list[str]:
        names = [t.strip() for t in text.split(",") if t.strip()]
        bad = [n for n in names
               if n not in known and not (chains and re.fullmatch(r"chain[1-9]\d*", n))]
        if bad:
            extra = " or chain<L> (e.g. chain100)" if chains else ""
            raise argparse.ArgumentTypeError(
                f"unknown name(s) {', '.join(map(repr, bad))}; choose from "
                f"{', '.join(known)}{extra}, separated by commas")
        return names

    parse.__name__ = "names"
    return parse


def out_file(text: str) -> str:
    """A JSON file the script can write at the end: not a folder, its folder creatable and
    writable (checked now by creating it and a probe file, which is removed)."""
    path = os.path.abspath(os.path.expanduser(text))
    if os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{text!r} is a folder; name a file, e.g. "
                                         f"{os.path.join(text, 'results.json')!r}")
    folder = os.path.dirname(path)
    probe = folder
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise argparse.ArgumentTypeError(f"{text!r} lies under {probe!r}, which is a file, "
                                         f"not a folder; pass another path")
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise argparse.ArgumentTypeError(f"{text!r} cannot be written "
                                         f"({err.strerror or err}); pass another path") from None
    return text
