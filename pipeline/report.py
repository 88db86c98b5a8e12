"""Tables in the paper's layouts and figures, built from a run's results rows alone.

Everything here is a pure function of a results DataFrame (``pipeline.results`` schema) except
the ``plot_*``/``write_*`` functions, which also write files. Figures use matplotlib's object API
(``Figure`` + Agg canvas), never ``pyplot``, so no global backend or figure state is touched and
nothing needs a display.

- ``final_table`` / ``to_markdown`` / ``to_latex``: every final result, one column per scenario
  (``table.md``, whatever the run holds).
- ``paper_table`` / ``paper_markdown`` / ``paper_latex``: Tables 1-8 in the paper's layouts, our
  number beside the paper's (``pipeline.paper``) in every cell; ``available_tables`` says which
  tables a run's rows belong to.
- ``plot_*``: Figures 2-13 (see ``FIGURES``); ``write_report``: all of it with an ``index.md``.

Row vocabulary
==============
The one definition of which results rows each table and figure reads (any other column as in
``pipeline.results``; task indices t in after_task/eval_task are 0-based, as everywhere in the
results). Rows of several seeds are averaged; the std over seeds is shown where there are several.

Tables 1-8 (``table<N>.md``/``.tex``) and ``table.md``
    role="final", metric="accuracy", eval_task=-1, value = task-agnostic top-1 accuracy (%) of the
    final model (the largest after_task of its group). ``backbone`` = ``models.backbone_id``
    (``ViT-B-16/openai`` for Tables 1-6, ``ViT-L-14/openai`` Table 7,
    ``ViT-B-16/laion400m_e32`` Table 8). (method, finetuning), one row of the paper each:
    zero_shot/none, joint/joint, lwf/lwf, ewc/ewc, randmix|avg|ties/ind (Tables 1-5) and /seq
    (Tables 4, 5), maxabs/ind (magmax/ind is read as the same thing: Table 4 "MagMax Ind",
    Table 6 "θ_0"), magmax/seq, magmax/first (Table 6 "θ_1": task t fine-tuned from θ_1),
    lwf_magmax/lwf and ewc_magmax/ewc (Table 3). Where one group has several λ, the paper's λ
    (``DEFAULT_LAMBDA``) is taken. A column is (dataset, kind, tasks) of the row's scenario:
    label "<dataset>/<tasks>" = class-incremental (cifar100/10; Table 2's CIL columns are
    domainnet/6 and imagenet_r/15), "<dataset>/dil" = domain-incremental; a scenario whose
    final rows name several datasets is the eight-dataset sequence of Table 5 (one final row
    per evaluated dataset, ``dataset`` = that dataset, e.g. scenario "8datasets"). Any other
    label counts as class-incremental with 1 + its largest after_task tasks.
Figure 2 (pruning)
    role="analysis", metric="prune_accuracy", method="highest"|"lowest"|"random",
    lam = fraction of the task vector's entries kept (0..1), value = accuracy (%).
Figures 3 and 10 (sign_conflicts)
    role="analysis", metric="sign_conflicts", method="sign_conflicts", finetuning="ind"|"seq",
    value = fraction (0..1) of parameters in conflict after top-20 % trimming. Every scenario
    present is drawn, grouped by kind (class-/domain-incremental, eight datasets).
Figures 4 and 11 (accuracy_matrices, accuracy_matrices_magmax)
    role="matrix", metric="accuracy", after_task = r, eval_task = c >= 0, value = accuracy (%)
    on task c after training task r. Figure 4 draws seq_ft, avg and magmax (every method
    present if none of those); Figure 11 draws magmax for every scenario (two or more).
Figure 5 (kth_magnitude)
    role="analysis", metric="kth_accuracy", method="kth_magnitude", finetuning="ind"|"seq",
    lam = k (1 = MagMax; merges rescaled to MagMax's norm, ``analysis.kth_magnitude_merges``),
    value = accuracy (%).
Figure 6 (update_consistency)
    role="analysis", metric="consistency_magnitude", method="magmax", finetuning="seq",
    after_task = t (the sequential task vector tau_t), eval_task = n (number of consistent update
    directions), value = mean |tau_t| over those parameters (``analysis.update_consistency`` with
    reference=t; ``consistency_entries``).
Figure 7 (contributions)
    role="analysis", metric="contribution", method="magmax", finetuning="ind"|"seq",
    eval_task = t, value = share (0..1) of parameters the merge takes from tau_t
    (``analysis.contributions``; ``contribution_entries``).
Figure 8 (leave_one_out)
    role="analysis", metric="leave_one_out_accuracy", method="magmax", finetuning="ind"|"seq",
    after_task = the task left out (-1: none, the merge of all tasks), eval_task = evaluated task
    (-1: all classes), value = accuracy (%). Drawn as accuracy minus the all-task merge's.
Figure 9 (lambda_sweep)
    role="sweep", metric="accuracy", eval_task=-1, lam = λ, value = accuracy (%).
Figure 12 (layer_magnitudes)
    role="analysis", method="magmax", finetuning="seq", after_task = t (tau_MagMax after task t),
    metric="layer_magnitude_<type>" (type ln|attn|mlp|embed|other, eval_task=-1) and
    metric="block_magnitude" (eval_task = block index), value = mean |entry|
    (``analysis.mean_magnitude_by_layer``; ``layer_magnitude_entries``).
Figure 13 (entry_distributions)
    role="analysis", metric="entry_histogram", finetuning="ind"|"seq", method="task_vector"
    (after_task = t: tau_t) or the merge (e.g. "magmax", after_task = T-1), eval_task = bin
    index, lam = bin centre, value = count (``analysis.entry_histogram``; ``histogram_entries``).
index.md tables
    role="analysis", metric="first_task_forgetting" | "average_forgetting" (points) | "chance" (%).

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
import os
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize, TwoSlopeNorm
from matplotlib.figure import Figure

from pipeline import paper, results

if TYPE_CHECKING:  # only for annotations: the report never needs torch at run time
    from pipeline.analysis import Histogram, LayerMagnitudes

__all__ = [
    "PAPER_METHOD_ORDER",
    "DISPLAY_NAMES",
    "REFERENCE_METHODS",
    "DEFAULT_LAMBDA",
    "display_name",
    "final_table",
    "to_markdown",
    "to_latex",
    "accuracy_matrix",
    "plot_accuracy_matrices",
    "plot_lambda_sweep",
    "plot_sign_conflicts",
    "scenario_keys",
    "PaperTable",
    "paper_table",
    "paper_markdown",
    "paper_latex",
    "available_tables",
    "plot_pruning",
    "plot_kth_magnitude",
    "plot_update_consistency",
    "plot_contributions",
    "plot_leave_one_out",
    "plot_layer_magnitudes",
    "plot_entry_distributions",
    "consistency_entries",
    "contribution_entries",
    "layer_magnitude_entries",
    "histogram_entries",
    "plot_figure4",
    "plot_figure11",
    "FIG4_METHODS",
    "PRUNE_MODES",
    "LAYER_TYPES",
    "FigureSpec",
    "FIGURES",
    "write_report",
]

PAPER_METHOD_ORDER: tuple[str, ...] = (
    "zero_shot", "joint", "lwf", "ewc", "seq_ft", "randmix", "maxabs", "avg", "ties", "magmax",
)
DISPLAY_NAMES: dict[str, str] = {
    "zero_shot": "Zero-shot",
    "joint": "Joint",
    "lwf": "LwF",
    "ewc": "EWC",
    "seq_ft": "Seq-FT",
    "randmix": "RandMix",
    "maxabs": "MaxAbs",
    "avg": "Avg",
    "ties": "TIES",
    "magmax": "MagMax",
    # Methods the runner may emit beyond the paper's Table 1.
    "task_arithmetic": "Task Arithmetic",
    "lwf_magmax": "LwF + MagMax",
    "ewc_magmax": "EWC + MagMax",
    "ind_ft": "Ind-FT",
    "chance": "Chance",
}
# Upper/lower bounds the paper prints above the line and leaves out of the best/second ranking.
REFERENCE_METHODS: tuple[str, ...] = ("zero_shot", "joint")
# The paper's λ for each merging method (design.md); Figure 9 marks these.
DEFAULT_LAMBDA: dict[str, float] = {"magmax": 0.5, "maxabs": 0.5, "ties": 0.55, "randmix": 1.0}
SWEEP_METHOD_ORDER: tuple[str, ...] = ("magmax", "maxabs", "ties", "randmix", "task_arithmetic")

_REFERENCE_LABELS = frozenset(DISPLAY_NAMES[m] for m in REFERENCE_METHODS)


def display_name(method: str) -> str:
    """The paper's name for ``method`` (the key itself when the paper has none)."""
    return DISPLAY_NAMES.get(method, method)


def _method_rank(method: str, order: Sequence[str] = PAPER_METHOD_ORDER) -> tuple[int, str]:
    # Known methods in the given order, unknown ones after them alphabetically.
    return (order.index(method), "") if method in order else (len(order), method)


def _natural_key(text: str) -> tuple:
    # "cifar100/5" before "cifar100/10": digits compare as numbers.
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text))


def _with_column_label(d: pd.DataFrame) -> pd.DataFrame:
    """Add ``_col``: the scenario, qualified by the backbone only when the frame mixes backbones."""
    if d["backbone"].nunique() > 1:
        col = d["scenario"] + " [" + d["backbone"] + "]"
    else:
        col = d["scenario"]
    return d.assign(_col=col)


def _last_task_only(d: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Rows at the largest ``after_task`` within each group of ``keys`` (the final model)."""
    if d.empty:
        return d
    last = d.groupby(list(keys), dropna=False)["after_task"].transform("max")
    return d[d["after_task"] == last]


def _nan_key(lam: pd.Series) -> pd.Series:
    # NaN λ never equals itself, which breaks grouping and matching; -1 is outside every λ range.
    return lam.fillna(-1.0)


# --------------------------------------------------------------------------------------------
# Table 1


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
    d = _with_column_label(d).assign(_lam=lambda x: _nan_key(x["lam"]))
    variant = ["method", "finetuning", "_lam"]
    d = _last_task_only(d, ["_col", *variant, "seed"])

    per_seed = d.groupby([*variant, "seed", "_col"])["value"].mean().unstack("_col")
    cols = list(scenarios) if scenarios is not None else sorted(per_seed.columns, key=_natural_key)
    missing = [c for c in cols if c not in per_seed.columns]
    if missing:
        raise ValueError(f"scenarios not in the final rows: {missing}")
    per_seed = per_seed[cols]
    if len(cols) > 1:
        # Average per seed first so the std of Avg is the spread of whole-benchmark averages.
        per_seed["Avg"] = per_seed[cols].mean(axis=1, skipna=False)
    grouped = per_seed.groupby(level=variant)
    mean, std, count = grouped.mean(), grouped.std(ddof=1), grouped.count()

    keys = sorted(mean.index, key=lambda k: (_method_rank(k[0]), k[1], k[2]))
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


def _is_reference(label: str) -> bool:
    return label.split(" (")[0] in _REFERENCE_LABELS


def _ranks(table: pd.DataFrame) -> pd.DataFrame:
    """Per cell: 1 = best in its column, 2 = second best, 0 otherwise.

    Ranked on the values as printed (2 decimals), so cells that print equal rank equal; rows of
    the reference methods (Zero-shot, Joint) are not ranked and do not compete.
    """
    ranks = pd.DataFrame(0, index=table.index, columns=table.columns)
    ranked_rows = [r for r in table.index if not _is_reference(str(r))]
    for c in table.columns:
        vals = table.loc[ranked_rows, c].astype(float).round(2).dropna()
        distinct = sorted(set(vals), reverse=True)
        for rank, v in enumerate(distinct[:2], start=1):
            ranks.loc[vals.index[vals == v], c] = rank
    return ranks


def _cell_text(table: pd.DataFrame, row: str, col: str, pm: str) -> str:
    v = table.at[row, col]
    if pd.isna(v):
        return "-"
    text = f"{v:.2f}"
    std = table.attrs.get("std", {}).get((row, col))
    if std is not None and not math.isnan(std):
        text += f"{pm}{std:.2f}"
    return text


def to_markdown(table: pd.DataFrame, bold_best: bool = True) -> str:
    """A Markdown table; per column the best value in **bold** and the second <u>underlined</u>.

    Zero-shot and Joint rows are references: printed, never bold/underlined, and not ranked.
    """
    if table.empty:
        return "_No final results._\n"
    ranks = _ranks(table) if bold_best else None
    header = "| Method | " + " | ".join(str(c) for c in table.columns) + " |"
    align = "|:---|" + "---:|" * len(table.columns)
    lines = [header, align]
    for row in table.index:
        cells = []
        for col in table.columns:
            text = _cell_text(table, row, col, " ± ")
            rank = 0 if ranks is None else int(ranks.at[row, col])
            if rank == 1:
                text = f"**{text}**"
            elif rank == 2:
                text = f"<u>{text}</u>"
            cells.append(text)
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}",
                  "λ": r"$\lambda$", "Δ": r"$\Delta$", "θ": r"$\theta$"}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def to_latex(table: pd.DataFrame, bold_best: bool = True) -> str:
    """A LaTeX ``tabular`` (no packages needed): best per column \\textbf, second \\underline,
    the reference rows (Zero-shot, Joint) above a rule and unranked, as in the paper."""
    if table.empty:
        return "% no final results\n"
    ranks = _ranks(table) if bold_best else None
    lines = [
        r"\begin{tabular}{l" + "r" * len(table.columns) + "}",
        r"\hline",
        "Method & " + " & ".join(_latex_escape(str(c)) for c in table.columns) + r" \\",
        r"\hline",
    ]
    previous_ref = None
    for row in table.index:
        ref = _is_reference(str(row))
        if previous_ref and not ref:
            lines.append(r"\hline")
        previous_ref = ref
        cells = []
        for col in table.columns:
            text = _cell_text(table, row, col, r" $\pm$ ")
            rank = 0 if ranks is None else int(ranks.at[row, col])
            if rank == 1:
                text = rf"\textbf{{{text}}}"
            elif rank == 2:
                text = rf"\underline{{{text}}}"
            cells.append(text)
        lines.append(_latex_escape(str(row)) + " & " + " & ".join(cells) + r" \\")
    lines += [r"\hline", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Tables 1-8 in the paper's layouts


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


def _one_lambda(d: pd.DataFrame) -> pd.DataFrame:
    """Keep one λ per final result: the paper's λ where a group has several."""
    keys = ["scenario", "dataset", "_method", "finetuning", "seed"]
    several = d.groupby(keys)["_lam"].transform("nunique") > 1
    default = d["method"].map(DEFAULT_LAMBDA).fillna(-2.0).to_numpy()
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
                 _lam=_nan_key(d["lam"]))
    d = _last_task_only(d, ["scenario", "dataset", "_method", "finetuning", "_lam", "seed"])
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


def _paper_ranks(pt: PaperTable) -> pd.DataFrame:
    """1 = best of ours per column, 2 = second; Zero-shot/Joint, Δ rows and Δ Avg not ranked."""
    ranks = pd.DataFrame(0, index=pt.ours.index, columns=pt.ours.columns)
    ranked = [i for i, r in enumerate(pt.layout.rows) if not r.reference and r.delta is None]
    for c in pt.layout.columns:
        if c.dataset == "delta_avg":
            continue
        vals = pt.ours.loc[ranked, c.label].round(2).dropna()
        for rank, v in enumerate(sorted(set(vals), reverse=True)[:2], start=1):
            ranks.loc[vals.index[vals == v], c.label] = rank
    return ranks


@dataclass(frozen=True)
class _Style:
    bold: Callable[[str], str]
    under: Callable[[str], str]
    pm: str
    beside: Callable[[str], str]   # how the paper's number (and the difference) follows ours
    missing: str


_MD = _Style(lambda t: f"**{t}**", lambda t: f"<u>{t}</u>", " ± ", lambda t: f" / {t}", "–")
_TEX = _Style(lambda t: rf"\textbf{{{t}}}", lambda t: rf"\underline{{{t}}}", r" $\pm$ ",
              lambda t: rf" {{\scriptsize / {t}}}", "--")


def _blank(pt: PaperTable, i: int, j: int) -> bool:
    """Cells the paper leaves empty: a reference row past its dataset's first split, Δ Avg
    outside the rows it compares."""
    row, cols = pt.layout.rows[i], pt.layout.columns
    if row.reference and j > 0 and cols[j].group and cols[j].group == cols[j - 1].group:
        return True
    return cols[j].dataset == "delta_avg" and row.baseline is None


def _num(x: float, signed: bool = False) -> str:
    x = round(float(x), 2) + 0.0  # + 0.0 turns a rounded -0.0 into 0.0: no "-0.00"
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def _paper_cell(pt: PaperTable, i: int, j: int, rank: int, style: _Style) -> str:
    label = pt.layout.columns[j].label
    signed = pt.layout.rows[i].delta is not None or pt.layout.columns[j].dataset == "delta_avg"
    v, sd, p = pt.ours.at[i, label], pt.std.at[i, label], pt.paper.at[i, label]
    text = style.missing if pd.isna(v) else _num(v, signed)
    if not pd.isna(v) and not pd.isna(sd):
        text += f"{style.pm}{_num(sd)}"
    if rank == 1:
        text = style.bold(text)
    elif rank == 2:
        text = style.under(text)
    if not pd.isna(p):
        text += style.beside(_num(p, signed) + ("" if pd.isna(v) else f" ({_num(v - p, True)})"))
    return text


def _caption_lines(pt: PaperTable) -> list[str]:
    seeds = ", ".join(map(str, pt.seeds)) or "none"
    ours = "" if pt.backbone == pt.layout.backbone else f"; ours: {pt.backbone}"
    return [
        f"Paper backbone: {pt.layout.backbone}{ours}. Seeds: {seeds}.",
        "Each cell: ours / paper (ours − paper); ours' best per column in **bold**, second "
        "<u>underlined</u>; – = not in this run.",
    ]


def paper_markdown(pt: PaperTable) -> str:
    """The table as Markdown, rows and columns exactly as the paper prints them."""
    layout = pt.layout
    ranks = _paper_ranks(pt)
    head = [layout.row_header] + (["FT"] if layout.ft_column else []) + [c.label for c in layout.columns]
    lines = [f"### {layout.caption}", "", *_caption_lines(pt), "",
             "| " + " | ".join(head) + " |",
             "|:---|" + (":---|" if layout.ft_column else "") + "---:|" * len(layout.columns)]
    for i, row in enumerate(layout.rows):
        cells = [row.label] + ([row.ft_label] if layout.ft_column else [])
        for j, c in enumerate(layout.columns):
            cells.append("" if _blank(pt, i, j) else _paper_cell(pt, i, j, int(ranks.at[i, c.label]), _MD))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


_LATEX_LABELS = {"θ_0": r"$\theta_0$", "θ_1": r"$\theta_1$", "θ_{t-1}": r"$\theta_{t-1}$",
                 "Initial θ for D_t": r"Initial $\theta$ for $D_t$"}


def _tex_label(text: str) -> str:
    return _LATEX_LABELS.get(text) or _latex_escape(text)


def _groups(cols: Sequence[paper.LayoutColumn]) -> list[tuple[str, int]]:
    """Consecutive columns sharing a group, as (group, span); ungrouped columns span 1."""
    out: list[tuple[str, int]] = []
    for c in cols:
        if c.group and out and out[-1][0] == c.group:
            out[-1] = (c.group, out[-1][1] + 1)
        else:
            out.append((c.group, 1))
    return out


def paper_latex(pt: PaperTable) -> str:
    """The table as a LaTeX ``tabular`` (no packages needed): two header lines where the paper
    groups columns, Zero-shot/Joint spanning their dataset's splits, ours \\textbf / \\underline."""
    layout = pt.layout
    cols = layout.columns
    ranks = _paper_ranks(pt)
    lead = 2 if layout.ft_column else 1
    lines = [f"% {layout.caption}", "% each cell: ours / paper (ours - paper)",
             r"\begin{tabular}{" + "l" * lead + "r" * len(cols) + "}", r"\hline"]
    groups = _groups(cols)
    if any(g for g, _ in groups):
        top, k = [], 0
        for g, span in groups:
            top.append(rf"\multicolumn{{{span}}}{{c}}{{{_tex_label(g)}}}" if g else _tex_label(cols[k].label))
            k += span
        lines.append(" & " * (lead - 1) + " & " + " & ".join(top) + r" \\")
        subs = [_tex_label(c.sub) if c.group else "" for c in cols]
    else:
        subs = [_tex_label(c.label) for c in cols]
    lines += [" & ".join([_tex_label(layout.row_header)] + (["FT"] if layout.ft_column else []) + subs) + r" \\",
              r"\hline"]
    for i, row in enumerate(layout.rows):
        cells = [_tex_label(row.label)] + ([_tex_label(row.ft_label)] if layout.ft_column else [])
        j = 0
        for _, span in groups:
            texts = ["" if _blank(pt, i, k) else _paper_cell(pt, i, k, int(ranks.at[i, cols[k].label]), _TEX)
                     for k in range(j, j + span)]
            if row.reference and span > 1:
                cells.append(rf"\multicolumn{{{span}}}{{c}}{{{texts[0]}}}")
            else:
                cells += texts
            j += span
        lines.append(" & ".join(cells) + r" \\")
        following = layout.rows[i + 1] if i + 1 < len(layout.rows) else None
        if following is not None and (row.reference and not following.reference or row.delta is not None
                                      or row.baseline is not None):
            lines.append(r"\hline")
    lines += [r"\hline", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Figure 4


def _one_scenario(d: pd.DataFrame, scenario: str | None, what: str) -> pd.DataFrame:
    if scenario is not None:
        return d[d["scenario"] == scenario]
    found = sorted(d["scenario"].unique(), key=_natural_key)
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
    variants = d[["backbone", "finetuning"]].assign(lam=_nan_key(d["lam"])).drop_duplicates()
    if len(variants) > 1:
        raise ValueError(f"matrix rows of {method!r} mix variants {variants.to_dict('records')}; filter first")
    cells = d.groupby(["after_task", "eval_task"])["value"].mean()
    size = int(max(d["after_task"].max(), d["eval_task"].max())) + 1
    matrix = np.full((size, size), np.nan)
    for (r, c), v in cells.items():
        matrix[int(r), int(c)] = v
    return matrix


def _seen_average(matrix: np.ndarray) -> np.ndarray:
    """Per row r: mean accuracy on tasks 0..r (the paper's last column), ignoring NaN."""
    out = np.full(matrix.shape[0], np.nan)
    for r in range(matrix.shape[0]):
        seen = matrix[r, : r + 1]
        if np.isfinite(seen).any():
            out[r] = np.nanmean(seen)
    return out


def _save(fig: Figure, path: str | os.PathLike[str], suffixes: Sequence[str]) -> list[Path]:
    FigureCanvasAgg(fig)  # attach an Agg canvas: no pyplot, no backend switch
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    targets = [path] if not suffixes else [path.with_suffix(s) for s in suffixes]
    for t in targets:
        fig.savefig(t, dpi=150, bbox_inches="tight")
    return targets


def plot_accuracy_matrices(df: pd.DataFrame, methods: Sequence[str], path: str | os.PathLike[str],
                           scenario: str | None = None, suffixes: Sequence[str] = ()) -> list[Path]:
    """Figure 4: one annotated heatmap per method side by side (one row per scenario).

    Seen tasks (lower triangle with diagonal) in orange, unseen tasks (upper triangle, the
    zero-shot-like part) in blue, and an extra last column with each row's average accuracy on
    seen tasks. Methods without matrix rows are skipped. Saves ``path`` (or ``path`` with each of
    ``suffixes``, e.g. ``(".png", ".pdf")``); returns the written paths.
    """
    d = df[(df["role"] == "matrix") & (df["metric"] == "accuracy")]
    scen = [scenario] if scenario is not None else sorted(d["scenario"].unique(), key=_natural_key)
    present = set(d["method"])
    methods = [m for m in methods if m in present]
    if not methods or not scen:
        raise ValueError("no matrix rows for the requested methods")
    grid = {(s, m): _matrix_or_none(df, m, s) for s in scen for m in methods}
    finite = [x for g in grid.values() if g is not None for x in g[np.isfinite(g)].ravel()]
    if not finite:
        raise ValueError("matrix rows hold no finite values")
    norm = Normalize(vmin=min(finite), vmax=max(finite))
    size = max(g.shape[0] for g in grid.values() if g is not None)

    cell = 0.55 if size <= 10 else 0.3
    fig = Figure(figsize=(len(methods) * max(3.0, cell * (size + 1) + 1.2), len(scen) * max(2.8, cell * size + 1.0)))
    axes = fig.subplots(len(scen), len(methods), squeeze=False)
    for i, s in enumerate(scen):
        for j, m in enumerate(methods):
            ax = axes[i][j]
            matrix = grid[(s, m)]
            title = display_name(m) if len(scen) == 1 else f"{display_name(m)} — {s}"
            ax.set_title(title, fontsize=10)
            if matrix is None:
                ax.set_axis_off()
                continue
            _draw_matrix(ax, matrix, norm)
    fig.tight_layout()
    return _save(fig, path, suffixes)


def _matrix_or_none(df: pd.DataFrame, method: str, scenario: str) -> np.ndarray | None:
    try:
        return accuracy_matrix(df, method, scenario)
    except ValueError as e:
        if str(e).startswith("no matrix rows"):
            return None
        raise


def _draw_matrix(ax, matrix: np.ndarray, norm: Normalize) -> None:
    t = matrix.shape[0]
    full = np.column_stack([matrix, _seen_average(matrix)])  # T x (T+1)
    rows, cols = np.indices(full.shape)
    seen_mask = (cols <= rows) | (cols == t)
    blues, oranges = matplotlib.colormaps["Blues"], matplotlib.colormaps["Oranges"]
    # Two masked layers sharing one scale: orange for learned tasks (and the average), blue for
    # tasks not trained yet, as in the paper.
    ax.imshow(np.ma.masked_where(seen_mask | ~np.isfinite(full), full), cmap=blues, norm=norm, aspect="auto")
    ax.imshow(np.ma.masked_where(~seen_mask | ~np.isfinite(full), full), cmap=oranges, norm=norm, aspect="auto")
    if t <= 20:
        fontsize = 8 if t <= 6 else 6 if t <= 12 else 4
        for r in range(t):
            for c in range(t + 1):
                v = full[r, c]
                if np.isfinite(v):
                    color = "white" if norm(v) > 0.6 else "black"
                    ax.text(c, r, f"{v:.1f}", ha="center", va="center", fontsize=fontsize, color=color)
    ax.axvline(t - 0.5, color="black", linewidth=1.5)  # separate the average column
    ax.set_xticks(range(t + 1))
    ax.set_xticklabels([str(c + 1) for c in range(t)] + ["Avg"], fontsize=7)
    ax.set_yticks(range(t))
    ax.set_yticklabels([str(r + 1) for r in range(t)], fontsize=7)
    ax.set_xlabel("evaluated task", fontsize=8)
    ax.set_ylabel("after training task", fontsize=8)


# --------------------------------------------------------------------------------------------
# Figure 9


def _sweep_curves(df: pd.DataFrame) -> pd.DataFrame:
    """Mean-over-seeds sweep accuracy of the final model: columns method, _col, lam, value, rel."""
    d = df[(df["role"] == "sweep") & (df["metric"] == "accuracy") & (df["eval_task"] == -1)]
    d = d[d["lam"].notna()]
    if d.empty:
        return pd.DataFrame(columns=["method", "_col", "lam", "value", "rel"])
    d = _with_column_label(d)
    d = _last_task_only(d, ["_col", "method", "finetuning"])
    curves = d.groupby(["method", "_col", "lam"], as_index=False)["value"].mean()
    curves["rel"] = curves["value"] - curves.groupby(["method", "_col"])["value"].transform("max")
    return curves


def plot_lambda_sweep(df: pd.DataFrame, path: str | os.PathLike[str], suffixes: Sequence[str] = ()) -> list[Path]:
    """Figure 9: accuracy relative to the best λ (value - max over λ, in points) against λ.

    One panel per method, one line per scenario (same colour for a scenario in every panel);
    the method's default λ is a dashed vertical line with a marker on each curve.
    """
    curves = _sweep_curves(df)
    if curves.empty:
        raise ValueError("no sweep rows")
    methods = sorted(curves["method"].unique(), key=lambda m: _method_rank(m, SWEEP_METHOD_ORDER))
    scen = sorted(curves["_col"].unique(), key=_natural_key)
    palette = matplotlib.colormaps["tab10" if len(scen) <= 10 else "tab20"]
    colors = {s: palette(i % palette.N) for i, s in enumerate(scen)}

    fig = Figure(figsize=(4.2 * len(methods), 3.4))
    axes = fig.subplots(1, len(methods), squeeze=False)[0]
    for ax, m in zip(axes, methods):
        default = DEFAULT_LAMBDA.get(m)
        for s in scen:
            c = curves[(curves["method"] == m) & (curves["_col"] == s)].sort_values("lam")
            if c.empty:
                continue
            ax.plot(c["lam"], c["rel"], marker=".", color=colors[s], label=s, linewidth=1.2)
            if default is not None:
                at = c[np.isclose(c["lam"], default)]
                if not at.empty:
                    ax.plot(at["lam"], at["rel"], marker="o", markersize=7, markerfacecolor="none",
                            markeredgecolor=colors[s], linestyle="none")
        if default is not None:
            ax.axvline(default, color="gray", linestyle="--", linewidth=1)
            ax.set_title(f"{display_name(m)} (default λ = {default:g})", fontsize=10)
        else:
            ax.set_title(display_name(m), fontsize=10)
        ax.set_xlabel("λ")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy − best λ (pp)")
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    axes[-1].legend(handles, labels, fontsize=7, loc="lower right")
    fig.tight_layout()
    return _save(fig, path, suffixes)


# --------------------------------------------------------------------------------------------
# Figures 3 and 10


_KIND_TITLES = {"class_incremental": "class-incremental", "domain_incremental": "domain-incremental",
                "multi_dataset": "eight datasets"}
_FT_NAMES = {"ind": "Independent", "seq": "Sequential", "first": "From θ_1"}
_FT_COLORS = {"ind": "tab:blue", "seq": "tab:orange", "first": "tab:green"}


def _ft_order(values: Iterable[str]) -> list[str]:
    values = set(values)
    return [m for m in ("ind", "seq", "first") if m in values] + sorted(values - {"ind", "seq", "first"})


def plot_sign_conflicts(df: pd.DataFrame, path: str | os.PathLike[str], suffixes: Sequence[str] = ()) -> list[Path]:
    """Figures 3 and 10: sign conflicts (%) of the top-20% entries, independent vs sequential
    fine-tuning, one bar pair per scenario (error bars = std over seeds when there are several);
    one panel per kind of scenario (class-/domain-incremental, eight datasets) when several."""
    d = df[(df["role"] == "analysis") & (df["metric"] == "sign_conflicts")]
    if d.empty:
        raise ValueError("no sign_conflicts rows")
    d = _with_column_label(d).join(scenario_keys(df).loc[d.index, ["_kind"]])
    stats = d.groupby(["_col", "finetuning"])["value"].agg(["mean", "std", "count"])
    kinds = [k for k in _KIND_TITLES if k in set(d["_kind"])]
    modes = _ft_order(d["finetuning"])
    per_kind = {k: sorted(d.loc[d["_kind"] == k, "_col"].unique(), key=_natural_key) for k in kinds}

    widths = [max(2.0, 1.1 * len(v) + 0.8) for v in per_kind.values()]
    fig = Figure(figsize=(max(4.0, sum(widths) + 0.7), 3.4))
    axes = fig.subplots(1, len(kinds), squeeze=False, gridspec_kw={"width_ratios": widths})[0]
    width = 0.8 / len(modes)
    for ax, kind in zip(axes, kinds):
        scen = per_kind[kind]
        x = np.arange(len(scen))
        for k, mode in enumerate(modes):
            means = np.array([100 * stats["mean"].get((s, mode), np.nan) for s in scen])
            stds = np.array([100 * stats["std"].get((s, mode), np.nan) for s in scen])
            counts = np.array([stats["count"].get((s, mode), 0) for s in scen])
            err = np.where(counts > 1, stds, np.nan)
            pos = x + (k - (len(modes) - 1) / 2) * width
            bars = ax.bar(pos, means, width, label=_FT_NAMES.get(mode, mode), color=_FT_COLORS.get(mode),
                          yerr=None if np.isnan(err).all() else np.nan_to_num(err), capsize=3)
            ax.bar_label(bars, labels=["" if np.isnan(v) else f"{v:.1f}" for v in means], fontsize=7)
        ax.set_xticks(x)
        ax.set_xticklabels(scen, rotation=30 if len(scen) > 4 else 0, ha="right" if len(scen) > 4 else "center",
                           fontsize=8)
        if len(kinds) > 1:
            ax.set_title(_KIND_TITLES[kind], fontsize=9)
        ax.set_ylim(bottom=0)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("sign conflicts (%)")
    # Above the axes: bars reach any height, so an inside legend would cover some.
    axes[0].legend(fontsize=8, ncol=len(modes), loc="lower left", bbox_to_anchor=(0.0, 1.08 if len(kinds) > 1 else 1.0),
                   frameon=False)
    fig.tight_layout()
    return _save(fig, path, suffixes)


# --------------------------------------------------------------------------------------------
# Figures 2, 5-8, 12, 13: analysis rows


def _analysis_rows(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    d = df[(df["role"] == "analysis") & (df["metric"] == metric)]
    if d.empty:
        raise ValueError(f"no {metric} rows")
    return _with_column_label(d)


def _scenarios(d: pd.DataFrame) -> list[str]:
    return sorted(d["_col"].unique(), key=_natural_key)


def _panels(rows: int, cols: int, width: float = 4.2, height: float = 3.3) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(width * cols, height * rows))
    return fig, fig.subplots(rows, cols, squeeze=False)


def _mean_line(ax, d: pd.DataFrame, x: str, scale: float = 1.0, **style) -> None:
    """Mean over seeds of ``value`` against ``x``, with a ±1 std band where several seeds ran."""
    stats = d.groupby(x)["value"].agg(["mean", "std"]).sort_index()
    xs = stats.index.to_numpy(dtype=float)
    line = ax.plot(xs, scale * stats["mean"], marker=".", **style)[0]
    if stats["std"].notna().any():
        ax.fill_between(xs, scale * (stats["mean"] - stats["std"]), scale * (stats["mean"] + stats["std"]),
                        color=line.get_color(), alpha=0.2, linewidth=0)


def _finish(fig: Figure, axes: np.ndarray, path: str | os.PathLike[str], suffixes: Sequence[str]) -> list[Path]:
    for ax in axes.ravel():
        if ax.has_data():
            ax.grid(alpha=0.3)
    handles, labels = axes.ravel()[0].get_legend_handles_labels()
    if handles:
        axes.ravel()[-1].legend(handles, labels, fontsize=7)
    fig.tight_layout()
    return _save(fig, path, suffixes)


PRUNE_MODES: tuple[str, ...] = ("highest", "lowest", "random")
_PRUNE_COLORS = {"highest": "tab:green", "lowest": "tab:red", "random": "tab:gray"}


def plot_pruning(df: pd.DataFrame, path: str | os.PathLike[str], suffixes: Sequence[str] = ()) -> list[Path]:
    """Figure 2: accuracy (%) against the share of a task vector's entries kept, one line per
    selection (highest, lowest or random magnitude), one panel per scenario."""
    d = _analysis_rows(df, "prune_accuracy")
    scen = _scenarios(d)
    fig, axes = _panels(1, len(scen))
    modes = [m for m in PRUNE_MODES if m in set(d["method"])] + sorted(set(d["method"]) - set(PRUNE_MODES))
    for ax, s in zip(axes[0], scen):
        for mode in modes:
            part = d[(d["_col"] == s) & (d["method"] == mode)]
            if not part.empty:
                _mean_line(ax, part.assign(_x=100 * part["lam"]), "_x", label=f"{mode} magnitude"
                           if mode != "random" else "random", color=_PRUNE_COLORS.get(mode))
        ax.set_title(s, fontsize=10)
        ax.set_xlabel("task-vector entries kept (%)")
    axes[0][0].set_ylabel("accuracy (%)")
    return _finish(fig, axes, path, suffixes)


def plot_kth_magnitude(df: pd.DataFrame, path: str | os.PathLike[str], suffixes: Sequence[str] = ()) -> list[Path]:
    """Figure 5: accuracy (%) of the merge by the k-th highest magnitude (norms equalised)
    against k, independent and sequential fine-tuning, one panel per scenario."""
    d = _analysis_rows(df, "kth_accuracy")
    scen = _scenarios(d)
    fig, axes = _panels(1, len(scen))
    for ax, s in zip(axes[0], scen):
        for mode in _ft_order(d["finetuning"]):
            part = d[(d["_col"] == s) & (d["finetuning"] == mode)]
            if not part.empty:
                _mean_line(ax, part, "lam", label=_FT_NAMES.get(mode, mode), color=_FT_COLORS.get(mode))
        ks = sorted(d.loc[d["_col"] == s, "lam"].unique())
        ax.set_xticks(ks)
        ax.set_xticklabels([f"{k:g}" for k in ks], fontsize=8)
        ax.set_title(s, fontsize=10)
        ax.set_xlabel("k (merged by the k-th highest magnitude)")
    axes[0][0].set_ylabel("accuracy (%)")
    return _finish(fig, axes, path, suffixes)


def _task_colors(n: int) -> list:
    cmap = matplotlib.colormaps["viridis"]
    return [cmap(i / max(1, n - 1)) for i in range(n)]


def plot_update_consistency(df: pd.DataFrame, path: str | os.PathLike[str],
                            suffixes: Sequence[str] = ()) -> list[Path]:
    """Figure 6: mean |tau_t| against the number n of consistent update directions, one line per
    sequential task vector tau_t, one panel per scenario."""
    d = _analysis_rows(df, "consistency_magnitude")
    scen = _scenarios(d)
    fig, axes = _panels(1, len(scen))
    for ax, s in zip(axes[0], scen):
        part = d[d["_col"] == s]
        tasks = sorted(part["after_task"].unique())
        for t, color in zip(tasks, _task_colors(len(tasks))):
            _mean_line(ax, part[part["after_task"] == t], "eval_task", label=rf"$\tau_{{{t + 1}}}$", color=color)
        ax.set_title(s, fontsize=10)
        ax.set_xlabel("consistent update directions n")
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0][0].set_ylabel(r"mean $|\tau_t|$ of the parameters")
    return _finish(fig, axes, path, suffixes)


def plot_contributions(df: pd.DataFrame, path: str | os.PathLike[str], suffixes: Sequence[str] = ()) -> list[Path]:
    """Figure 7: share (%) of the merged vector's parameters taken from each task vector,
    independent against sequential fine-tuning, one panel per scenario."""
    d = _analysis_rows(df, "contribution")
    scen = _scenarios(d)
    modes = _ft_order(d["finetuning"])
    fig, axes = _panels(1, len(scen))
    width = 0.8 / len(modes)
    for ax, s in zip(axes[0], scen):
        part = d[d["_col"] == s]
        tasks = sorted(part["eval_task"].unique())
        x = np.arange(len(tasks))
        for k, mode in enumerate(modes):
            stats = part[part["finetuning"] == mode].groupby("eval_task")["value"].agg(["mean", "std"])
            means = np.array([100 * stats["mean"].get(t, np.nan) for t in tasks])
            stds = np.array([100 * stats["std"].get(t, np.nan) for t in tasks])
            ax.bar(x + (k - (len(modes) - 1) / 2) * width, means, width, label=_FT_NAMES.get(mode, mode),
                   color=_FT_COLORS.get(mode), yerr=None if np.isnan(stds).all() else np.nan_to_num(stds), capsize=2)
        ax.set_xticks(x)
        ax.set_xticklabels([str(t + 1) for t in tasks], fontsize=8)
        ax.set_title(s, fontsize=10)
        ax.set_xlabel("task vector")
    axes[0][0].set_ylabel("parameters contributed (%)")
    return _finish(fig, axes, path, suffixes)


def _leave_one_out_delta(part: pd.DataFrame) -> tuple[np.ndarray, list[int], list[int]]:
    """(left-out task x evaluated task) accuracy minus the all-task merge's; eval -1 last."""
    cells = part.groupby(["after_task", "eval_task"])["value"].mean()
    if -1 not in cells.index.get_level_values(0):
        raise ValueError("leave_one_out_accuracy rows lack the all-task merge (after_task=-1)")
    left = sorted(t for t in cells.index.get_level_values(0).unique() if t >= 0)
    evals = sorted(e for e in cells.index.get_level_values(1).unique() if e >= 0)
    evals += [-1] if -1 in cells.index.get_level_values(1) else []
    delta = np.full((len(left), len(evals)), np.nan)
    for i, t in enumerate(left):
        for j, e in enumerate(evals):
            if (t, e) in cells.index and (-1, e) in cells.index:
                delta[i, j] = cells[(t, e)] - cells[(-1, e)]
    return delta, left, evals


def plot_leave_one_out(df: pd.DataFrame, path: str | os.PathLike[str], suffixes: Sequence[str] = ()) -> list[Path]:
    """Figure 8: accuracy change (points) on each task when one task vector is left out of the
    merge, relative to merging all of them; one heatmap per scenario and fine-tuning mode."""
    d = _analysis_rows(df, "leave_one_out_accuracy")
    scen = _scenarios(d)
    modes = _ft_order(d["finetuning"])
    grids = {(s, m): _leave_one_out_delta(d[(d["_col"] == s) & (d["finetuning"] == m)])
             for s in scen for m in modes if ((d["_col"] == s) & (d["finetuning"] == m)).any()}
    bound = max([float(np.nanmax(np.abs(g[0]))) for g in grids.values() if np.isfinite(g[0]).any()] + [1e-9])
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-bound, vmax=bound)
    size = max(len(g[2]) for g in grids.values())
    fig, axes = _panels(len(scen), len(modes), width=max(3.6, 0.45 * size + 1.6), height=max(3.0, 0.4 * size + 1.4))
    for i, s in enumerate(scen):
        for j, m in enumerate(modes):
            ax = axes[i][j]
            ax.set_title(f"{_FT_NAMES.get(m, m)} — {s}", fontsize=9)
            if (s, m) not in grids:
                ax.set_axis_off()
                continue
            delta, left, evals = grids[(s, m)]
            ax.imshow(np.ma.masked_invalid(delta), cmap="RdBu", norm=norm, aspect="auto")
            if delta.size <= 400:
                for (r, c), v in np.ndenumerate(delta):
                    if np.isfinite(v):
                        ax.text(c, r, f"{v:.1f}", ha="center", va="center", fontsize=6,
                                color="white" if abs(norm(v) - 0.5) > 0.3 else "black")
            ax.set_xticks(range(len(evals)))
            ax.set_xticklabels(["all" if e < 0 else str(e + 1) for e in evals], fontsize=7)
            ax.set_yticks(range(len(left)))
            ax.set_yticklabels([str(t + 1) for t in left], fontsize=7)
            ax.set_xlabel("evaluated task", fontsize=8)
            ax.set_ylabel("task vector left out", fontsize=8)
    fig.tight_layout()
    return _save(fig, path, suffixes)


LAYER_TYPES: tuple[str, ...] = ("ln", "attn", "mlp", "embed", "other")
_LAYER_NAMES = {"ln": "LayerNorm", "attn": "attention", "mlp": "MLP", "embed": "embedding", "other": "other"}


def plot_layer_magnitudes(df: pd.DataFrame, path: str | os.PathLike[str], suffixes: Sequence[str] = ()) -> list[Path]:
    """Figure 12: mean |entry| of tau_MagMax by layer type (top) and by block index (bottom),
    one line per task after which the merged vector was taken, one column per scenario."""
    d = df[(df["role"] == "analysis")
           & (df["metric"].str.startswith("layer_magnitude_") | (df["metric"] == "block_magnitude"))]
    if d.empty:
        raise ValueError("no layer_magnitude_*/block_magnitude rows")
    d = _with_column_label(d)
    scen = _scenarios(d)
    fig, axes = _panels(2, len(scen))
    for j, s in enumerate(scen):
        part = d[d["_col"] == s]
        by_type = part[part["metric"] != "block_magnitude"]
        by_type = by_type.assign(_type=by_type["metric"].str.removeprefix("layer_magnitude_"))
        present = set(by_type["_type"])
        types = [t for t in LAYER_TYPES if t in present] + sorted(present - set(LAYER_TYPES))
        by_type = by_type.assign(_x=by_type["_type"].map({k: i for i, k in enumerate(types)}))
        blocks = part[part["metric"] == "block_magnitude"]
        tasks = sorted(part["after_task"].unique())
        for t, color in zip(tasks, _task_colors(len(tasks))):
            label = f"after task {t + 1}"
            bt = by_type[by_type["after_task"] == t]
            if not bt.empty:
                _mean_line(axes[0][j], bt, "_x", label=label, color=color)
            bb = blocks[blocks["after_task"] == t]
            if not bb.empty:
                _mean_line(axes[1][j], bb, "eval_task", label=label, color=color)
        axes[0][j].set_xticks(range(len(types)))
        axes[0][j].set_xticklabels([_LAYER_NAMES.get(t, t) for t in types], fontsize=8)
        axes[0][j].set_title(s, fontsize=10)
        axes[1][j].set_xlabel("block index")
        axes[1][j].xaxis.get_major_locator().set_params(integer=True)
    axes[0][0].set_ylabel(r"mean $|\tau_\mathrm{MagMax}|$ by layer type")
    axes[1][0].set_ylabel(r"mean $|\tau_\mathrm{MagMax}|$ by block")
    return _finish(fig, axes, path, suffixes)


def plot_entry_distributions(df: pd.DataFrame, path: str | os.PathLike[str],
                             suffixes: Sequence[str] = ()) -> list[Path]:
    """Figure 13: histograms (log counts) of task-vector entries, one line per task vector and
    the merged vector in black; rows = fine-tuning mode (independent on top), columns = scenario."""
    d = _analysis_rows(df, "entry_histogram")
    scen = _scenarios(d)
    modes = _ft_order(d["finetuning"])
    fig, axes = _panels(len(modes), len(scen))
    for i, m in enumerate(modes):
        for j, s in enumerate(scen):
            ax = axes[i][j]
            part = d[(d["_col"] == s) & (d["finetuning"] == m)]
            ax.set_title(f"{_FT_NAMES.get(m, m)} — {s}", fontsize=9)
            if part.empty:
                ax.set_axis_off()
                continue
            vectors = part[part["method"] == "task_vector"]
            tasks = sorted(vectors["after_task"].unique())
            for t, color in zip(tasks, _task_colors(len(tasks))):
                h = vectors[vectors["after_task"] == t].groupby("lam")["value"].mean()
                ax.step(h.index, h.to_numpy(), where="mid", color=color, linewidth=1, label=rf"$\tau_{{{t + 1}}}$")
            for method, merged in part[part["method"] != "task_vector"].groupby("method"):
                h = merged.groupby("lam")["value"].mean()
                ax.step(h.index, h.to_numpy(), where="mid", color="black", linewidth=1.4, linestyle="--",
                        label=display_name(method))
            ax.set_yscale("log", nonpositive="mask")
            ax.set_xlabel("task-vector entry")
    for row in axes:
        row[0].set_ylabel("count")
    return _finish(fig, axes, path, suffixes)


# --------------------------------------------------------------------------------------------
# Rows for the figures: what the runner emits (see "Row vocabulary" above)


def _entries(metric: str, items: Iterable[tuple[int, float]], **columns: Any) -> list[dict[str, Any]]:
    return [{"role": "analysis", "metric": metric, "eval_task": int(k), "value": float(v), **columns}
            for k, v in items]


def consistency_entries(by_n: Mapping[int, float], *, after_task: int, method: str = "magmax",
                        finetuning: str = "seq") -> list[dict[str, Any]]:
    """Figure 6 rows (without the run's common columns) from ``analysis.update_consistency``."""
    return _entries("consistency_magnitude", sorted(by_n.items()), method=method, finetuning=finetuning,
                    after_task=int(after_task))


def contribution_entries(shares: Sequence[float], *, finetuning: str, method: str = "magmax") -> list[dict[str, Any]]:
    """Figure 7 rows from ``analysis.contributions`` (after_task = the last task)."""
    return _entries("contribution", enumerate(shares), method=method, finetuning=finetuning,
                    after_task=len(shares) - 1)


def layer_magnitude_entries(lm: LayerMagnitudes, *, after_task: int, method: str = "magmax",
                            finetuning: str = "seq") -> list[dict[str, Any]]:
    """Figure 12 rows from ``analysis.mean_magnitude_by_layer`` of tau_MagMax after ``after_task``."""
    common = {"method": method, "finetuning": finetuning, "after_task": int(after_task)}
    rows = [{"role": "analysis", "metric": f"layer_magnitude_{kind}", "eval_task": -1, "value": float(v), **common}
            for kind, v in lm.by_type.items()]
    return rows + _entries("block_magnitude", sorted(lm.by_block.items()), **common)


def histogram_entries(h: Histogram, *, method: str, finetuning: str, after_task: int) -> list[dict[str, Any]]:
    """Figure 13 rows from ``analysis.entry_histogram``: method "task_vector" for tau_t
    (after_task = t) or the merge's name for the merged vector."""
    return [{**e, "lam": float(c)} for e, c in zip(
        _entries("entry_histogram", enumerate(h.counts), method=method, finetuning=finetuning,
                 after_task=int(after_task)), h.centres)]


# --------------------------------------------------------------------------------------------
# The report folder


def _analysis_table(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean over seeds of an analysis metric: rows = methods (paper order), columns = scenarios;
    ``attrs["std"]`` as in ``final_table`` where several seeds ran."""
    d = df[(df["role"] == "analysis") & (df["metric"] == metric)]
    if d.empty:
        return pd.DataFrame(dtype=float)
    d = _with_column_label(d)
    grouped = d.groupby(["method", "_col", "seed"])["value"].mean().groupby(["method", "_col"])
    mean, std, count = (x.unstack("_col") for x in (grouped.mean(), grouped.std(ddof=1), grouped.count()))
    cols = sorted(mean.columns, key=_natural_key)
    rows = sorted(mean.index, key=_method_rank)
    t = mean.loc[rows, cols]
    t.index = pd.Index([display_name(m) for m in rows], name="method")
    if (count.fillna(0) > 1).to_numpy().any():
        t.attrs["std"] = {(display_name(m), c): float(std.at[m, c])
                          for m in rows for c in cols if count.at[m, c] > 1}
    return t


def _plain_markdown(table: pd.DataFrame) -> str:
    return to_markdown(table, bold_best=False)


def _has(df: pd.DataFrame, role: str, metric: str | None = None) -> bool:
    mask = df["role"] == role
    if metric is not None:
        mask &= df["metric"] == metric
    return bool(mask.any())


def _matrix_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df[(df["role"] == "matrix") & (df["metric"] == "accuracy") & (df["eval_task"] >= 0)
              & (df["after_task"] >= 0)]


FIG4_METHODS: tuple[str, ...] = ("seq_ft", "avg", "magmax")


def plot_figure4(df: pd.DataFrame, path: str | os.PathLike[str], suffixes: Sequence[str] = ()) -> list[Path]:
    """Figure 4: Seq-FT, merging of independent fine-tunings (Avg) and MagMax accuracy matrices;
    every method with matrix rows when none of those three has any."""
    present = set(_matrix_rows(df)["method"])
    methods = [m for m in FIG4_METHODS if m in present] or sorted(present, key=_method_rank)
    return plot_accuracy_matrices(df, methods, path, suffixes=suffixes)


def plot_figure11(df: pd.DataFrame, path: str | os.PathLike[str], suffixes: Sequence[str] = ()) -> list[Path]:
    """Figure 11: MagMax's accuracy matrices, one per scenario."""
    return plot_accuracy_matrices(df, ["magmax"], path, suffixes=suffixes)


@dataclass(frozen=True)
class FigureSpec:
    """A figure of the report: its file stem, heading, drawing function and whether a run has
    the rows it needs."""

    key: str
    title: str
    draw: Callable[..., list[Path]]
    present: Callable[[pd.DataFrame], bool]


FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec("pruning", "Figure 2: keeping k% of a task vector by highest, lowest or random magnitude",
               plot_pruning, lambda df: _has(df, "analysis", "prune_accuracy")),
    FigureSpec("sign_conflicts", "Figures 3 and 10: sign conflicts after top-20% trimming",
               plot_sign_conflicts, lambda df: _has(df, "analysis", "sign_conflicts")),
    FigureSpec("accuracy_matrices", "Figure 4: task-agnostic accuracy matrices",
               plot_figure4, lambda df: not _matrix_rows(df).empty),
    FigureSpec("kth_magnitude", "Figure 5: merging by the k-th highest magnitude, norms equalised",
               plot_kth_magnitude, lambda df: _has(df, "analysis", "kth_accuracy")),
    FigureSpec("update_consistency", "Figure 6: magnitude against consistency of update directions",
               plot_update_consistency, lambda df: _has(df, "analysis", "consistency_magnitude")),
    FigureSpec("contributions", "Figure 7: share of parameters each task vector contributes",
               plot_contributions, lambda df: _has(df, "analysis", "contribution")),
    FigureSpec("leave_one_out", "Figure 8: accuracy change when one task vector is left out",
               plot_leave_one_out, lambda df: _has(df, "analysis", "leave_one_out_accuracy")),
    FigureSpec("lambda_sweep", "Figure 9: accuracy relative to the best λ",
               plot_lambda_sweep, lambda df: not _sweep_curves(df).empty),
    FigureSpec("accuracy_matrices_magmax", "Figure 11: MagMax's accuracy matrices in every setting",
               plot_figure11,
               lambda df: _matrix_rows(df).loc[lambda d: d["method"] == "magmax", "scenario"].nunique() > 1),
    FigureSpec("layer_magnitudes", "Figure 12: mean magnitude of τ_MagMax by layer type and by block",
               plot_layer_magnitudes,
               lambda df: bool(((df["role"] == "analysis") & (df["metric"].str.startswith("layer_magnitude_")
                                                             | (df["metric"] == "block_magnitude"))).any())),
    FigureSpec("entry_distributions", "Figure 13: distributions of task-vector entries",
               plot_entry_distributions, lambda df: _has(df, "analysis", "entry_histogram")),
)


def write_report(run_dir_or_df: str | os.PathLike[str] | pd.DataFrame, out_dir: str | os.PathLike[str],
                 suffixes: Sequence[str] = (".png", ".pdf"), tables: Sequence[str] | None = None,
                 backbone: str | None = None) -> dict[str, Path]:
    """Write tables and figures of a run into ``out_dir``; return ``{name: path}``.

    - ``table_md``/``table_tex``: every final result (``final_table``), when there are any.
    - ``table<N>_md``/``table<N>_tex``: the paper's Tables 1-8 this run belongs to
      (``available_tables``), or exactly ``tables``; ``backbone`` lays those out from another
      backbone's rows and needs ``tables``.
    - one entry per figure of ``FIGURES`` whose rows exist, keyed by its file stem for the PNG and
      ``<stem>_pdf`` (etc.) for the other ``suffixes``. A figure whose rows are malformed is
      skipped with a warning and a note in the index instead of failing the whole report.
    - ``index``: ``index.md`` linking all of it, with the tables inline.
    """
    df = run_dir_or_df if isinstance(run_dir_or_df, pd.DataFrame) else results.read_run(run_dir_or_df)
    if backbone is not None and tables is None:
        raise ValueError("backbone= applies to explicitly chosen tables: pass tables= as well")
    unknown = [t for t in (tables or ()) if t not in paper.LAYOUTS]
    if unknown:
        raise ValueError(f"unknown tables {unknown}; known: {', '.join(paper.LAYOUTS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}

    table = final_table(df)
    markdown = to_markdown(table)
    if not table.empty:
        paths["table_md"] = out / "table.md"
        paths["table_md"].write_text(markdown)
        paths["table_tex"] = out / "table.tex"
        paths["table_tex"].write_text(to_latex(table))

    rendered: dict[str, str] = {}
    for name in (available_tables(df) if tables is None else list(tables)):
        pt = paper_table(df, name, backbone)
        rendered[name] = paper_markdown(pt)
        paths[f"{name}_md"] = out / f"{name}.md"
        paths[f"{name}_md"].write_text(rendered[name])
        paths[f"{name}_tex"] = out / f"{name}.tex"
        paths[f"{name}_tex"].write_text(paper_latex(pt))

    skipped: list[str] = []
    figure_files: dict[str, list[str]] = {}
    for spec in FIGURES:
        if not spec.present(df):
            continue
        try:
            written = spec.draw(df, out / f"{spec.key}.png", suffixes=suffixes)
        except ValueError as e:
            warnings.warn(f"{spec.title}: not drawn: {e}", stacklevel=2)
            skipped.append(f"{spec.title}: {e}")
            continue
        keys = [spec.key if p.suffix == ".png" else f"{spec.key}_{p.suffix.lstrip('.')}" for p in written]
        paths.update(zip(keys, written))
        figure_files[spec.key] = keys

    paths["index"] = out / "index.md"
    paths["index"].write_text(_index_markdown(df, markdown, rendered, paths, figure_files, out, skipped))
    return paths


def _links(paths: Mapping[str, Path], keys: Iterable[str], out: Path) -> str:
    return ", ".join(f"[{paths[k].name}]({paths[k].relative_to(out).as_posix()})" for k in keys if k in paths)


def _index_markdown(df: pd.DataFrame, markdown: str, rendered: Mapping[str, str], paths: Mapping[str, Path],
                    figure_files: Mapping[str, Sequence[str]], out: Path, skipped: Sequence[str]) -> str:
    runs = ", ".join(sorted(df["run"].unique())) or "(empty)"
    lines = [f"# MagMax report: {runs}", ""]
    if not df.empty:
        lines += [
            f"- backbones: {', '.join(sorted(df['backbone'].unique()))}",
            f"- seeds: {', '.join(str(s) for s in sorted(df['seed'].unique()))}",
            f"- code versions: {', '.join(sorted(df['code_version'].unique()))}",
            f"- rows: {len(df)}",
            "",
        ]
    lines += ["## Final task-agnostic accuracy (%)", "",
              "Best per column in **bold**, second <u>underlined</u> (Zero-shot and Joint are references, not ranked).",
              "", markdown.rstrip("\n"), ""]
    if "table_md" in paths:
        lines += ["Files: " + _links(paths, ("table_md", "table_tex"), out), ""]
    for name, md in rendered.items():
        # The table's own "###" caption heading follows; one level up for the index entry.
        lines += [f"## {paper.LAYOUTS[name].caption.split(':')[0]}", "", md.rstrip("\n"), "",
                  "Files: " + _links(paths, (f"{name}_md", f"{name}_tex"), out), ""]
    for spec in FIGURES:
        files = figure_files.get(spec.key, [])
        if not files:
            continue
        lines += [f"## {spec.title}", ""]
        if spec.key in paths:
            lines += [f"![{spec.title}]({paths[spec.key].relative_to(out).as_posix()})", ""]
        extra = [k for k in files if k != spec.key]
        if extra:
            lines += [("Also: " if spec.key in paths else "Files: ") + _links(paths, extra, out), ""]
    for metric, title in (("first_task_forgetting", "First-task forgetting (points)"),
                          ("average_forgetting", "Average forgetting (points)"), ("chance", "Chance level (%)")):
        t = _analysis_table(df, metric)
        if not t.empty:
            lines += [f"## {title}", "", _plain_markdown(t).rstrip("\n"), ""]
    if skipped:
        lines += ["## Not drawn", ""] + [f"- {s}" for s in skipped] + [""]
    return "\n".join(lines)
