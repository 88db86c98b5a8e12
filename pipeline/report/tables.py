"""The report's tables as DataFrames, from a run's results rows alone (no rendering, no files).

- ``final_table``: every final result, one column per scenario (``table.md``).
- ``analysis_table``: an analysis metric per method and scenario (forgetting, chance in the index).
- ``paper_table`` / ``PaperTable``: Tables 1-8 in the paper's layouts, our numbers (means and
  stds over seeds) beside the paper's (``pipeline.paper``); ``available_tables`` says which
  tables a run's rows belong to.

Which paper tables a report holds
=================================
A run directory may hold any subset of scenarios, so the report decides from the rows alone
(``available_tables``): a table is rendered when the run has a final result for one of its cells
on the table's backbone, in one of its own rows -- for Tables 3, 4 and 6, which reprint Table 1
rows, only their new rows count (LwF/EWC + MagMax; sequential RandMix/Avg/TIES; MagMax from
θ_1); Zero-shot/Joint never count (every scenario has them). Every cell the run lacks is shown as
"–" beside the paper's number. ``write_report(..., tables=[...])`` (``make_report --tables``)
renders exactly the tables asked for instead, and ``backbone=`` lays a run on another backbone out
against a table (Table 1's scenarios run with, say, ViT-B-32, beside the paper's ViT-B-16).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline import methods, paper
from pipeline.metrics import paired_difference
from pipeline.report.names import display_name, method_rank, paper_lambdas
from pipeline.report.rows import last_task_only, nan_key, natural_key, scenario_keys, with_column_label


def final_table(df: pd.DataFrame, scenarios: Sequence[str] | None = None) -> pd.DataFrame:
    """Final task-agnostic accuracy (%): rows = methods in paper order, columns = scenarios.

    Values are means over seeds; when any cell has more than one seed, ``table.attrs["std"]``
    maps ``(row label, column)`` to the sample standard deviation. With more than one scenario an
    ``Avg`` column holds each method's mean over scenarios (NaN if a scenario is missing). A
    method that appears with several finetuning modes or λ gets one row per variant, labelled
    e.g. ``MagMax (ind)``. ``scenarios`` fixes the column order (default: natural sort).
    """
    d = df[(df["role"] == "final") & (df["metric"] == "accuracy") & (df["eval_task"] == -1)]
    if d.empty:
        return pd.DataFrame(dtype=float)
    d = with_column_label(d).assign(_lam=lambda x: nan_key(x["lam"]))
    variant = ["method", "finetuning", "_lam"]
    d = last_task_only(d, ["_col", *variant, "seed"])

    per_seed = d.groupby([*variant, "seed", "_col"])["value"].mean().unstack("_col")
    cols = list(scenarios) if scenarios is not None else sorted(per_seed.columns, key=natural_key)
    missing = [c for c in cols if c not in per_seed.columns]
    if missing:
        raise ValueError(f"scenarios not in the final rows: {missing}")
    per_seed = per_seed[cols]
    if len(cols) > 1:
        # Average per seed first so the std of Avg is the spread of whole-benchmark averages.
        per_seed["Avg"] = per_seed[cols].mean(axis=1, skipna=False)
    grouped = per_seed.groupby(level=variant)
    mean, std, count = grouped.mean(), grouped.std(ddof=1), grouped.count()

    keys = sorted(mean.index, key=lambda k: (method_rank(k[0]), k[1], k[2]))
    labels = _variant_labels(keys)
    table = mean.loc[keys]
    table.index = pd.Index([labels[k] for k in keys], name="method")
    table.columns = pd.Index(list(table.columns), name="scenario")
    if (count > 1).to_numpy().any():
        table.attrs["std"] = {
            (labels[k], c): float(std.at[k, c])
            for k in keys for c in table.columns if count.at[k, c] > 1
        }
    return table


def seed_tests(df: pd.DataFrame, reference: tuple[str, str] = ("magmax", "seq")) -> pd.DataFrame:
    """Each method variant's paired difference from MagMax over seeds, per scenario: cells
    ``"-0.46 (p 0.21)"`` (the mean over seeds of variant minus MagMax, and the two-sided paired
    t-test's p-value over the seeds both ran). Empty with fewer than two seeds or no MagMax rows.
    Rows as in ``final_table``."""
    d = df[(df["role"] == "final") & (df["metric"] == "accuracy") & (df["eval_task"] == -1)]
    if d.empty or d["seed"].nunique() < 2:
        return pd.DataFrame(dtype=object)
    d = with_column_label(d).assign(_lam=lambda x: nan_key(x["lam"]))
    variant = ["method", "finetuning", "_lam"]
    d = last_task_only(d, ["_col", *variant, "seed"])
    per_seed = d.groupby([*variant, "_col", "seed"])["value"].mean()
    refs = [k for k in per_seed.index.droplevel(["_col", "seed"]).unique() if tuple(k[:2]) == reference]
    if not refs:
        return pd.DataFrame(dtype=object)
    ref = refs[0]
    cols = sorted(d["_col"].unique(), key=natural_key)
    keys = sorted((k for k in per_seed.index.droplevel(["_col", "seed"]).unique() if k != ref),
                  key=lambda k: (method_rank(k[0]), k[1], k[2]))
    labels = _variant_labels([ref, *keys])
    cells: dict[str, dict[str, str]] = {}
    for k in keys:
        row = {}
        for c in cols:
            try:
                mine, base = per_seed.loc[(*k, c)], per_seed.loc[(*ref, c)]
            except KeyError:
                row[c] = "–"
                continue
            seeds = sorted(set(mine.index) & set(base.index))
            if len(seeds) < 2:
                row[c] = "–"
                continue
            diff, p = paired_difference([mine[s] for s in seeds], [base[s] for s in seeds])
            row[c] = f"{diff:+.2f}" + (f" (p {p:.2g})" if p is not None else " (p –)")
        cells[labels[k]] = row
    table = pd.DataFrame.from_dict(cells, orient="index")[cols]
    table.index.name = f"vs {labels[ref]}"
    table.columns = pd.Index(cols, name="scenario")
    return table


def beyond_table(df: pd.DataFrame) -> pd.DataFrame:
    """"Beyond the paper": the newer merges, each on independent and on sequential fine-tunings
    (``<name> (ind)``, ``<name> (seq)``), beside TIES and MagMax from the same run and, on the
    paper's backbone, the paper's own MagMax; laid out like Table 1 (``final_table``: columns
    scenarios and Avg, means over seeds with ``attrs["std"]``). Empty without a newer merge."""
    beyond = {methods.get(n).row_name for n in methods.BEYOND}
    d = df[df["method"].isin(beyond | {"magmax", "ties"})]
    if not (d["role"].eq("final") & d["method"].isin(beyond)).any():
        return pd.DataFrame(dtype=float)
    table = final_table(d)
    keys = scenario_keys(d).join(d[["scenario", "backbone"]])
    paper_row = {}
    for col in table.columns:
        k = keys[keys["scenario"] == col]
        if k.empty or k["backbone"].iloc[0] != paper.TABLE_BACKBONES["table1"]:
            continue
        dataset, kind, tasks = k[["_dataset", "_kind", "_tasks"]].iloc[0]
        for name in ("table1", "table2"):
            v = paper.lookup(name, "magmax", "seq", dataset, kind, None if pd.isna(tasks) else int(tasks))
            if not np.isnan(v):
                paper_row[col] = v
                break
    if paper_row:
        row = pd.Series({c: paper_row.get(c, np.nan) for c in table.columns}, name="MagMax (paper)")
        if "Avg" in table.columns:
            data = [c for c in table.columns if c != "Avg"]
            row["Avg"] = row[data].mean(skipna=False)
        attrs = dict(table.attrs)
        table = pd.concat([table, row.to_frame().T])
        table.index.name, table.attrs = "method", attrs
    return table


def _variant_labels(keys: Sequence[tuple[str, str, float]]) -> dict[tuple[str, str, float], str]:
    """Display labels; qualifiers only where one method has several variants."""
    by_method: dict[str, list[tuple[str, str, float]]] = {}
    for k in keys:
        by_method.setdefault(k[0], []).append(k)
    labels = {}
    for method, ks in by_method.items():
        several_ft = len({k[1] for k in ks}) > 1
        several_lam = len({k[2] for k in ks}) > 1
        for k in ks:
            quals = []
            if several_ft:
                quals.append(k[1])
            if several_lam:
                quals.append("λ=n/a" if k[2] < 0 else f"λ={k[2]:.2f}")
            labels[k] = display_name(method) + (f" ({', '.join(quals)})" if quals else "")
    return labels


def analysis_table(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean over seeds of an analysis metric: rows = methods (paper order), columns = scenarios;
    ``attrs["std"]`` as in ``final_table`` where several seeds ran."""
    d = df[(df["role"] == "analysis") & (df["metric"] == metric)]
    if d.empty:
        return pd.DataFrame(dtype=float)
    d = with_column_label(d)
    grouped = d.groupby(["method", "_col", "seed"])["value"].mean().groupby(["method", "_col"])
    mean, std, count = (x.unstack("_col") for x in (grouped.mean(), grouped.std(ddof=1), grouped.count()))
    cols = sorted(mean.columns, key=natural_key)
    rows = sorted(mean.index, key=method_rank)
    t = mean.loc[rows, cols]
    t.index = pd.Index([display_name(m) for m in rows], name="method")
    if (count.fillna(0) > 1).to_numpy().any():
        t.attrs["std"] = {(display_name(m), c): float(std.at[m, c])
                          for m in rows for c in cols if count.at[m, c] > 1}
    return t


# --------------------------------------------------------------------------------------------
# Tables 1-8 in the paper's layouts


def _one_lambda(d: pd.DataFrame) -> pd.DataFrame:
    """Keep one λ per final result: the paper's λ where a group has several."""
    keys = ["scenario", "dataset", "_method", "finetuning", "seed"]
    several = d.groupby(keys)["_lam"].transform("nunique") > 1
    default = d["method"].map(paper_lambdas()).fillna(-2.0).to_numpy()
    kept = d[~several | np.isclose(d["_lam"].to_numpy(), default)]
    groups = set(d[keys].itertuples(index=False, name=None))
    lost = groups - set(kept[keys].itertuples(index=False, name=None))
    if lost:
        raise ValueError(f"final rows with several λ and none of them the paper's: {sorted(lost)[0]}")
    return kept


def _final_rows(df: pd.DataFrame, backbone: str) -> pd.DataFrame:
    """Final accuracies of ``backbone``: one per (scenario, dataset, method, finetuning, seed)."""
    d = df[(df["role"] == "final") & (df["metric"] == "accuracy") & (df["eval_task"] == -1)
           & (df["backbone"] == backbone)]
    d = d.join(scenario_keys(df).loc[d.index])
    d = d.assign(_method=[paper.canonical_method(m, f) for m, f in zip(d["method"], d["finetuning"])],
                 _lam=nan_key(d["lam"]))
    d = last_task_only(d, ["scenario", "dataset", "_method", "finetuning", "_lam", "seed"])
    return _one_lambda(d) if not d.empty else d


@dataclass(frozen=True)
class PaperTable:
    """One of the paper's tables filled with a run's numbers.

    ``ours``, ``std`` and ``paper`` are indexed by row position in ``layout.rows`` (Δ labels
    repeat) with one column per ``layout.columns`` label. ``ours`` holds means over seeds (NaN:
    not in the run), ``std`` the sample std (NaN with fewer than two seeds), ``paper`` the printed
    numbers with the Δ cells derived from them.
    """

    layout: paper.TableLayout
    backbone: str
    ours: pd.DataFrame
    std: pd.DataFrame
    paper: pd.DataFrame
    seeds: tuple[int, ...]


def _is_data(col: paper.LayoutColumn) -> bool:
    return col.dataset not in ("avg", "delta_avg")


_CELL_KEYS = ["_method", "finetuning", "_dataset", "_kind"]


def _cell_means(d: pd.DataFrame) -> tuple[dict, dict]:
    """Per-seed means of the final rows, keyed (method, finetuning, dataset, kind, tasks, seed)
    and, for cells that do not depend on the split, (method, finetuning, dataset, kind, seed)."""
    if d.empty:
        return {}, {}
    by_split = d.dropna(subset=["_tasks"]).groupby([*_CELL_KEYS, "_tasks", "seed"])["value"].mean()
    by_dataset = d.groupby([*_CELL_KEYS, "seed"])["value"].mean()
    return by_split.to_dict(), by_dataset.to_dict()


def _per_seed(cells: tuple[dict, dict], seeds: Sequence[int], layout: paper.TableLayout,
              row: paper.LayoutRow) -> np.ndarray:
    """Seeds x layout columns for one layout row (Avg per seed, so its std is a run-level std)."""
    by_split, by_dataset = cells
    cols = layout.columns
    out = np.full((len(seeds), len(cols)), np.nan)
    method = paper.canonical_method(row.method, row.finetuning)
    data = [j for j, c in enumerate(cols) if _is_data(c)]
    for j in data:
        c = cols[j]
        key = (method, row.finetuning, c.dataset, c.kind)
        for i, s in enumerate(seeds):
            # Zero-shot/Joint do not depend on the split: every split of the dataset counts.
            if row.reference or c.tasks is None:
                out[i, j] = by_dataset.get((*key, s), np.nan)
            else:
                out[i, j] = by_split.get((*key, c.tasks, s), np.nan)
    for j, c in enumerate(cols):
        if c.dataset == "avg":
            # The paper's Avg: mean over its scenario columns, Zero-shot/Joint once per split;
            # NaN unless every column is there.
            out[:, j] = out[:, data].mean(axis=1)
    return out


def _seed_stats(per_seed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column means over the seeds present and sample stds (NaN below two seeds)."""
    present = ~np.isnan(per_seed)
    n = present.sum(axis=0)
    total = np.where(present, per_seed, 0.0).sum(axis=0)
    mean = np.divide(total, n, out=np.full(n.shape, np.nan), where=n > 0)
    sq = np.where(present, (per_seed - mean) ** 2, 0.0).sum(axis=0)
    std = np.sqrt(np.divide(sq, n - 1, out=np.full(n.shape, np.nan), where=n > 1))
    return mean, std


def _paper_number(layout: paper.TableLayout, row: paper.LayoutRow, col: paper.LayoutColumn) -> float:
    if not row.method or col.dataset == "delta_avg":
        return math.nan
    tasks = None if row.reference or not _is_data(col) else col.tasks
    return paper.lookup(layout.name, row.method, row.finetuning, col.dataset, col.kind, tasks)


def _derive(frame: pd.DataFrame, layout: paper.TableLayout) -> None:
    """Fill the Δ rows and the Δ Avg column of ``frame`` in place from its other cells."""
    for i, row in enumerate(layout.rows):
        if row.delta is not None:
            a, b = row.delta
            frame.loc[i] = frame.loc[a] - frame.loc[b]
        if row.baseline is not None and "Δ Avg" in frame.columns:
            frame.loc[i, "Δ Avg"] = frame.loc[i, "Avg"] - frame.loc[row.baseline, "Avg"]


def paper_table(df: pd.DataFrame, table: str, backbone: str | None = None) -> PaperTable:
    """``table`` ("table1".."table8") filled from the final rows of ``df``.

    Reads the rows of the table's own backbone unless ``backbone`` names another (to lay a run
    on a different backbone out against the paper's numbers). Cells the run lacks stay NaN.
    """
    if table not in paper.LAYOUTS:
        raise ValueError(f"unknown table {table!r}; known: {', '.join(paper.LAYOUTS)}")
    layout = paper.LAYOUTS[table]
    return _fill(layout, _final_rows(df, backbone or layout.backbone), backbone or layout.backbone)


def _fill(layout: paper.TableLayout, d: pd.DataFrame, backbone: str) -> PaperTable:
    cells = _cell_means(d)
    all_seeds = sorted(int(s) for s in d["seed"].unique())
    ours = np.full((len(layout.rows), len(layout.columns)), np.nan)
    std = np.full_like(ours, np.nan)
    seeds: set[int] = set()
    for i, row in enumerate(layout.rows):
        if row.delta is not None or not row.method:
            continue
        per_seed = _per_seed(cells, all_seeds, layout, row)
        seeds |= {s for s, values in zip(all_seeds, per_seed) if not np.isnan(values).all()}
        ours[i], std[i] = _seed_stats(per_seed)
    labels = [c.label for c in layout.columns]
    ours_df = pd.DataFrame(ours, columns=labels)
    _derive(ours_df, layout)
    return PaperTable(layout, backbone, ours_df, pd.DataFrame(std, columns=labels), _paper_frame(layout.name),
                      tuple(sorted(seeds)))


@functools.lru_cache(maxsize=None)
def _paper_frame_cached(table: str) -> pd.DataFrame:
    layout = paper.LAYOUTS[table]
    ref = pd.DataFrame([[_paper_number(layout, r, c) for c in layout.columns] for r in layout.rows],
                       columns=[c.label for c in layout.columns], dtype=float)
    _derive(ref, layout)
    return ref


def _paper_frame(table: str) -> pd.DataFrame:
    return _paper_frame_cached(table).copy()


def available_tables(df: pd.DataFrame) -> list[str]:
    """The paper tables a run's rows belong to, in paper order.

    A table belongs when the run holds a final result for one of its cells in one of its
    ``detect`` rows (default: every method row but Zero-shot/Joint, which any scenario of the
    dataset fills), on the table's backbone. Tables 3, 4 and 6 repeat Table 1's rows, so they
    need their own: LwF/EWC + MagMax, sequential RandMix/Avg/TIES, fine-tuning from θ_1.
    """
    found = []
    by_backbone: dict[str, pd.DataFrame] = {}
    for name, layout in paper.LAYOUTS.items():
        if layout.backbone not in by_backbone:
            by_backbone[layout.backbone] = _final_rows(df, layout.backbone)
        pt = _fill(layout, by_backbone[layout.backbone], layout.backbone)
        rows = layout.detect if layout.detect is not None else range(len(layout.rows))
        rows = [i for i in rows if layout.rows[i].delta is None and not layout.rows[i].reference]
        if pt.ours.loc[rows].notna().to_numpy().any():
            found.append(name)
    return found
