"""Results rows of the figure analyses, in the report's row vocabulary (``pipeline.report``).

The runner builds these mid-run (``pipeline.orchestration.figures``) from ``pipeline.analysis``'s
numbers, so this module stays light: no pandas, no matplotlib, not even torch. Rows come without
the run's common columns (run, backbone, scenario, dataset, seed, ...), which the caller adds.
Each figure's abscissa goes to ``x`` with its ``x_kind`` (``pipeline.results.X_KINDS``), never
to ``lam`` or ``eval_task`` (λ and the evaluated task; left to their defaults here).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only for annotations: building rows never needs torch
    from pipeline.analysis import Histogram, LayerMagnitudes

__all__ = ["consistency_entries", "contribution_entries", "layer_magnitude_entries", "histogram_entries"]


def _entries(metric: str, x_kind: str, items: Iterable[tuple[float, float]], **columns: Any) -> list[dict[str, Any]]:
    return [{"role": "analysis", "metric": metric, "x": float(x), "x_kind": x_kind, "value": float(v), **columns}
            for x, v in items]


def consistency_entries(by_n: Mapping[int, float], *, after_task: int, method: str = "magmax",
                        finetuning: str = "seq") -> list[dict[str, Any]]:
    """Figure 6 rows (without the run's common columns) from ``analysis.update_consistency``."""
    return _entries("consistency_magnitude", "n_consistent", sorted(by_n.items()), method=method,
                    finetuning=finetuning, after_task=int(after_task))


def contribution_entries(shares: Sequence[float], *, finetuning: str, method: str = "magmax") -> list[dict[str, Any]]:
    """Figure 7 rows from ``analysis.contributions`` (after_task = the last task)."""
    return _entries("contribution", "source_task", enumerate(shares), method=method, finetuning=finetuning,
                    after_task=len(shares) - 1)


def layer_magnitude_entries(lm: LayerMagnitudes, *, after_task: int, method: str = "magmax",
                            finetuning: str = "seq") -> list[dict[str, Any]]:
    """Figure 12 rows from ``analysis.mean_magnitude_by_layer`` of tau_MagMax after ``after_task``."""
    common = {"method": method, "finetuning": finetuning, "after_task": int(after_task)}
    rows = [{"role": "analysis", "metric": f"layer_magnitude_{kind}", "value": float(v), **common}
            for kind, v in lm.by_type.items()]
    return rows + _entries("block_magnitude", "block", sorted(lm.by_block.items()), **common)


def histogram_entries(h: Histogram, *, method: str, finetuning: str, after_task: int) -> list[dict[str, Any]]:
    """Figure 13 rows from ``analysis.entry_histogram``: method "task_vector" for tau_t
    (after_task = t) or the merge's name for the merged vector."""
    return _entries("entry_histogram", "bin_centre", zip(h.centres, h.counts), method=method, finetuning=finetuning,
                    after_task=int(after_task))
