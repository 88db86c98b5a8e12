"""Selecting and shaping results rows (``pipeline.results`` schema), shared by the tables and
the figures: column labels, the final model's rows, scenario keys, accuracy matrices, λ-sweep
curves, leave-one-out differences. pandas and numpy only; which rows mean what is the package's
"Row vocabulary" (``pipeline.report``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd


def natural_key(text: str) -> tuple:
    # "cifar100/5" before "cifar100/10": digits compare as numbers.
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text))


def with_column_label(d: pd.DataFrame) -> pd.DataFrame:
    """Add ``_col``: the scenario, qualified by the backbone only when the frame mixes backbones."""
    if d["backbone"].nunique() > 1:
        col = d["scenario"] + " [" + d["backbone"] + "]"
    else:
        col = d["scenario"]
    return d.assign(_col=col)


def last_task_only(d: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Rows at the largest ``after_task`` within each group of ``keys`` (the final model)."""
    if d.empty:
        return d
    last = d.groupby(list(keys), dropna=False)["after_task"].transform("max")
    return d[d["after_task"] == last]


def nan_key(lam: pd.Series) -> pd.Series:
    # NaN λ never equals itself, which breaks grouping and matching; -1 is outside every λ range.
    return lam.fillna(-1.0)


def has_rows(df: pd.DataFrame, role: str, metric: str | None = None) -> bool:
    """Whether ``df`` has a row of ``role`` (and of ``metric`` when given)."""
    mask = df["role"] == role
    if metric is not None:
        mask &= df["metric"] == metric
    return bool(mask.any())


def scenario_keys(df: pd.DataFrame) -> pd.DataFrame:
    """Per row of ``df`` the (dataset, kind, tasks) that paper columns are keyed by.

    Columns ``_dataset``, ``_kind``, ``_tasks`` (nullable Int64) on ``df``'s index. kind is
    "domain_incremental" for a label ending in "/dil", "multi_dataset" for a scenario whose final
    rows name several datasets, else "class_incremental"; tasks is the label's "/<n>", else
    1 + the scenario's largest after_task (NA for multi_dataset).
    """
    final = df[df["role"] == "final"]
    multi = set(final.groupby("scenario")["dataset"].nunique().loc[lambda n: n > 1].index)
    last = df.groupby("scenario")["after_task"].max()
    kinds: dict[str, str] = {}
    tasks: dict[str, Any] = {}
    for label in df["scenario"].unique():
        m = re.search(r"/(\d+)$", label)
        if label.endswith("/dil"):
            kinds[label] = "domain_incremental"
        elif label in multi:
            kinds[label] = "multi_dataset"
        else:
            kinds[label] = "class_incremental"
        if kinds[label] == "multi_dataset":
            tasks[label] = pd.NA
        elif m:
            tasks[label] = int(m.group(1))
        else:
            tasks[label] = int(last[label]) + 1 if last[label] >= 0 else pd.NA
    return pd.DataFrame({
        "_dataset": df["dataset"],
        "_kind": df["scenario"].map(kinds),
        "_tasks": pd.array([tasks[s] for s in df["scenario"]], dtype="Int64"),
    }, index=df.index)


def _one_scenario(d: pd.DataFrame, scenario: str | None, what: str) -> pd.DataFrame:
    if scenario is not None:
        return d[d["scenario"] == scenario]
    found = sorted(d["scenario"].unique(), key=natural_key)
    if len(found) > 1:
        raise ValueError(f"{what}: several scenarios {found}; pass scenario=")
    return d


def accuracy_matrix(df: pd.DataFrame, method: str, scenario: str | None = None) -> np.ndarray:
    """T x T matrix from the "matrix" rows: ``[r, c]`` = accuracy (%) on task c's classes after
    training task r, mean over seeds; NaN where no row exists. T = 1 + the largest task index.

    Raises ValueError when ``scenario`` is None and several scenarios are present, or when the
    rows mix backbones/finetuning modes/λ (filter the frame first), or when no row matches.
    """
    d = df[(df["role"] == "matrix") & (df["metric"] == "accuracy") & (df["method"] == method)
           & (df["after_task"] >= 0) & (df["eval_task"] >= 0)]
    d = _one_scenario(d, scenario, f"accuracy_matrix({method!r})")
    if d.empty:
        raise ValueError(f"no matrix rows for method {method!r}" + (f" in {scenario!r}" if scenario else ""))
    variants = d[["backbone", "finetuning"]].assign(lam=nan_key(d["lam"])).drop_duplicates()
    if len(variants) > 1:
        raise ValueError(f"matrix rows of {method!r} mix variants {variants.to_dict('records')}; filter first")
    cells = d.groupby(["after_task", "eval_task"])["value"].mean()
    size = int(max(d["after_task"].max(), d["eval_task"].max())) + 1
    matrix = np.full((size, size), np.nan)
    for (r, c), v in cells.items():
        matrix[int(r), int(c)] = v
    return matrix


def seen_average(matrix: np.ndarray) -> np.ndarray:
    """Per row r: mean accuracy on tasks 0..r (the paper's last column), ignoring NaN."""
    out = np.full(matrix.shape[0], np.nan)
    for r in range(matrix.shape[0]):
        seen = matrix[r, : r + 1]
        if np.isfinite(seen).any():
            out[r] = np.nanmean(seen)
    return out


def matrix_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The accuracy-matrix rows (Figures 4 and 11) with both task indices set."""
    return df[(df["role"] == "matrix") & (df["metric"] == "accuracy") & (df["eval_task"] >= 0)
              & (df["after_task"] >= 0)]


def sweep_curves(df: pd.DataFrame) -> pd.DataFrame:
    """Figure 9's curves, mean over seeds of the final model's sweep accuracy: columns method,
    _col, lam, value, rel."""
    d = df[(df["role"] == "sweep") & (df["metric"] == "accuracy") & (df["eval_task"] == -1)]
    d = d[d["lam"].notna()]
    if d.empty:
        return pd.DataFrame(columns=["method", "_col", "lam", "value", "rel"])
    d = with_column_label(d)
    d = last_task_only(d, ["_col", "method", "finetuning"])
    curves = d.groupby(["method", "_col", "lam"], as_index=False)["value"].mean()
    curves["rel"] = curves["value"] - curves.groupby(["method", "_col"])["value"].transform("max")
    return curves


def leave_one_out_delta(part: pd.DataFrame) -> tuple[np.ndarray, list[int], list[int]]:
    """Figure 8's grid: (left-out task x evaluated task) accuracy minus the all-task merge's;
    eval -1 last."""
    left_out = part["x"].where(part["x_kind"] == "left_out", -1).astype(int)  # -1: the all-task merge
    cells = part.assign(left_out=left_out).groupby(["left_out", "eval_task"])["value"].mean()
    if -1 not in cells.index.get_level_values(0):
        raise ValueError("leave_one_out_accuracy rows lack the all-task merge (x_kind '')")
    left = sorted(t for t in cells.index.get_level_values(0).unique() if t >= 0)
    evals = sorted(e for e in cells.index.get_level_values(1).unique() if e >= 0)
    evals += [-1] if -1 in cells.index.get_level_values(1) else []
    delta = np.full((len(left), len(evals)), np.nan)
    for i, t in enumerate(left):
        for j, e in enumerate(evals):
            if (t, e) in cells.index and (-1, e) in cells.index:
                delta[i, j] = cells[(t, e)] - cells[(-1, e)]
    return delta, left, evals
