"""Continual-learning metrics on accuracy matrices (pure numpy).

``matrix[r, c]`` is the accuracy (%) on task c's classes (or domain) after training task r,
r = 0..R-1, c = 0..C-1 with R <= C. Entries above the diagonal (tasks not seen yet) may be NaN and
are never used.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["paired_difference", "forgetting", "first_task_forgetting", "seen_average_per_row"]


def _as_matrix(matrix: np.ndarray | list) -> np.ndarray:
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"accuracy matrix must be 2-D, got shape {m.shape}")
    rows, cols = m.shape
    if rows == 0:
        raise ValueError("accuracy matrix has no rows")
    if rows > cols:
        raise ValueError(f"accuracy matrix has more rows ({rows}) than tasks ({cols})")
    lower = m[np.tril_indices(rows, 0, cols)]
    if not np.all(np.isfinite(lower)):
        raise ValueError("accuracy matrix has non-finite entries on or below the diagonal")
    return m


def forgetting(matrix: np.ndarray | list) -> np.ndarray:
    """Forgetting of each task t < R-1 (standard definition, Chaudhry et al. 2018):

    ``f_t = max_{t <= j <= R-2} acc[j, t] - acc[R-1, t]``, the drop from the best accuracy the task
    had between learning it and the last step to its final accuracy. Returns an array of length
    R-1 (empty when R == 1).
    """
    m = _as_matrix(matrix)
    last = m.shape[0] - 1
    out = np.empty(last, dtype=np.float64)
    for t in range(last):
        out[t] = m[t:last, t].max() - m[last, t]
    return out


def first_task_forgetting(matrix: np.ndarray | list) -> float:
    """``acc[0, 0] - acc[R-1, 0]``: accuracy on task 0 right after learning it minus the final."""
    m = _as_matrix(matrix)
    return float(m[0, 0] - m[-1, 0])


def seen_average_per_row(matrix: np.ndarray | list) -> np.ndarray:
    """Mean of row r over tasks 0..r for every r (the last column of the paper's Figure 4)."""
    m = _as_matrix(matrix)
    return np.array([m[r, : r + 1].mean() for r in range(m.shape[0])], dtype=np.float64)


def paired_difference(a: Sequence[float], b: Sequence[float]) -> tuple[float, float | None]:
    """Mean of ``a - b`` over paired runs (seeds) and the two-sided paired t-test p-value
    (None with fewer than two pairs, or when every difference is the same, where the t statistic
    is undefined)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired samples must be two equal-length 1-D sequences, got {a.shape} and {b.shape}")
    d = a - b
    if len(d) < 2 or np.all(d == d[0]):
        return float(d.mean()) if len(d) else float("nan"), None
    from scipy import stats

    return float(d.mean()), float(stats.ttest_rel(a, b).pvalue)
