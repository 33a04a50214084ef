"""The bench report's words: claim-table cells, durations, the budget paragraph.

Shared by the report writer (`writeup`) and ``scripts/readme_table.py``; a claim is a `Claim`
or its dict from ``results.json``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from .common import Budget

__all__ = ["reproduced_text", "duration", "get_field", "seeds_cell", "quant_cell", "CLAIM_COLUMNS",
           "claim_columns", "plural", "cell", "value_text", "budget_text"]


def reproduced_text(value: Any) -> str:
    """``yes`` / ``**no**`` / ``undecided (budget)`` for True / False / None; strings as given."""
    if value is None:
        return "undecided (budget)"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    return str(value)


def duration(seconds: float) -> str:
    """``< 1 s``, ``12 s``, ``3.4 min``: a wall time a reader takes in at a glance."""
    if seconds < 1:
        return "< 1 s"
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def get_field(claim: Any, key: str, default: Any = "") -> Any:
    return claim.get(key, default) if isinstance(claim, Mapping) else getattr(claim, key, default)


def seeds_cell(c: Any) -> str:
    seeds, behaved = get_field(c, "seeds", 0), get_field(c, "behaved", None)
    if not seeds:
        return "–"
    return f"{behaved}/{seeds}" if behaved is not None else f"? of {seeds}"


def quant_cell(c: Any) -> str:
    if not get_field(c, "quantitative"):
        return "–"
    measured = get_field(c, "quantitative_measured") or "not measured"
    return (f"{get_field(c, 'quantitative')} → {measured}: "
            f"{reproduced_text(get_field(c, 'quantitative_reproduced', None))}")


CLAIM_COLUMNS: tuple[tuple[str, Any, str | None], ...] = (
    ("claim", lambda c: get_field(c, "claim"), None),
    ("source", lambda c: get_field(c, "source"), None),
    ("measured", lambda c: get_field(c, "measured"), None),
    ("spread over seeds", lambda c: get_field(c, "spread") or "–", "spread"),
    ("seeds as claimed", seeds_cell, "seeds"),
    ("reproduced", lambda c: reproduced_text(get_field(c, "reproduced", None)), None),
    ("quantitative part (source → measured)", quant_cell, "quantitative"),
    ("gradwatch verdict", lambda c: get_field(c, "verdict"), None),
)
"""(header, cell of a `Claim` or its JSON dict, field that must be set in some claim for the
column to appear); the report and ``scripts/readme_table.py`` both read this."""


def claim_columns(claims: Sequence[Any]) -> list[tuple[str, Any]]:
    """The `CLAIM_COLUMNS` that some of ``claims`` fill (a column no claim fills is left out)."""
    return [(head, fill) for head, fill, needs in CLAIM_COLUMNS
            if needs is None or any(get_field(c, needs, None) for c in claims)]


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def value_text(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, dict):
        return "; ".join(f"{k}: {value_text(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return ", ".join(value_text(x) for x in v)
    return str(v)


def budget_text(budget: Budget | Mapping[str, Any]) -> str:
    """One paragraph on what the budget gives each experiment (a `Budget` or its JSON dict)."""
    b = dict(budget.__dict__ if isinstance(budget, Budget) else budget)
    train = "all 60,000" if b["mnist_train"] is None else f"the first {b['mnist_train']:,}"
    test = "all 10,000" if b["mnist_test"] is None else f"the first {b['mnist_test']:,}"
    resnet = "all" if b["resnet_train"] is None else f"{b['resnet_train']:,}"
    return (f"Budget: MNIST uses {train} training and {test} test images; epochs per run: "
            f"sigmoid MLP {b['sigmoid_epochs']}, fixed models {b['fixed_epochs']} (ResNet on "
            f"{resnet} images), deep linear {b['linear_epochs']}; grid {b['grid_steps']} steps "
            f"per cell; XOR at most {b['xor_epochs']:,} epochs, depths "
            f"{', '.join(map(str, b['xor_depths']))}, {plural(b['seeds'], 'seed')}; "
            f"{plural(b['mnist_seeds'], 'seed')} per MNIST run. The sources used 10 full MNIST "
            f"epochs and 100,000 XOR epochs (`--full`); claims a smaller budget cannot decide "
            f"say so.")
