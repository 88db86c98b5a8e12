"""``index.html``: the whole report as one page a person can open anywhere.

The page is self-contained so it survives being mailed, moved or opened from an object store's
console: the CSS is inline and every figure's PNG is embedded as a base64 ``data:`` URI; only the
other files (PDF, Markdown, LaTeX) are linked, relative to the page, for those who want them. It
holds the same tables as ``index.md`` (best per column bold, second underlined, ranked by
``render``'s helpers so the two can never disagree), the paper's number beside ours with the
difference coloured, every figure, the run's ``config.yaml`` and the code versions of the rows.
All text from the run (labels, config, versions) is escaped.
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import quote

import pandas as pd

from pipeline import storage
from pipeline.report.render import _blank, _cell_text, _groups, _is_reference, _num, _paper_ranks, _ranks
from pipeline.report.tables import PaperTable

_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d1d1f;
       max-width: 1200px; margin: 0 auto; padding: 1em 1.5em 4em; }
h1 { font-size: 1.6em; margin-bottom: .3em; } h2 { font-size: 1.25em; margin-top: 2em;
     border-bottom: 1px solid #ddd; padding-bottom: .2em; }
nav { font-size: .9em; columns: 2; margin: 1em 0; } nav a { display: block; }
a { color: #0b57d0; text-decoration: none; } a:hover { text-decoration: underline; }
.facts { margin: 0; padding-left: 1.2em; } .note { color: #555; font-size: .9em; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: .6em 0; font-variant-numeric: tabular-nums; font-size: .88em; }
th, td { padding: .25em .6em; border-bottom: 1px solid #e3e3e3; white-space: nowrap; }
th { background: #f4f4f6; text-align: center; } td { text-align: right; }
td.label { text-align: left; } tr.ref td { color: #666; background: #fafafa; }
tr.delta td { font-style: italic; } .paper { color: #666; font-size: .85em; }
.diff { border-radius: 3px; padding: 0 .25em; font-size: .85em; }
.ge { color: #0a5c1f; } .lt { color: #9b1111; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; font-size: .85em; border-radius: 4px; }
"""

SEEDS_TITLE = ("Paired difference from MagMax over seeds (points; two-sided paired t-test p-value; "
               "p < 0.05: the difference holds across seeds)")
BEYOND_TITLE = ("Beyond the paper: newer merges on independent (ind) and sequential (seq) fine-tunings, "
                "final task-agnostic accuracy (%)")


def run_config_text(run_dir: str | os.PathLike[str]) -> str | None:
    """The text of ``run_dir``'s ``config.yaml`` (local or a storage URI), None when there is none."""
    path = storage.join(run_dir, "config.yaml")
    return storage.read_text(path) if storage.exists(path) else None


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _href(path: Path, out: Path) -> str:
    return _e(quote(path.relative_to(out).as_posix()))


def _links(paths: Mapping[str, Path], keys: Sequence[str], out: Path) -> str:
    links = [f'<a href="{_href(paths[k], out)}">{_e(paths[k].name)}</a>' for k in keys if k in paths]
    return f'<p class="note">Files: {", ".join(links)}</p>' if links else ""


def _marked(text: str, rank: int) -> str:
    return f"<strong>{text}</strong>" if rank == 1 else f"<u>{text}</u>" if rank == 2 else text


def table_html(table: pd.DataFrame, ranked: bool = True) -> str:
    """A methods x columns frame (``final_table``, ``beyond_table``, ``analysis_table``) as an
    HTML table: best per column bold, second underlined (``render._ranks``) when ``ranked``."""
    if table.empty:
        return '<p class="note">No final results.</p>'
    ranks = _ranks(table) if ranked else None
    head = "".join(f"<th>{_e(c)}</th>" for c in ["Method", *table.columns])
    body = []
    for row in table.index:
        cells = [f'<td class="label">{_e(row)}</td>']
        for col in table.columns:
            rank = 0 if ranks is None else int(ranks.at[row, col])
            cells.append(f"<td>{_marked(_e(_cell_text(table, row, col, ' ± ')), rank)}</td>")
        cls = ' class="ref"' if _is_reference(str(row)) else ""
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def text_table_html(table: pd.DataFrame) -> str:
    """A frame of ready-made text cells (``seed_tests``) as an HTML table, its index name in the corner."""
    head = "".join(f"<th>{_e(c)}</th>" for c in [table.index.name or "", *table.columns])
    body = "".join("<tr>" + f'<td class="label">{_e(i)}</td>' + "".join(f"<td>{_e(v)}</td>" for v in row) + "</tr>"
                   for i, row in zip(table.index, table.to_numpy()))
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def _diff_span(diff: float) -> str:
    """ours − paper, green where ours ≥ paper and red below, the shade deepening up to 10 points."""
    d = round(float(diff), 2) + 0.0
    strength = 0.10 + 0.45 * min(abs(d) / 10.0, 1.0)
    cls, rgb = ("ge", "40,167,69") if d >= 0 else ("lt", "220,53,69")
    return (f'<span class="diff {cls}" style="background: rgba({rgb},{strength:.2f})">'
            f"({_e(_num(d, True))})</span>")


def _paper_cell(pt: PaperTable, i: int, j: int, rank: int) -> str:
    label = pt.layout.columns[j].label
    signed = pt.layout.rows[i].delta is not None or pt.layout.columns[j].dataset == "delta_avg"
    v, sd, p = pt.ours.at[i, label], pt.std.at[i, label], pt.paper.at[i, label]
    text = "–" if pd.isna(v) else _num(v, signed)
    if not pd.isna(v) and not pd.isna(sd):
        text += f" ± {_num(sd)}"
    text = _marked(_e(text), rank)
    if not pd.isna(p):
        text += f' <span class="paper">/ {_e(_num(p, signed))}</span>'
        if not pd.isna(v):
            text += " " + _diff_span(v - p)
    return text


def paper_html(pt: PaperTable) -> str:
    """A ``PaperTable`` as HTML, laid out as the paper prints it (the same rows, columns and
    spanning headers as ``paper_latex``): each cell ours, the paper's number and the coloured
    difference; ours' best per column bold, second underlined (``render._paper_ranks``)."""
    layout = pt.layout
    cols = layout.columns
    ranks = _paper_ranks(pt)
    lead = [layout.row_header] + (["FT"] if layout.ft_column else [])
    groups = _groups(cols)
    if any(g for g, _ in groups):
        top, k = [f'<th rowspan="2">{_e(h)}</th>' for h in lead], 0
        for g, span in groups:
            top.append(f'<th colspan="{span}">{_e(g)}</th>' if g else f'<th rowspan="2">{_e(cols[k].label)}</th>')
            k += span
        subs = [f"<th>{_e(c.sub)}</th>" for c in cols if c.group]
        head = f"<tr>{''.join(top)}</tr><tr>{''.join(subs)}</tr>"
    else:
        head = "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in [*lead, *(c.label for c in cols)]) + "</tr>"
    body = []
    for i, row in enumerate(layout.rows):
        cells = [f'<td class="label">{_e(row.label)}</td>']
        if layout.ft_column:
            cells.append(f'<td class="label">{_e(row.ft_label)}</td>')
        j = 0
        for _, span in groups:
            texts = ["" if _blank(pt, i, k) else _paper_cell(pt, i, k, int(ranks.at[i, cols[k].label]))
                     for k in range(j, j + span)]
            if row.reference and span > 1:
                cells.append(f'<td colspan="{span}" style="text-align: center">{texts[0]}</td>')
            else:
                cells += [f"<td>{t}</td>" for t in texts]
            j += span
        cls = ' class="ref"' if row.reference else ' class="delta"' if row.delta is not None else ""
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    seeds = ", ".join(map(str, pt.seeds)) or "none"
    ours = "" if pt.backbone == layout.backbone else f"; ours: {pt.backbone}"
    note = (f"Paper backbone: {layout.backbone}{ours}. Seeds: {seeds}. Each cell: ours / paper "
            "(ours − paper), green where ours ≥ paper, red below; ours' best per column in bold, second "
            "underlined; – = not in this run.")
    return (f'<p class="note">{_e(layout.caption)}</p><p class="note">{_e(note)}</p>'
            f'<div class="scroll"><table><thead>{head}</thead><tbody>{"".join(body)}</tbody></table></div>')


def _img(path: Path, title: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_e(title)}">'


def report_html(df: pd.DataFrame, *, final: pd.DataFrame, beyond: pd.DataFrame,
                seeds: pd.DataFrame | None = None, paper_tables: Mapping[str, PaperTable],
                figures: Sequence[tuple[str, str, Sequence[str]]],
                analysis: Sequence[tuple[str, pd.DataFrame]], paths: Mapping[str, Path], out: Path,
                skipped: Sequence[str] = (), config: str | None = None) -> str:
    """The page. ``figures``: (key, title, file keys of ``paths``) per drawn figure, the PNG
    (``paths[key]``) embedded, the others linked; ``analysis``: (title, table) printed unranked;
    ``paths``: what ``write_report`` wrote, for the links (relative to ``out``, the page's folder);
    ``seeds``: ``seed_tests``'s text cells (each variant's paired difference from MagMax), if any."""
    runs = ", ".join(sorted(df["run"].unique())) or "(empty)"
    sections: list[tuple[str, str, str]] = []  # (anchor, heading, body)
    sections.append(("final", "Final task-agnostic accuracy (%)",
                     '<p class="note">Best per column in <strong>bold</strong>, second <u>underlined</u> '
                     "(Zero-shot and Joint are references, not ranked).</p>"
                     + table_html(final) + _links(paths, ("table_md", "table_tex"), out)))
    if not beyond.empty:
        sections.append(("beyond", BEYOND_TITLE, table_html(beyond) + _links(paths, ("beyond_md", "beyond_tex"), out)))
    if seeds is not None and not seeds.empty:
        sections.append(("seeds", SEEDS_TITLE, text_table_html(seeds) + _links(paths, ("seeds_md",), out)))
    for name, pt in paper_tables.items():
        sections.append((name, pt.layout.caption.split(":")[0],
                         paper_html(pt) + _links(paths, (f"{name}_md", f"{name}_tex"), out)))
    for key, title, files in figures:
        body = f"<figure>{_img(paths[key], title)}</figure>" if key in paths else ""
        sections.append((f"fig-{key}", title, body + _links(paths, [k for k in files if k != key], out)))
    for i, (title, t) in enumerate(analysis):
        sections.append((f"analysis-{i}", title, table_html(t, ranked=False)))
    if skipped:
        sections.append(("not-drawn", "Not drawn", "<ul>" + "".join(f"<li>{_e(s)}</li>" for s in skipped) + "</ul>"))
    versions = sorted(df["code_version"].unique()) if not df.empty else []
    sections.append(("config", "Run config (config.yaml)",
                     f"<pre>{_e(config)}</pre>" if config is not None
                     else '<p class="note">No config.yaml was given to the report.</p>'))

    facts = [("runs", runs)]
    if not df.empty:
        facts += [("backbones", ", ".join(sorted(df["backbone"].unique()))),
                  ("seeds", ", ".join(str(s) for s in sorted(df["seed"].unique()))),
                  ("code versions", ", ".join(versions)), ("rows", str(len(df)))]
    fact_list = "".join(f'<li>{_e(k)}: <span class="{_e(k.replace(" ", "-"))}">{_e(v)}</span></li>'
                        for k, v in facts)
    nav = "".join(f'<a href="#{_e(a)}">{_e(h)}</a>' for a, h, _ in sections)
    parts = [f'<section id="{_e(a)}"><h2>{_e(h)}</h2>{b}</section>' for a, h, b in sections]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>MagMax report: {_e(runs)}</title><style>{_CSS}</style></head>\n<body>"
            f"<h1>MagMax report: {_e(runs)}</h1><ul class=\"facts\">{fact_list}</ul><nav>{nav}</nav>\n"
            + "\n".join(parts) + "\n</body></html>\n")
