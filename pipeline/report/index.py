"""The report folder: ``write_report`` writes every table and figure a run has, and ``index.md``
linking all of it; ``FIGURES`` lists the figures and which rows each needs.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline import paper, results
from pipeline.report.figures import (
    plot_contributions,
    plot_entry_distributions,
    plot_figure4,
    plot_continual_matrices,
    has_continual_rows,
    has_figure4_rows,
    plot_figure11,
    plot_kth_magnitude,
    plot_lambda_sweep,
    plot_layer_magnitudes,
    plot_leave_one_out,
    plot_pruning,
    plot_sign_conflicts,
    plot_update_consistency,
)
from pipeline.report.html import BEYOND_TITLE, SEEDS_TITLE, report_html, run_config_text
from pipeline.report.render import paper_latex, paper_markdown, to_latex, to_markdown
from pipeline.report.rows import has_rows, matrix_rows, sweep_curves
from pipeline.report.tables import (PaperTable, analysis_table, available_tables, beyond_table, final_table,
                                    paper_table, seed_tests)


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
               plot_pruning, lambda df: has_rows(df, "analysis", "prune_accuracy")),
    FigureSpec("sign_conflicts", "Figures 3 and 10: sign conflicts after top-20% trimming",
               plot_sign_conflicts, lambda df: has_rows(df, "analysis", "sign_conflicts")),
    FigureSpec("accuracy_matrices", "Figure 4: task-agnostic accuracy matrices",
               plot_figure4, has_figure4_rows),
    FigureSpec("continual_matrices", "Beyond the paper: accuracy matrices of the continual merges (OPCM, DOP)",
               plot_continual_matrices, has_continual_rows),
    FigureSpec("kth_magnitude", "Figure 5: merging by the k-th highest magnitude, norms equalised",
               plot_kth_magnitude, lambda df: has_rows(df, "analysis", "kth_accuracy")),
    FigureSpec("update_consistency", "Figure 6: magnitude against consistency of update directions",
               plot_update_consistency, lambda df: has_rows(df, "analysis", "consistency_magnitude")),
    FigureSpec("contributions", "Figure 7: share of parameters each task vector contributes",
               plot_contributions, lambda df: has_rows(df, "analysis", "contribution")),
    FigureSpec("leave_one_out", "Figure 8: accuracy change when one task vector is left out",
               plot_leave_one_out, lambda df: has_rows(df, "analysis", "leave_one_out_accuracy")),
    FigureSpec("lambda_sweep", "Figure 9: accuracy relative to the best λ",
               plot_lambda_sweep, lambda df: not sweep_curves(df).empty),
    FigureSpec("accuracy_matrices_magmax", "Figure 11: MagMax's accuracy matrices in every setting",
               plot_figure11,
               lambda df: matrix_rows(df).loc[lambda d: d["method"] == "magmax", "scenario"].nunique() > 1),
    FigureSpec("layer_magnitudes", "Figure 12: mean magnitude of τ_MagMax by layer type and by block",
               plot_layer_magnitudes,
               lambda df: bool(((df["role"] == "analysis") & (df["metric"].str.startswith("layer_magnitude_")
                                                             | (df["metric"] == "block_magnitude"))).any())),
    FigureSpec("entry_distributions", "Figure 13: distributions of task-vector entries",
               plot_entry_distributions, lambda df: has_rows(df, "analysis", "entry_histogram")),
)


def write_report(run_dir_or_df: str | os.PathLike[str] | pd.DataFrame, out_dir: str | os.PathLike[str],
                 suffixes: Sequence[str] = (".png", ".pdf"), tables: Sequence[str] | None = None,
                 backbone: str | None = None, config: str | None = None) -> dict[str, Path]:
    """Write tables and figures of a run into ``out_dir``; return ``{name: path}``.

    - ``table_md``/``table_tex``: every final result (``final_table``), when there are any.
    - ``table<N>_md``/``table<N>_tex``: the paper's Tables 1-8 this run belongs to
      (``available_tables``), or exactly ``tables``; ``backbone`` lays those out from another
      backbone's rows and needs ``tables``.
    - one entry per figure of ``FIGURES`` whose rows exist, keyed by its file stem for the PNG and
      ``<stem>_pdf`` (etc.) for the other ``suffixes``. A figure whose rows are malformed is
      skipped with a warning and a note in the index instead of failing the whole report.
    - ``index``: ``index.md`` linking all of it, with the tables inline.
    - ``index_html``: ``index.html``, the same as one self-contained page (``pipeline.report.html``) with
      ``config`` (the run's config.yaml text; read from the run folder when one is given) in it.
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

    tests = seed_tests(df)
    if not tests.empty:
        paths["seeds_md"] = out / "seeds.md"
        paths["seeds_md"].write_text(f"### {SEEDS_TITLE}\n\n" + _text_table(tests) + "\n")

    rendered: dict[str, str] = {}
    paper_tables: dict[str, PaperTable] = {}
    beyond = beyond_table(df)
    if not beyond.empty:
        rendered["beyond"] = to_markdown(beyond)
        paths["beyond_md"] = out / "beyond.md"
        paths["beyond_md"].write_text(rendered["beyond"])
        paths["beyond_tex"] = out / "beyond.tex"
        paths["beyond_tex"].write_text(to_latex(beyond))
    for name in (available_tables(df) if tables is None else list(tables)):
        pt = paper_table(df, name, backbone)
        rendered[name] = paper_markdown(pt)
        paper_tables[name] = pt
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

    if config is None and not isinstance(run_dir_or_df, pd.DataFrame):
        config = run_config_text(run_dir_or_df)
    figures = [(s.key, s.title, figure_files[s.key]) for s in FIGURES if figure_files.get(s.key)]
    analysis = [(title, t) for metric, title in ANALYSIS if not (t := analysis_table(df, metric)).empty]
    paths["index_html"] = out / "index.html"
    paths["index_html"].write_text(report_html(df, final=table, beyond=beyond, seeds=tests,
                                               paper_tables=paper_tables, figures=figures, analysis=analysis, paths=paths, out=out,
                                               skipped=skipped, config=config), encoding="utf-8")
    return paths


def _links(paths: Mapping[str, Path], keys: Iterable[str], out: Path) -> str:
    return ", ".join(f"[{paths[k].name}]({paths[k].relative_to(out).as_posix()})" for k in keys if k in paths)


def _text_table(table: pd.DataFrame) -> str:
    """A frame of ready-made text cells as a Markdown table (first column: the index)."""
    head = [str(table.index.name or ""), *map(str, table.columns)]
    lines = ["| " + " | ".join(head) + " |", "|:--|" + "--:|" * len(table.columns)]
    lines += ["| " + " | ".join([str(i), *map(str, row)]) + " |" for i, row in zip(table.index, table.to_numpy())]
    return "\n".join(lines)


def _plain_markdown(table: pd.DataFrame) -> str:
    return to_markdown(table, bold_best=False)


# The analysis metrics printed as plain tables at the end of the index, with their headings.
ANALYSIS = (("first_task_forgetting", "First-task forgetting (points)"),
            ("average_forgetting", "Average forgetting (points)"), ("chance", "Chance level (%)"))


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
    if "seeds_md" in paths:
        lines += [f"## {SEEDS_TITLE}", "", paths["seeds_md"].read_text().split("\n", 2)[2].rstrip("\n"), ""]
    for name, md in rendered.items():
        # The table's own "###" caption heading follows; one level up for the index entry.
        title = (BEYOND_TITLE if name == "beyond" else paper.LAYOUTS[name].caption.split(':')[0])
        lines += [f"## {title}", "", md.rstrip("\n"), "",
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
    for metric, title in ANALYSIS:
        t = analysis_table(df, metric)
        if not t.empty:
            lines += [f"## {title}", "", _plain_markdown(t).rstrip("\n"), ""]
    if skipped:
        lines += ["## Not drawn", ""] + [f"- {s}" for s in skipped] + [""]
    return "\n".join(lines)
