"""The report's figures (Figures 2-13 of the paper), drawn from a run's results rows.

The only module of the report that imports matplotlib. It uses matplotlib's object API
(``Figure`` + Agg canvas), never ``pyplot``, so no global backend or figure state is touched and
nothing needs a display. Every ``plot_*`` saves ``path`` (or ``path`` with each of ``suffixes``,
e.g. ``(".png", ".pdf")``) and returns the written paths; it raises ValueError when the rows it
needs are missing or malformed. Which rows each figure reads: ``pipeline.report``'s "Row
vocabulary".
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize, TwoSlopeNorm
from matplotlib.figure import Figure

from pipeline import methods as method_table
from pipeline.report.names import SWEEP_METHOD_ORDER, display_name, method_rank, paper_lambdas
from pipeline.report.rows import (
    accuracy_matrix,
    leave_one_out_delta,
    matrix_rows,
    natural_key,
    scenario_keys,
    seen_average,
    sweep_curves,
    with_column_label,
)


def _save(fig: Figure, path: str | os.PathLike[str], suffixes: Sequence[str]) -> list[Path]:
    FigureCanvasAgg(fig)  # attach an Agg canvas: no pyplot, no backend switch
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    targets = [path] if not suffixes else [path.with_suffix(s) for s in suffixes]
    for t in targets:
        fig.savefig(t, dpi=150, bbox_inches="tight")
    return targets


# --------------------------------------------------------------------------------------------
# Figures 4 and 11


def plot_accuracy_matrices(df: pd.DataFrame, methods: Sequence[str], path: str | os.PathLike[str],
                           scenario: str | None = None, suffixes: Sequence[str] = ()) -> list[Path]:
    """Figure 4: one annotated heatmap per method side by side (one row per scenario).

    Seen tasks (lower triangle with diagonal) in orange, unseen tasks (upper triangle, the
    zero-shot-like part) in blue, and an extra last column with each row's average accuracy on
    seen tasks. Methods without matrix rows are skipped. Saves ``path`` (or ``path`` with each of
    ``suffixes``, e.g. ``(".png", ".pdf")``); returns the written paths.
    """
    d = df[(df["role"] == "matrix") & (df["metric"] == "accuracy")]
    scen = [scenario] if scenario is not None else sorted(d["scenario"].unique(), key=natural_key)
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
    full = np.column_stack([matrix, seen_average(matrix)])  # T x (T+1)
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


FIG4_METHODS: tuple[str, ...] = ("seq_ft", "avg", "magmax")


def continual_methods() -> list[str]:
    """Row names of the continual merges beyond the paper (folded task by task: OPCM, DOP)."""
    return list(dict.fromkeys(m.row_name for m in method_table.table()
                              if m.kind == "running" and m.group == "beyond"))


def has_figure4_rows(df: pd.DataFrame) -> bool:
    return (~matrix_rows(df)["method"].isin(continual_methods())).any()


def has_continual_rows(df: pd.DataFrame) -> bool:
    return matrix_rows(df)["method"].isin(continual_methods()).any()


def plot_continual_matrices(df: pd.DataFrame, path: str | os.PathLike[str],
                            suffixes: Sequence[str] = ()) -> list[Path]:
    """Beyond the paper: Figure 4's accuracy matrix of every continual merge, one per fine-tuning
    it merged (``OPCM (ind)``, ``OPCM (seq)``)."""
    rows = matrix_rows(df)
    rows = rows[rows["method"].isin(continual_methods())]
    if rows.empty:
        raise ValueError("no matrix rows of a continual merge")
    labelled = rows.assign(method=rows["method"].map(display_name) + " (" + rows["finetuning"] + ")")
    return plot_accuracy_matrices(labelled, sorted(labelled["method"].unique()), path, suffixes=suffixes)


def plot_figure4(df: pd.DataFrame, path: str | os.PathLike[str], suffixes: Sequence[str] = ()) -> list[Path]:
    """Figure 4: Seq-FT, merging of independent fine-tunings (Avg) and MagMax accuracy matrices;
    every method with matrix rows when none of those three has any."""
    present = set(matrix_rows(df)["method"]) - set(continual_methods())  # (they have their own figure)
    methods = [m for m in FIG4_METHODS if m in present] or sorted(present, key=method_rank)
    return plot_accuracy_matrices(df, methods, path, suffixes=suffixes)


def plot_figure11(df: pd.DataFrame, path: str | os.PathLike[str], suffixes: Sequence[str] = ()) -> list[Path]:
    """Figure 11: MagMax's accuracy matrices, one per scenario."""
    return plot_accuracy_matrices(df, ["magmax"], path, suffixes=suffixes)


# --------------------------------------------------------------------------------------------
# Figure 9


def _headline_lambdas(df: pd.DataFrame) -> dict[str, float]:
    """Each merge's headline λ as the run used it (its final rows carry the λ of the resolved
    config); the paper's where a method has no final row or several λ."""
    out = paper_lambdas()
    final = df[(df["role"] == "final") & (df["metric"] == "accuracy")]
    for method, d in final.groupby("method"):
        lams = d["lam"].dropna().unique()
        if len(lams) == 1:
            out[method] = float(lams[0])
    return out


def plot_lambda_sweep(df: pd.DataFrame, path: str | os.PathLike[str], suffixes: Sequence[str] = ()) -> list[Path]:
    """Figure 9: accuracy relative to the best λ (value - max over λ, in points) against λ.

    One panel per method, one line per scenario (same colour for a scenario in every panel);
    the method's default λ is a dashed vertical line with a marker on each curve.
    """
    curves = sweep_curves(df)
    if curves.empty:
        raise ValueError("no sweep rows")
    methods = sorted(curves["method"].unique(), key=lambda m: method_rank(m, SWEEP_METHOD_ORDER))
    headline = _headline_lambdas(df)
    scen = sorted(curves["_col"].unique(), key=natural_key)
    palette = matplotlib.colormaps["tab10" if len(scen) <= 10 else "tab20"]
    colors = {s: palette(i % palette.N) for i, s in enumerate(scen)}

    fig = Figure(figsize=(4.2 * len(methods), 3.4))
    axes = fig.subplots(1, len(methods), squeeze=False)[0]
    for ax, m in zip(axes, methods):
        default = headline.get(m)
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
    d = with_column_label(d).join(scenario_keys(df).loc[d.index, ["_kind"]])
    stats = d.groupby(["_col", "finetuning"])["value"].agg(["mean", "std", "count"])
    kinds = [k for k in _KIND_TITLES if k in set(d["_kind"])]
    modes = _ft_order(d["finetuning"])
    per_kind = {k: sorted(d.loc[d["_kind"] == k, "_col"].unique(), key=natural_key) for k in kinds}

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


def _analysis_rows(df: pd.DataFrame, metric: str, x_kind: str | None = None) -> pd.DataFrame:
    """The ``metric`` rows with ``_col``; with ``x_kind``, each must carry its abscissa in ``x``."""
    d = df[(df["role"] == "analysis") & (df["metric"] == metric)]
    if d.empty:
        raise ValueError(f"no {metric} rows")
    if x_kind is not None:
        _check_x_kind(d, metric, x_kind)
    return with_column_label(d)


def _check_x_kind(d: pd.DataFrame, what: str, x_kind: str) -> None:
    wrong = sorted(set(d["x_kind"]) - {x_kind})
    if wrong:
        raise ValueError(f"{what} rows need x_kind {x_kind!r}, got {wrong}")


def _scenarios(d: pd.DataFrame) -> list[str]:
    return sorted(d["_col"].unique(), key=natural_key)


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
    d = _analysis_rows(df, "prune_accuracy", "share_kept")
    scen = _scenarios(d)
    fig, axes = _panels(1, len(scen))
    modes = [m for m in PRUNE_MODES if m in set(d["method"])] + sorted(set(d["method"]) - set(PRUNE_MODES))
    for ax, s in zip(axes[0], scen):
        for mode in modes:
            part = d[(d["_col"] == s) & (d["method"] == mode)]
            if not part.empty:
                _mean_line(ax, part.assign(_x=100 * part["x"]), "_x", label=f"{mode} magnitude"
                           if mode != "random" else "random", color=_PRUNE_COLORS.get(mode))
        ax.set_title(s, fontsize=10)
        ax.set_xlabel("task-vector entries kept (%)")
    axes[0][0].set_ylabel("accuracy (%)")
    return _finish(fig, axes, path, suffixes)


def plot_kth_magnitude(df: pd.DataFrame, path: str | os.PathLike[str], suffixes: Sequence[str] = ()) -> list[Path]:
    """Figure 5: accuracy (%) of the merge by the k-th highest magnitude (norms equalised)
    against k, independent and sequential fine-tuning, one panel per scenario."""
    d = _analysis_rows(df, "kth_accuracy", "kth")
    scen = _scenarios(d)
    fig, axes = _panels(1, len(scen))
    for ax, s in zip(axes[0], scen):
        for mode in _ft_order(d["finetuning"]):
            part = d[(d["_col"] == s) & (d["finetuning"] == mode)]
            if not part.empty:
                _mean_line(ax, part, "x", label=_FT_NAMES.get(mode, mode), color=_FT_COLORS.get(mode))
        ks = sorted(d.loc[d["_col"] == s, "x"].unique())
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
    d = _analysis_rows(df, "consistency_magnitude", "n_consistent")
    scen = _scenarios(d)
    fig, axes = _panels(1, len(scen))
    for ax, s in zip(axes[0], scen):
        part = d[d["_col"] == s]
        tasks = sorted(part["after_task"].unique())
        for t, color in zip(tasks, _task_colors(len(tasks))):
            _mean_line(ax, part[part["after_task"] == t], "x", label=rf"$\tau_{{{t + 1}}}$", color=color)
        ax.set_title(s, fontsize=10)
        ax.set_xlabel("consistent update directions n")
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0][0].set_ylabel(r"mean $|\tau_t|$ of the parameters")
    return _finish(fig, axes, path, suffixes)


def plot_contributions(df: pd.DataFrame, path: str | os.PathLike[str], suffixes: Sequence[str] = ()) -> list[Path]:
    """Figure 7: share (%) of the merged vector's parameters taken from each task vector,
    independent against sequential fine-tuning, one panel per scenario."""
    d = _analysis_rows(df, "contribution", "source_task")
    d = d.assign(_task=d["x"].astype(int))
    scen = _scenarios(d)
    modes = _ft_order(d["finetuning"])
    fig, axes = _panels(1, len(scen))
    width = 0.8 / len(modes)
    for ax, s in zip(axes[0], scen):
        part = d[d["_col"] == s]
        tasks = sorted(part["_task"].unique())
        x = np.arange(len(tasks))
        for k, mode in enumerate(modes):
            stats = part[part["finetuning"] == mode].groupby("_task")["value"].agg(["mean", "std"])
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


def plot_leave_one_out(df: pd.DataFrame, path: str | os.PathLike[str], suffixes: Sequence[str] = ()) -> list[Path]:
    """Figure 8: accuracy change (points) on each task when one task vector is left out of the
    merge, relative to merging all of them; one heatmap per scenario and fine-tuning mode."""
    d = _analysis_rows(df, "leave_one_out_accuracy")
    scen = _scenarios(d)
    modes = _ft_order(d["finetuning"])
    grids = {(s, m): leave_one_out_delta(d[(d["_col"] == s) & (d["finetuning"] == m)])
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
    _check_x_kind(d[d["metric"] == "block_magnitude"], "block_magnitude", "block")
    d = with_column_label(d)
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
                _mean_line(axes[1][j], bb, "x", label=label, color=color)
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
    d = _analysis_rows(df, "entry_histogram", "bin_centre")
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
                h = vectors[vectors["after_task"] == t].groupby("x")["value"].mean()
                ax.step(h.index, h.to_numpy(), where="mid", color=color, linewidth=1, label=rf"$\tau_{{{t + 1}}}$")
            for method, merged in part[part["method"] != "task_vector"].groupby("method"):
                h = merged.groupby("x")["value"].mean()
                ax.step(h.index, h.to_numpy(), where="mid", color="black", linewidth=1.4, linestyle="--",
                        label=display_name(method))
            ax.set_yscale("log", nonpositive="mask")
            ax.set_xlabel("task-vector entry")
    for row in axes:
        row[0].set_ylabel("count")
    return _finish(fig, axes, path, suffixes)
