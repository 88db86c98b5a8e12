"""Tables in the paper's layouts and figures, built from a run's results rows alone.

Everything is a pure function of a results DataFrame (``pipeline.results`` schema) except the
``plot_*``/``write_report`` functions, which also write files. The modules:

- ``names``: display names, the paper's method order, the reference rows, default λ.
- ``rows``: selecting and shaping results rows (scenario keys, accuracy matrices, sweep curves).
- ``tables``: ``final_table`` (every final result, one column per scenario: ``table.md``) and
  ``paper_table`` (Tables 1-8 in the paper's layouts, our number beside the paper's
  (``pipeline.paper``) in every cell); ``available_tables`` says which tables a run's rows belong to.
- ``render``: ``to_markdown`` / ``to_latex`` / ``paper_markdown`` / ``paper_latex``.
- ``figures``: ``plot_*``, Figures 2-13 -- the only module that imports matplotlib.
- ``index``: ``FIGURES`` and ``write_report`` (all of it with an ``index.md``).

The rows the runner emits for the figure analyses are built by ``pipeline.analysis_rows``
(``*_entries``, re-exported here), which the runner imports without any of this.

Importing this package loads neither ``figures`` nor ``index`` (so not matplotlib): their names
are resolved on first use (``report.write_report``, ``from pipeline.report import FIGURES``).

Row vocabulary
==============
The one definition of which results rows each table and figure reads (any other column as in
``pipeline.results``; task indices t in after_task/eval_task are 0-based, as everywhere in the
results). ``lam`` is always the merge coefficient λ (NaN where none) and ``eval_task`` the
evaluated task (-1 = all); a figure's other abscissa is ``x``, of kind ``x_kind``
(``pipeline.results.X_KINDS``; NaN and "" where none). Rows of several seeds are averaged; the
std over seeds is shown where there are several.

Tables 1-8 (``table<N>.md``/``.tex``) and ``table.md``
    role="final", metric="accuracy", eval_task=-1, value = task-agnostic top-1 accuracy (%) of the
    final model (the largest after_task of its group). ``backbone`` = ``models.backbone_id``
    (``ViT-B-16/openai`` for Tables 1-6, ``ViT-L-14/openai`` Table 7,
    ``ViT-B-16/laion400m_e32`` Table 8). (method, finetuning), one row of the paper each:
    zero_shot/none, joint/joint, lwf/lwf, ewc/ewc, randmix|avg|ties/ind (Tables 1-5) and /seq
    (Tables 4, 5), maxabs/ind (magmax/ind is read as the same thing: Table 4 "MagMax Ind",
    Table 6 "θ_0"), magmax/seq, magmax/first (Table 6 "θ_1": task t fine-tuned from θ_1),
    lwf_magmax/lwf and ewc_magmax/ewc (Table 3). Where one group has several λ, the paper's λ
    (``paper_lambdas()``, from the method table) is taken. A column is (dataset, kind, tasks) of the row's scenario:
    label "<dataset>/<tasks>" = class-incremental (cifar100/10; Table 2's CIL columns are
    domainnet/6 and imagenet_r/15), "<dataset>/dil" = domain-incremental; a scenario whose
    final rows name several datasets is the eight-dataset sequence of Table 5 (one final row
    per evaluated dataset, ``dataset`` = that dataset, e.g. scenario "8datasets"). Any other
    label counts as class-incremental with 1 + its largest after_task tasks.
Figure 2 (pruning)
    role="analysis", metric="prune_accuracy", method="highest"|"lowest"|"random",
    x_kind="share_kept", x = fraction of the task vector's entries kept (0..1), lam = 1 (the pruned
    vector is added whole), value = accuracy (%).
Figures 3 and 10 (sign_conflicts)
    role="analysis", metric="sign_conflicts", method="sign_conflicts", finetuning="ind"|"seq",
    x_kind="top_k", x = share of entries each vector keeps by the trimming
    (``merge.sign_conflict_top_k``, 0.2 as in the paper), value = fraction (0..1) of parameters
    in conflict after that trimming. Every scenario present is drawn, grouped by kind
    (class-/domain-incremental, eight datasets).
Figures 4 and 11 (accuracy_matrices, accuracy_matrices_magmax)
    role="matrix", metric="accuracy", after_task = r, eval_task = c >= 0, value = accuracy (%)
    on task c after training task r. Figure 4 draws seq_ft, avg and magmax (every method
    present if none of those); Figure 11 draws magmax for every scenario (two or more).
Figure 5 (kth_magnitude)
    role="analysis", metric="kth_accuracy", method="kth_magnitude", finetuning="ind"|"seq",
    x_kind="kth", x = k (1 = MagMax; merges rescaled to MagMax's norm,
    ``analysis.kth_magnitude_merges``), lam = the λ they are applied with, value = accuracy (%).
Figure 6 (update_consistency)
    role="analysis", metric="consistency_magnitude", method="magmax", finetuning="seq",
    after_task = t (the sequential task vector tau_t), x_kind="n_consistent", x = n (number of
    consistent update directions), value = mean |tau_t| over those parameters
    (``analysis.update_consistency`` with reference=t; ``consistency_entries``).
Figure 7 (contributions)
    role="analysis", metric="contribution", method="magmax", finetuning="ind"|"seq",
    x_kind="source_task", x = t, value = share (0..1) of parameters the merge takes from tau_t
    (``analysis.contributions``; ``contribution_entries``).
Figure 8 (leave_one_out)
    role="analysis", metric="leave_one_out_accuracy", method="magmax", finetuning="ind"|"seq",
    x_kind="left_out", x = the task left out (x_kind "" and x NaN: the merge of all tasks),
    after_task = the last task, eval_task = evaluated task
    (-1: all classes), lam = the λ of the merges, value = accuracy (%). Drawn as accuracy minus
    the all-task merge's.
Figure 9 (lambda_sweep)
    role="sweep", metric="accuracy", eval_task=-1, lam = λ, value = accuracy (%).
Figure 12 (layer_magnitudes)
    role="analysis", method="magmax", finetuning="seq", after_task = t (tau_MagMax after task t),
    metric="layer_magnitude_<type>" (type ln|attn|mlp|embed|other, eval_task=-1) and
    metric="block_magnitude" (x_kind="block", x = block index), value = mean |entry|
    (``analysis.mean_magnitude_by_layer``; ``layer_magnitude_entries``).
Figure 13 (entry_distributions)
    role="analysis", metric="entry_histogram", finetuning="ind"|"seq", method="task_vector"
    (after_task = t: tau_t) or the merge (e.g. "magmax", after_task = T-1),
    x_kind="bin_centre", x = bin centre, value = count (``analysis.entry_histogram``;
    ``histogram_entries``).
index.md tables
    role="analysis", metric="first_task_forgetting" | "average_forgetting" (points) | "chance" (%).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pipeline.analysis_rows import (
    consistency_entries,
    contribution_entries,
    histogram_entries,
    layer_magnitude_entries,
)
from pipeline.report.names import PAPER_METHOD_ORDER, REFERENCE_METHODS, display_name, paper_lambdas
from pipeline.report.render import paper_latex, paper_markdown, to_latex, to_markdown
from pipeline.report.rows import accuracy_matrix, scenario_keys
from pipeline.report.tables import PaperTable, available_tables, final_table, paper_table

if TYPE_CHECKING:  # resolved lazily at run time (``__getattr__``), visible to type checkers
    from pipeline.report.figures import (
        FIG4_METHODS,
        LAYER_TYPES,
        PRUNE_MODES,
        plot_accuracy_matrices,
        plot_contributions,
        plot_entry_distributions,
        plot_figure4,
        plot_figure11,
        plot_kth_magnitude,
        plot_lambda_sweep,
        plot_layer_magnitudes,
        plot_leave_one_out,
        plot_pruning,
        plot_sign_conflicts,
        plot_update_consistency,
    )
    from pipeline.report.index import FIGURES, FigureSpec, write_report

__all__ = [
    "PAPER_METHOD_ORDER",
    "REFERENCE_METHODS",
    "paper_lambdas",
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

# Names of the matplotlib modules, by the submodule that defines them.
_LAZY: dict[str, str] = {
    **dict.fromkeys(("FIG4_METHODS", "LAYER_TYPES", "PRUNE_MODES", "plot_accuracy_matrices", "plot_contributions",
                     "plot_entry_distributions", "plot_figure4", "plot_figure11", "plot_kth_magnitude",
                     "plot_lambda_sweep", "plot_layer_magnitudes", "plot_leave_one_out", "plot_pruning",
                     "plot_sign_conflicts", "plot_update_consistency"), "figures"),
    **dict.fromkeys(("FIGURES", "FigureSpec", "write_report"), "index"),
}


def __getattr__(name: str) -> Any:
    # PEP 562: only called for names not found in the module, i.e. the lazy ones (once each).
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
