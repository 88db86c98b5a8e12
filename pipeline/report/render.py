"""Markdown and LaTeX text of the report's tables.

- ``to_markdown`` / ``to_latex``: a ``final_table`` (or any methods x columns frame), best per
  column bold and second underlined, Zero-shot/Joint printed but not ranked.
- ``paper_markdown`` / ``paper_latex``: a ``PaperTable`` exactly as the paper lays it out, each
  cell "ours / paper (ours − paper)".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd

from pipeline import paper
from pipeline.report.names import REFERENCE_METHODS, display_name
from pipeline.report.tables import PaperTable

_REFERENCE_LABELS = frozenset(display_name(m) for m in REFERENCE_METHODS)


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
