"""How the report names and orders methods, read from the method table (``pipeline.methods``):
display names, the paper's row order (then every other method in table order), the reference
rows (Zero-shot, Joint) that are never ranked, and the paper's λ per merge."""

from __future__ import annotations

from collections.abc import Sequence

from pipeline import methods
from pipeline.config import MergeConfig

PAPER_METHOD_ORDER: tuple[str, ...] = methods.PAPER_ORDER
REFERENCE_METHODS: tuple[str, ...] = methods.REFERENCES
# Figure 9's panel order (λ sweeps): the paper's four merges first
SWEEP_METHOD_ORDER: tuple[str, ...] = ("magmax", "maxabs", "ties", "randmix", "task_arithmetic")


def paper_lambdas() -> dict[str, float]:
    """The paper's λ for each merge (its config defaults): which row a paper table reads when
    one method has final rows at several λ."""
    return methods.default_lambdas(MergeConfig())


def display_name(method: str) -> str:
    """The display name of a results row's method (the key itself when it has none)."""
    return "Chance" if method == "chance" else methods.display_name(method)


def method_order() -> tuple[str, ...]:
    """The paper's Table 1 order, then every other row name in the method table's order."""
    rest = [m.row_name for m in methods.table() if m.row_name not in PAPER_METHOD_ORDER]
    return (*PAPER_METHOD_ORDER, *dict.fromkeys(rest))


def method_rank(method: str, order: Sequence[str] | None = None) -> tuple[int, str]:
    # Known methods in the given order, unknown ones after them alphabetically.
    order = method_order() if order is None else order
    return (order.index(method), "") if method in order else (len(order), method)
