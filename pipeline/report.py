"""Tables in the paper's layouts and figures, built from a run's results rows alone.

Everything here is a pure function of a results DataFrame (``pipeline.results`` schema) except
the ``plot_*``/``write_report`` functions, which also write files. Figures use matplotlib's
object API (``Figure`` + Agg canvas), never ``pyplot``, so no global backend or figure state is
touched and nothing needs a display.

- ``final_table`` / ``to_markdown`` / ``to_latex``: Table-1 style headline accuracies.
- ``accuracy_matrix`` / ``plot_accuracy_matrices``: Figure 4.
- ``plot_lambda_sweep``: Figure 9.
- ``plot_sign_conflicts``: Figures 3 and 10.
- ``write_report``: all of the above into one folder with an ``index.md``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from pipeline import results

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
                  "λ": r"$\lambda$"}


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


def plot_sign_conflicts(df: pd.DataFrame, path: str | os.PathLike[str], suffixes: Sequence[str] = ()) -> list[Path]:
    """Figure 3: sign conflicts (%) of the top-20% entries, independent vs sequential
    fine-tuning, one bar pair per scenario (error bars = std over seeds when there are several)."""
    d = df[(df["role"] == "analysis") & (df["metric"] == "sign_conflicts")]
    if d.empty:
        raise ValueError("no sign_conflicts rows")
    d = _with_column_label(d)
    stats = d.groupby(["_col", "finetuning"])["value"].agg(["mean", "std", "count"])
    scen = sorted(d["_col"].unique(), key=_natural_key)
    modes = [m for m in ("ind", "seq") if m in set(d["finetuning"])]
    modes += sorted(set(d["finetuning"]) - set(modes))
    names = {"ind": "Independent", "seq": "Sequential"}
    colors = {"ind": "tab:blue", "seq": "tab:orange"}

    fig = Figure(figsize=(max(4.0, 1.1 * len(scen) + 1.5), 3.4))
    ax = fig.subplots()
    width = 0.8 / len(modes)
    x = np.arange(len(scen))
    for k, mode in enumerate(modes):
        means = np.array([100 * stats["mean"].get((s, mode), np.nan) for s in scen])
        stds = np.array([100 * stats["std"].get((s, mode), np.nan) for s in scen])
        counts = np.array([stats["count"].get((s, mode), 0) for s in scen])
        err = np.where(counts > 1, stds, np.nan)
        pos = x + (k - (len(modes) - 1) / 2) * width
        bars = ax.bar(pos, means, width, label=names.get(mode, mode), color=colors.get(mode),
                      yerr=None if np.isnan(err).all() else np.nan_to_num(err), capsize=3)
        ax.bar_label(bars, labels=["" if np.isnan(v) else f"{v:.1f}" for v in means], fontsize=7)
    ax.set_xticks(x)
    ax.set_xticklabels(scen, rotation=30 if len(scen) > 4 else 0, ha="right" if len(scen) > 4 else "center", fontsize=8)
    ax.set_ylabel("sign conflicts (%)")
    ax.set_ylim(bottom=0)
    # Above the axes: bars reach any height, so an inside legend would cover some.
    ax.legend(fontsize=8, ncol=len(modes), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path, suffixes)


# --------------------------------------------------------------------------------------------
# The report folder


def _analysis_table(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean over seeds of an analysis metric: rows = methods (paper order), columns = scenarios."""
    d = df[(df["role"] == "analysis") & (df["metric"] == metric)]
    if d.empty:
        return pd.DataFrame(dtype=float)
    d = _with_column_label(d)
    t = d.groupby(["method", "_col"])["value"].mean().unstack("_col")
    t = t[sorted(t.columns, key=_natural_key)]
    t = t.loc[sorted(t.index, key=_method_rank)]
    t.index = pd.Index([display_name(m) for m in t.index], name="method")
    return t


def _plain_markdown(table: pd.DataFrame) -> str:
    return to_markdown(table, bold_best=False)


def write_report(run_dir_or_df: str | os.PathLike[str] | pd.DataFrame, out_dir: str | os.PathLike[str],
                 suffixes: Sequence[str] = (".png",)) -> dict[str, Path]:
    """Write tables and figures of a run into ``out_dir``; return ``{name: path}``.

    Names: ``table_md``, ``table_tex`` (when there are final rows), ``accuracy_matrices``,
    ``lambda_sweep``, ``sign_conflicts`` (each only when its rows exist; PNG unless ``suffixes``
    adds e.g. ".pdf", whose paths get ``_pdf``-suffixed names) and ``index``, an ``index.md`` with
    the table inline and links to everything.
    """
    df = run_dir_or_df if isinstance(run_dir_or_df, pd.DataFrame) else results.read_run(run_dir_or_df)
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

    def figure(name: str, draw, *args) -> None:
        written = draw(*args, out / f"{name}.png", suffixes=suffixes)
        for p in written:
            paths[name if p.suffix == ".png" else f"{name}_{p.suffix.lstrip('.')}"] = p

    matrix_rows = df[(df["role"] == "matrix") & (df["metric"] == "accuracy") & (df["eval_task"] >= 0)]
    if not matrix_rows.empty:
        methods = sorted(matrix_rows["method"].unique(), key=_method_rank)
        figure("accuracy_matrices", plot_accuracy_matrices, df, methods)
    if not _sweep_curves(df).empty:
        figure("lambda_sweep", plot_lambda_sweep, df)
    if ((df["role"] == "analysis") & (df["metric"] == "sign_conflicts")).any():
        figure("sign_conflicts", plot_sign_conflicts, df)

    paths["index"] = out / "index.md"
    paths["index"].write_text(_index_markdown(df, markdown, paths, out))
    return paths


def _index_markdown(df: pd.DataFrame, markdown: str, paths: Mapping[str, Path], out: Path) -> str:
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
    links = [f"[{p.name}]({p.relative_to(out).as_posix()})" for k, p in paths.items() if k.startswith("table")]
    if links:
        lines += ["Files: " + ", ".join(links), ""]
    titles = {"accuracy_matrices": "Accuracy matrices (Figure 4)", "lambda_sweep": "λ sweep (Figure 9)",
              "sign_conflicts": "Sign conflicts (Figure 3)"}
    for key, title in titles.items():
        if key in paths:
            rel = paths[key].relative_to(out).as_posix()
            lines += [f"## {title}", "", f"![{title}]({rel})", ""]
            extra = [p for k, p in paths.items() if k.startswith(f"{key}_")]
            if extra:
                lines += ["Also: " + ", ".join(f"[{p.name}]({p.relative_to(out).as_posix()})" for p in extra), ""]
    for metric, title in (("first_task_forgetting", "First-task forgetting (points)"), ("chance", "Chance level (%)")):
        t = _analysis_table(df, metric)
        if not t.empty:
            lines += [f"## {title}", "", _plain_markdown(t).rstrip("\n"), ""]
    return "\n".join(lines)
