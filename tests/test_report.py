"""Tests for pipeline.report and jobs/make_report.py on a small synthetic run."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import paper, report
from pipeline.analysis import PRUNE_KEEP
from pipeline.merging import magmax
from pipeline.report.rows import leave_one_out_delta, seen_average
from pipeline.results import COLUMNS, make_rows, read_run, write_unit

REPO = Path(__file__).resolve().parent.parent
COMMON = {"run": "synthetic", "backbone": "ViT-B-16/openai", "metric": "accuracy",
          "config_hash": "abc123", "code_version": "deadbee"}
FINETUNING = {"zero_shot": "none", "joint": "joint", "lwf": "lwf", "ewc": "ewc", "seq_ft": "seq",
              "randmix": "seq", "maxabs": "ind", "avg": "ind", "ties": "ind", "magmax": "seq"}
# (cifar100/3, cars/3). Zero-shot and Joint are the highest on purpose: they must not be ranked.
# cifar100/3: MagMax best, TIES second; cars/3: TIES best, MagMax second; Avg: MagMax, TIES.
FINAL = {
    "magmax": (80.0, 66.0), "ties": (75.0, 67.0), "avg": (71.0, 62.0), "maxabs": (74.0, 63.0),
    "randmix": (72.0, 61.0), "seq_ft": (60.0, 50.0), "ewc": (65.0, 55.0), "lwf": (70.0, 60.0),
    "joint": (99.0, 98.0), "zero_shot": (95.0, 90.0),
}
SCENARIOS = ("cifar100/3", "cars/3")
T = 3


def matrix_value(method: str, r: int, c: int) -> float:
    return {"seq_ft": 10.0, "magmax": 20.0, "avg": 30.0}[method] + 10 * r + c


def synthetic_rows() -> list[dict]:
    entries = []
    for method, values in FINAL.items():  # dict order is not the paper order: final_table sorts
        for scenario, value in zip(SCENARIOS, values):
            entries.append({"scenario": scenario, "dataset": scenario.split("/")[0], "method": method,
                            "finetuning": FINETUNING[method], "seed": 5, "role": "final", "value": value,
                            "after_task": -1 if method == "zero_shot" else T - 1,
                            "lam": {"magmax": 0.5, "ties": 0.55, "maxabs": 0.5, "randmix": 1.0}.get(method, math.nan)})
    for method in ("seq_ft", "magmax", "avg"):
        for r in range(T):
            for c in range(T):
                if method == "avg" and (r, c) == (2, 0):
                    continue  # a missing cell must come back as NaN
                entries.append({"scenario": "cifar100/3", "dataset": "cifar100", "method": method,
                                "finetuning": FINETUNING[method], "seed": 5, "role": "matrix",
                                "after_task": r, "eval_task": c, "value": matrix_value(method, r, c)})
            entries.append({"scenario": "cifar100/3", "dataset": "cifar100", "method": method,
                            "finetuning": FINETUNING[method], "seed": 5, "role": "matrix",
                            "after_task": r, "eval_task": -1, "value": 50.0 + r})
    lams = [round(0.05 * i, 2) for i in range(1, 21)]
    for method, peak in (("magmax", 0.5), ("ties", 0.6)):
        for k, scenario in enumerate(SCENARIOS):
            for lam in lams:
                entries.append({"scenario": scenario, "dataset": scenario.split("/")[0], "method": method,
                                "finetuning": FINETUNING[method], "seed": 5, "role": "sweep", "lam": lam,
                                "after_task": T - 1, "value": 70.0 - 20 * abs(lam - peak) - k})
    for scenario, (ind, seq) in zip(SCENARIOS, ((0.30, 0.10), (0.25, 0.05))):
        for ft, v in (("ind", ind), ("seq", seq)):
            entries.append({"scenario": scenario, "dataset": scenario.split("/")[0], "method": "sign_conflicts",
                            "finetuning": ft, "seed": 5, "role": "analysis", "value": v,
                            "after_task": T - 1, "metric_": "sign_conflicts"})
    for method, v in (("seq_ft", 25.7), ("magmax", 9.8)):
        entries.append({"scenario": "cifar100/3", "dataset": "cifar100", "method": method,
                        "finetuning": FINETUNING[method], "seed": 5, "role": "analysis", "value": v,
                        "metric_": "first_task_forgetting"})
    entries.append({"scenario": "cifar100/3", "dataset": "cifar100", "method": "chance", "finetuning": "none",
                    "seed": 5, "role": "analysis", "value": 1.0, "metric_": "chance"})
    common = {k: v for k, v in COMMON.items() if k != "metric"}
    rows = make_rows(common, [{**{k: v for k, v in e.items() if k != "metric_"},
                               "metric": e.get("metric_", "accuracy")} for e in entries])
    return rows


@pytest.fixture(scope="module")
def df() -> pd.DataFrame:
    return pd.DataFrame(synthetic_rows(), columns=list(COLUMNS))


EXPECTED_MD = """\
| Method | cars/3 | cifar100/3 | Avg |
|:---|---:|---:|---:|
| Zero-shot | 90.00 | 95.00 | 92.50 |
| Joint | 98.00 | 99.00 | 98.50 |
| LwF | 60.00 | 70.00 | 65.00 |
| EWC | 55.00 | 65.00 | 60.00 |
| Seq-FT | 50.00 | 60.00 | 55.00 |
| RandMix | 61.00 | 72.00 | 66.50 |
| MaxAbs | 63.00 | 74.00 | 68.50 |
| Avg | 62.00 | 71.00 | 66.50 |
| TIES | **67.00** | <u>75.00</u> | <u>71.00</u> |
| MagMax | <u>66.00</u> | **80.00** | **73.00** |
"""


def test_final_table_values_and_order(df):
    table = report.final_table(df)
    assert list(table.index) == ["Zero-shot", "Joint", "LwF", "EWC", "Seq-FT", "RandMix", "MaxAbs", "Avg",
                                 "TIES", "MagMax"]
    assert list(table.columns) == ["cars/3", "cifar100/3", "Avg"]  # natural order, then Avg
    assert table.at["MagMax", "cifar100/3"] == 80.0
    assert table.at["TIES", "Avg"] == pytest.approx(71.0)
    assert "std" not in table.attrs  # one seed: no std
    assert list(report.final_table(df, scenarios=["cifar100/3", "cars/3"]).columns) == ["cifar100/3", "cars/3", "Avg"]
    one = report.final_table(df[df["scenario"] == "cars/3"])
    assert list(one.columns) == ["cars/3"]  # no Avg with one scenario


def test_markdown_bold_underline_exact(df):
    assert report.to_markdown(report.final_table(df)) == EXPECTED_MD
    # Zero-shot/Joint are highest everywhere but never marked.
    assert "**9" not in EXPECTED_MD and "<u>9" not in EXPECTED_MD
    plain = report.to_markdown(report.final_table(df), bold_best=False)
    assert "**" not in plain and "<u>" not in plain


def test_latex_marks_and_reference_rule(df):
    tex = report.to_latex(report.final_table(df))
    assert r"TIES & \textbf{67.00} & \underline{75.00} & \underline{71.00} \\" in tex
    assert r"MagMax & \underline{66.00} & \textbf{80.00} & \textbf{73.00} \\" in tex
    assert "Joint & 98.00 & 99.00 & 98.50 \\\\\n\\hline\nLwF" in tex
    assert tex.startswith(r"\begin{tabular}{lrrr}") and tex.rstrip().endswith(r"\end{tabular}")


def test_seeds_std_ties_and_variants():
    rows = make_rows({**COMMON, "scenario": "cifar100/3", "dataset": "cifar100", "role": "final",
                      "after_task": 2}, [
        {"method": "magmax", "finetuning": "seq", "seed": 1, "value": 70.0},
        {"method": "magmax", "finetuning": "seq", "seed": 2, "value": 72.0},
        {"method": "ties", "finetuning": "ind", "seed": 1, "value": 71.0},
        {"method": "avg", "finetuning": "ind", "seed": 1, "value": 71.0},
        {"method": "magmax", "finetuning": "ind", "seed": 1, "value": 60.0},
    ])
    table = report.final_table(pd.DataFrame(rows))
    assert list(table.index) == ["Avg", "TIES", "MagMax (ind)", "MagMax (seq)"]
    assert table.attrs["std"] == {("MagMax (seq)", "cifar100/3"): pytest.approx(math.sqrt(2))}
    md = report.to_markdown(table)
    assert "| MagMax (seq) | **71.00 ± 1.41** |" in md
    # Equal printed values share a rank: both bold, the next distinct value is second.
    assert "| Avg | **71.00** |" in md and "| TIES | **71.00** |" in md
    assert "| MagMax (ind) | <u>60.00</u> |" in md


def test_accuracy_matrix_exact(df):
    m = report.accuracy_matrix(df, "seq_ft")  # one scenario has matrix rows: no scenario needed
    expected = np.array([[matrix_value("seq_ft", r, c) for c in range(T)] for r in range(T)])
    np.testing.assert_array_equal(m, expected)
    avg = report.accuracy_matrix(df, "avg", "cifar100/3")
    assert math.isnan(avg[2, 0]) and avg[2, 1] == matrix_value("avg", 2, 1)
    with pytest.raises(ValueError, match="no matrix rows"):
        report.accuracy_matrix(df, "ties")
    both = pd.concat([df, df[df["role"] == "matrix"].assign(scenario="cars/3")])
    with pytest.raises(ValueError, match="several scenarios"):
        report.accuracy_matrix(both, "seq_ft")
    np.testing.assert_array_equal(report.accuracy_matrix(both, "seq_ft", "cars/3"), expected)


def test_seen_average_is_lower_triangle_mean():
    m = np.array([[10.0, 1.0], [20.0, 40.0]])
    np.testing.assert_array_equal(seen_average(m), [10.0, 30.0])


def test_write_report_writes_everything(df, tmp_path):
    paths = report.write_report(df, tmp_path / "rep")
    figures = ("accuracy_matrices", "lambda_sweep", "sign_conflicts")
    # cifar100/3 and cars/3 are no paper scenario: no paper table, only table.md
    expected = {"table_md", "table_tex", "index", "index_html", *figures, *(f"{f}_pdf" for f in figures)}
    assert set(paths) == expected
    for key, p in paths.items():
        assert p.exists() and p.stat().st_size > 0, key
    for key in figures:
        assert paths[key].suffix == ".png"
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert paths[f"{key}_pdf"].read_bytes()[:4] == b"%PDF"
    assert paths["table_md"].read_text() == EXPECTED_MD
    index = paths["index"].read_text()
    assert EXPECTED_MD.rstrip("\n") in index
    for name in ("table.md", "table.tex", "accuracy_matrices.png", "lambda_sweep.png", "sign_conflicts.png",
                 "accuracy_matrices.pdf"):
        assert f"({name})" in index
    assert "| MagMax | 9.80 |" in index and "| Seq-FT | 25.70 |" in index  # forgetting table


def test_write_report_skips_absent_figures_and_pdf(df, tmp_path):
    only_final = df[df["role"] == "final"]
    paths = report.write_report(only_final, tmp_path / "a")
    assert set(paths) == {"table_md", "table_tex", "index", "index_html"}
    assert not (tmp_path / "a" / "lambda_sweep.png").exists()
    sweep = df[df["role"] == "sweep"]
    paths = report.write_report(sweep, tmp_path / "b", suffixes=(".png", ".pdf"))
    assert set(paths) == {"lambda_sweep", "lambda_sweep_pdf", "index", "index_html"}
    assert paths["lambda_sweep_pdf"].read_bytes()[:4] == b"%PDF"
    paths = report.write_report(sweep, tmp_path / "c", suffixes=(".png",))
    assert set(paths) == {"lambda_sweep", "index", "index_html"}


def write_run(df: pd.DataFrame, run_dir: Path) -> None:
    # Two unit files, as the runner would write them.
    write_unit(df[df["role"] == "final"], run_dir / "units" / "final.parquet")
    write_unit(df[df["role"] != "final"], run_dir / "units" / "rest.parquet")


def test_make_report_main(df, tmp_path, capsys):
    sys.path.insert(0, str(REPO / "jobs"))
    try:
        import make_report
    finally:
        sys.path.remove(str(REPO / "jobs"))
    run_dir = tmp_path / "run"
    write_run(df, run_dir)
    assert len(read_run(run_dir)) == len(df)
    assert make_report.main([str(run_dir)]) == 0
    printed = capsys.readouterr().out
    assert EXPECTED_MD in printed
    for name in ("index.md", "table.md", "table.tex", "accuracy_matrices.png", "lambda_sweep.png",
                 "sign_conflicts.png"):
        assert (run_dir / "report" / name).stat().st_size > 0, name
    # The report folder holds no Parquet, so a second pass reads the same rows.
    assert make_report.main([str(run_dir), "--out", str(tmp_path / "other")]) == 0
    assert (tmp_path / "other" / "table.md").read_text() == EXPECTED_MD
    assert make_report.main([str(tmp_path / "missing")]) == 1


def test_make_report_as_script(df, tmp_path):
    run_dir = tmp_path / "run"
    write_unit(df[df["role"] == "final"], run_dir / "final.parquet")
    proc = subprocess.run([sys.executable, str(REPO / "jobs" / "make_report.py"), str(run_dir)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert EXPECTED_MD in proc.stdout
    assert (run_dir / "report" / "table.md").exists()



# --------------------------------------------------------------------------------------------
# The paper's tables: synthetic runs whose every number is the paper's plus one point


CIL_COLUMNS = [f"{d} /{n}" for d, ns in (("CIFAR100", (5, 10, 20, 50)), ("ImageNet-R", (5, 10, 20, 50)),
                                         ("CUB200", (5, 10, 20)), ("Cars", (5, 10, 20))) for n in ns] + ["Avg"]
MAIN_ROWS = ["Zero-shot", "Joint", "LwF", "EWC", "RandMix", "MaxAbs", "Avg", "TIES", "MagMax"]
PAIRS = [(m, ft) for m in ("RandMix", "Avg", "TIES", "MagMax") for ft in ("Ind", "Seq")]
# (lead header cells, row labels (with the FT column where the paper has one), columns), typed
# from the paper's tables.
EXPECTED_LAYOUT = {
    "table1": (["Method"], [[r] for r in MAIN_ROWS], CIL_COLUMNS),
    "table2": (["Method"], [[r] for r in ("LwF", "EWC", "RandMix", "MaxAbs", "Avg", "TIES", "MagMax")],
               ["DomainNet CIL", "DomainNet DIL", "ImageNet-R CIL", "ImageNet-R DIL"]),
    "table3": (["Method"], [[r] for r in ("LwF", "LwF + MagMax", "Δ", "EWC", "EWC + MagMax", "Δ", "MagMax")],
               CIL_COLUMNS),
    "table4": (["Method", "FT"], [r for m in ("RandMix", "Avg", "TIES", "MagMax")
                                  for r in ([m, "Ind"], ["", "Seq"], ["", "Δ"])], CIL_COLUMNS),
    "table5": (["Method", "FT"], [[m if ft == "Ind" else "", ft] for m, ft in PAIRS],
               ["Cars", "DTD", "EuroSAT", "GTSRB", "MNIST", "RESISC45", "SUN397", "SVHN", "Avg", "Δ Avg"]),
    "table6": (["Initial θ for D_t"], [["θ_0"], ["θ_1"], ["θ_{t-1}"]], CIL_COLUMNS),
    "table7": (["Method"], [[r] for r in MAIN_ROWS], CIL_COLUMNS),
    "table8": (["Method"], [[r] for r in MAIN_ROWS], CIL_COLUMNS),
}


def scenario_label(dataset: str, kind: str, tasks) -> str:
    if kind == "multi_dataset":
        return "8datasets"
    return f"{dataset}/dil" if kind == "domain_incremental" else f"{dataset}/{int(tasks)}"


def paper_run_rows(table: str, offset: float = 1.0, seed: int = 5) -> list[dict]:
    """Final rows as the runner emits them for ``table``'s scenarios and methods, each value the
    paper's number + ``offset``; Zero-shot/Joint once per split of their dataset."""
    numbers = paper.numbers(table=table)
    splits = numbers.dropna(subset=["tasks"]).groupby("dataset")["tasks"].unique()
    entries = []
    for r in numbers[numbers["dataset"] != "avg"].itertuples(index=False):
        tasks_list = list(splits[r.dataset]) if pd.isna(r.tasks) and r.kind != "multi_dataset" else [r.tasks]
        for tasks in tasks_list:
            n = 8 if r.kind == "multi_dataset" else int(tasks)
            entries.append({"scenario": scenario_label(r.dataset, r.kind, tasks), "dataset": r.dataset,
                            "backbone": r.backbone, "method": r.method, "finetuning": r.finetuning,
                            "seed": seed, "after_task": -1 if r.method == "zero_shot" else n - 1,
                            "value": r.value + offset,
                            "lam": report.paper_lambdas().get(r.method, math.nan)})
    common = {"run": table, "role": "final", "metric": "accuracy", "config_hash": "h", "code_version": "v"}
    return make_rows(common, entries)


def paper_frame(table: str, **kw) -> pd.DataFrame:
    return pd.DataFrame(paper_run_rows(table, **kw), columns=list(COLUMNS))


def markdown_grid(md: str) -> list[list[str]]:
    rows = [line for line in md.splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in rows[:1] + rows[2:]]


def unmark(text: str) -> str:
    return text.replace("**", "").replace("<u>", "").replace("</u>", "")


CELL = re.compile(r"^([+-]?\d+\.\d\d) / ([+-]?\d+\.\d\d) \(([+-]\d+\.\d\d)\)$")


@pytest.mark.parametrize("table", list(EXPECTED_LAYOUT))
def test_paper_table_markdown_has_the_papers_rows_columns_and_numbers(table):
    lead, rows, columns = EXPECTED_LAYOUT[table]
    pt = report.paper_table(paper_frame(table), table)
    grid = markdown_grid(report.paper_markdown(pt))
    assert grid[0] == lead + columns
    assert [r[: len(lead)] for r in grid[1:]] == rows
    layout = paper.LAYOUTS[table]
    for i, (row, cells) in enumerate(zip(layout.rows, grid[1:])):
        for col, cell in zip(columns, cells[len(lead):]):
            if cell == "":
                # blank only where the paper prints nothing
                assert (row.reference and col not in ("Avg",) and not col.endswith("/5")) or \
                    (col == "Δ Avg" and row.baseline is None), (table, i, col)
                continue
            m = CELL.match(unmark(cell))
            assert m, (table, i, col, cell)
            ours, theirs, diff = (float(x) for x in m.groups())
            assert theirs == pytest.approx(pt.paper.at[i, col]), (table, i, col)
            if row.delta is None and col != "Δ Avg":
                # ours = paper + 1; the Avg of rounded cells may differ from the printed Avg by 0.01
                assert diff == pytest.approx(1.0, abs=0.0101 if col == "Avg" else 1e-9), (table, i, col)
            else:
                assert diff == pytest.approx(0.0, abs=0.0101), (table, i, col)


@pytest.mark.parametrize("table", list(EXPECTED_LAYOUT))
def test_paper_table_latex_has_the_papers_rows_and_columns(table):
    lead, rows, columns = EXPECTED_LAYOUT[table]
    tex = report.paper_latex(report.paper_table(paper_frame(table), table))
    assert tex.count(r"\begin{tabular}") == 1 and tex.rstrip().endswith(r"\end{tabular}")
    lines = [line for line in tex.splitlines() if line.endswith(r"\\")]
    grouped = table != "table5"
    header, body = lines[: 2 if grouped else 1], lines[2 if grouped else 1:]
    assert len(body) == len(rows)
    tex_label = {"θ_0": r"$\theta_0$", "θ_1": r"$\theta_1$", "θ_{t-1}": r"$\theta_{t-1}$", "Δ": r"$\Delta$"}
    for line, expected in zip(body, rows):
        assert line.split(" & ")[: len(lead)] == [tex_label.get(x, x) for x in expected]
    if columns is CIL_COLUMNS:
        assert header[0] == (" & " * len(lead) + r"\multicolumn{4}{c}{CIFAR100} & \multicolumn{4}{c}{ImageNet-R} & "
                             r"\multicolumn{3}{c}{CUB200} & \multicolumn{3}{c}{Cars} & Avg \\")
        assert header[1].endswith(r"/5 & /10 & /20 & /50 & /5 & /10 & /20 & /50 & /5 & /10 & /20 & /5 & /10 & /20 "
                                  r"&  \\")
    if table == "table2":
        assert r"\multicolumn{2}{c}{DomainNet} & \multicolumn{2}{c}{ImageNet-R}" in header[0]
        assert header[1] == r"Method & CIL & DIL & CIL & DIL \\"
    if table == "table5":
        assert header[0] == (r"Method & FT & Cars & DTD & EuroSAT & GTSRB & MNIST & RESISC45 & SUN397 & SVHN & Avg "
                             r"& $\Delta$ Avg \\")
    if table in ("table1", "table7", "table8"):
        assert body[0].startswith(r"Zero-shot & \multicolumn{4}{c}{")


def test_paper_table_cells_marks_and_derived_rows():
    md = report.paper_markdown(report.paper_table(paper_frame("table1"), "table1"))
    grid = {r[0]: dict(zip(CIL_COLUMNS, r[1:])) for r in markdown_grid(md)[1:]}
    # ours = paper + 1 keeps the paper's order: EWC best on CIFAR100/5, MagMax second (as printed)
    assert grid["EWC"]["CIFAR100 /5"] == "**85.41** / 84.41 (+1.00)"
    assert grid["MagMax"]["CIFAR100 /5"] == "<u>85.16</u> / 84.16 (+1.00)"
    assert grid["MagMax"]["Avg"].startswith("**75.5") and grid["LwF"]["Avg"].startswith("<u>73.3")
    assert grid["Zero-shot"]["CIFAR100 /5"] == "67.91 / 66.91 (+1.00)"  # never ranked
    assert grid["Zero-shot"]["Avg"].endswith("/ 67.21 (+1.00)")  # once per split, as the paper

    t3 = report.paper_table(paper_frame("table3"), "table3")
    # the paper's printed Δ row for LwF, derived from its numbers
    printed = [-0.57, 4.16, 3.76, 3.81, 1.40, -0.45, 0.16, 0.31, -0.59, 0.50, 0.71, 1.57, 1.20, 4.87, 1.49]
    assert t3.paper.loc[2].round(2).tolist() == pytest.approx(printed)
    assert t3.ours.loc[2, "Avg"] == pytest.approx(1.49, abs=0.011)
    t4 = report.paper_table(paper_frame("table4"), "table4")
    assert t4.paper.at[11, "Avg"] == pytest.approx(3.33)  # MagMax Δ Avg
    t5 = report.paper_table(paper_frame("table5"), "table5")
    assert t5.paper["Δ Avg"].round(2).tolist()[1::2] == pytest.approx([7.62, 12.11, 2.44, 8.60])
    assert t5.paper["Δ Avg"].isna().tolist()[0::2] == [True] * 4
    md5 = markdown_grid(report.paper_markdown(t5))
    assert md5[8][-1] == "+8.60 / +8.60 (+0.00)" and md5[7][-1] == ""


def test_paper_table_partial_run_seeds_and_aliases():
    # One scenario of MagMax, two seeds; MaxAbs written as magmax on independent fine-tuning.
    rows = make_rows({"run": "r", "backbone": "ViT-B-16/openai", "scenario": "cifar100/5", "dataset": "cifar100",
                      "role": "final", "metric": "accuracy", "after_task": 4, "config_hash": "h", "code_version": "v"},
                     [{"method": "magmax", "finetuning": "seq", "seed": 1, "lam": 0.5, "value": 84.0},
                      {"method": "magmax", "finetuning": "seq", "seed": 2, "lam": 0.5, "value": 86.0},
                      # not the paper's λ: left out
                      {"method": "magmax", "finetuning": "seq", "seed": 1, "lam": 0.3, "value": 10.0},
                      {"method": "magmax", "finetuning": "ind", "seed": 1, "lam": 0.5, "value": 80.0}])
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    pt = report.paper_table(df, "table1")
    assert pt.seeds == (1, 2)
    grid = {r[0]: dict(zip(CIL_COLUMNS, r[1:])) for r in markdown_grid(report.paper_markdown(pt))[1:]}
    assert grid["MagMax"]["CIFAR100 /5"] == "**85.00 ± 1.41** / 84.16 (+0.84)"
    assert grid["MaxAbs"]["CIFAR100 /5"] == "<u>80.00</u> / 81.95 (-1.95)"
    assert grid["MagMax"]["CIFAR100 /10"] == "– / 80.41"
    assert grid["MagMax"]["Avg"] == "– / 74.50"  # an average over part of the columns is no Avg
    assert grid["Zero-shot"]["CIFAR100 /5"] == "– / 66.91" and grid["Zero-shot"]["CIFAR100 /10"] == ""
    t6 = report.paper_table(df, "table6")
    assert t6.ours.at[0, "CIFAR100 /5"] == 80.0 and np.isnan(t6.ours.at[1, "CIFAR100 /5"])
    assert "--" in report.paper_latex(pt) and r"\textbf{85.00 $\pm$ 1.41} {\scriptsize / 84.16 (+0.84)}" in \
        report.paper_latex(pt)
    two_lams = df[df["lam"] != 0.5].assign(lam=lambda d: d["lam"] + 0.1)
    with pytest.raises(ValueError, match="several λ"):
        report.paper_table(pd.concat([two_lams, two_lams.assign(lam=0.7)]), "table1")


def test_available_tables():
    assert report.available_tables(paper_frame("table1")) == ["table1"]
    assert report.available_tables(paper_frame("table2")) == ["table2"]
    # Tables 3, 4 and 6 reprint Table 1 rows, so their runs fill part of Table 1 as well
    assert report.available_tables(paper_frame("table3")) == ["table1", "table3"]
    assert report.available_tables(paper_frame("table4")) == ["table1", "table4"]
    assert report.available_tables(paper_frame("table5")) == ["table5"]
    assert report.available_tables(paper_frame("table6")) == ["table1", "table6"]
    assert report.available_tables(paper_frame("table7")) == ["table7"]
    assert report.available_tables(paper_frame("table8")) == ["table8"]
    both = pd.concat([paper_frame("table7"), paper_frame("table8")], ignore_index=True)
    assert report.available_tables(both) == ["table7", "table8"]
    demo = paper_frame("table1").assign(backbone="tiny_clip")
    assert report.available_tables(demo) == []
    # a different backbone laid out against the paper on request
    assert report.paper_table(demo, "table1", backbone="tiny_clip").ours.notna().to_numpy().any()


def test_scenario_keys():
    rows = make_rows({"run": "r", "backbone": "b", "method": "m", "finetuning": "seq", "seed": 1, "role": "final",
                      "metric": "accuracy", "config_hash": "h", "code_version": "v", "value": 1.0}, [
        {"scenario": "cifar100/10", "dataset": "cifar100", "after_task": 9},
        {"scenario": "domainnet/dil", "dataset": "domainnet", "after_task": 5},
        {"scenario": "8datasets", "dataset": "cars", "after_task": 7},
        {"scenario": "8datasets", "dataset": "mnist", "after_task": 7},
        {"scenario": "my-cars", "dataset": "cars", "after_task": 3},
    ])
    keys = report.scenario_keys(pd.DataFrame(rows, columns=list(COLUMNS)))
    assert keys["_kind"].tolist() == ["class_incremental", "domain_incremental", "multi_dataset", "multi_dataset",
                                      "class_incremental"]
    assert keys["_tasks"].tolist()[:2] == [10, 6] and keys["_tasks"].tolist()[4] == 4
    assert keys["_tasks"].isna().tolist()[2:4] == [True, True]


def test_write_report_paper_tables_and_make_report_flags(tmp_path, capsys):
    df = pd.concat([paper_frame("table2"), paper_frame("table5")], ignore_index=True)
    paths = report.write_report(df, tmp_path / "rep")
    assert {"table2_md", "table2_tex", "table5_md", "table5_tex"} <= set(paths)
    index = paths["index"].read_text()
    assert "(table2.md)" in index and "(table5.tex)" in index and "DomainNet DIL" in index
    only = report.write_report(df, tmp_path / "one", tables=["table6"])
    assert {k for k in only if k.startswith("table") and k[5:6].isdigit()} == {"table6_md", "table6_tex"}
    with pytest.raises(ValueError):
        report.write_report(df, tmp_path / "x", backbone="ViT-L-14/openai")
    with pytest.raises(ValueError):
        report.write_report(df, tmp_path / "x", tables=["table9"])

    sys.path.insert(0, str(REPO / "jobs"))
    try:
        import make_report
    finally:
        sys.path.remove(str(REPO / "jobs"))
    run_dir = tmp_path / "run"
    write_unit(df, run_dir / "final.parquet")
    assert make_report.main([str(run_dir), "--tables", "table1", "--backbone", "ViT-B-16/openai"]) == 0
    out = capsys.readouterr().out
    assert "table1.md" in out and (run_dir / "report" / "table1.tex").is_file()
    assert not (run_dir / "report" / "table2.md").exists()
    with pytest.raises(SystemExit):
        make_report.main([str(run_dir), "--backbone", "ViT-B-16/openai"])


# --------------------------------------------------------------------------------------------
# Figures: every one from synthetic rows, through the analysis functions where they exist

FIG_T = 3


def figure_rows() -> list[dict]:
    import torch

    from pipeline import analysis

    gen = torch.Generator().manual_seed(0)
    seq = [{"transformer.resblocks.0.attn.in_proj_weight": torch.randn(6, generator=gen) * (t + 1),
            "transformer.resblocks.1.mlp.c_fc.weight": torch.randn(4, generator=gen) * (t + 1),
            "ln_post.weight": torch.randn(2, generator=gen)} for t in range(FIG_T)]
    ind = [{k: torch.randn(v.shape, generator=gen) for k, v in seq[0].items()} for _ in range(FIG_T)]
    entries: list[dict] = []
    # Two scenarios where a figure needs them (Figure 11 draws MagMax in several settings).
    for scenario in ("cifar100/3", "imagenet_r/3"):
        sc = {"scenario": scenario, "dataset": scenario.split("/")[0]}
        for t in range(FIG_T):
            for method in ("seq_ft", "avg", "magmax"):
                entries += [{**sc, "method": method, "finetuning": "seq", "role": "matrix", "metric": "accuracy",
                             "after_task": t, "eval_task": c, "value": 50.0 + t + c} for c in range(FIG_T)]
            # a continual merge beyond the paper, on both fine-tunings (its own figure)
            entries += [{**sc, "method": "opcm", "finetuning": ft, "role": "matrix", "metric": "accuracy",
                         "after_task": t, "eval_task": c, "value": 45.0 + t + c}
                        for ft in ("ind", "seq") for c in range(FIG_T)]
    for scenario in ("cifar100/3",):
        sc = {"scenario": scenario, "dataset": scenario.split("/")[0]}
        for mode in report.PRUNE_MODES:
            entries += [{**sc, "method": mode, "finetuning": "ind", "role": "analysis", "metric": "prune_accuracy",
                         "lam": 1.0, "x": k, "x_kind": "share_kept", "value": 60 + 30 * k} for k in (0.0, 0.2, 1.0)]
        for ft, tvs in (("ind", ind), ("seq", seq)):
            entries.append({**sc, "method": "sign_conflicts", "finetuning": ft, "role": "analysis",
                            "metric": "sign_conflicts", "value": analysis.sign_conflicts(tvs)})
            entries += [{**sc, "method": "kth_magnitude", "finetuning": ft, "role": "analysis",
                         "metric": "kth_accuracy", "lam": 0.5, "x": float(k), "x_kind": "kth", "value": 80.0 - k}
                        for k in range(1, FIG_T + 1)]
            entries += [{**sc, **e} for e in report.contribution_entries(analysis.contributions(tvs), finetuning=ft)]
            entries += [{**sc, "method": "magmax", "finetuning": ft, "role": "analysis",
                         "metric": "leave_one_out_accuracy", "after_task": FIG_T - 1, "eval_task": e,
                         **({"x": float(left), "x_kind": "left_out"} if left >= 0 else {}),
                         "value": 70.0 - 5 * (left == e)} for left in range(-1, FIG_T) for e in range(-1, FIG_T)]
            edges = analysis.histogram_edges(tvs, bins=9)
            for t, tv in enumerate(tvs):
                entries += [{**sc, **e} for e in report.histogram_entries(
                    analysis.entry_histogram(tv, edges), method="task_vector", finetuning=ft, after_task=t)]
            entries += [{**sc, **e} for e in report.histogram_entries(
                analysis.entry_histogram(magmax(tvs), edges), method="magmax", finetuning=ft, after_task=FIG_T - 1)]
        for t in range(FIG_T):
            entries += [{**sc, **e} for e in report.consistency_entries(
                analysis.update_consistency(seq, reference=t), after_task=t)]
            entries += [{**sc, **e} for e in report.layer_magnitude_entries(
                analysis.mean_magnitude_by_layer(magmax(seq[: t + 1])), after_task=t)]
        entries += [{**sc, "method": "magmax", "finetuning": "seq", "role": "sweep", "metric": "accuracy",
                     "lam": lam, "after_task": FIG_T - 1, "value": 70 - abs(lam - 0.5)} for lam in (0.25, 0.5, 1.0)]
    entries += [{"scenario": "domainnet/dil", "dataset": "domainnet", "method": "sign_conflicts", "finetuning": ft,
                 "role": "analysis", "metric": "sign_conflicts", "value": v} for ft, v in (("ind", 0.2), ("seq", 0.02))]
    return make_rows({"run": "figs", "backbone": "ViT-B-16/openai", "seed": 5, "config_hash": "h",
                      "code_version": "v"}, entries)


@pytest.fixture(scope="module")
def figure_report(tmp_path_factory) -> dict[str, Path]:
    df = pd.DataFrame(figure_rows(), columns=list(COLUMNS))
    return report.write_report(df, tmp_path_factory.mktemp("figs"))


def test_figure_rows_are_valid_results(tmp_path):
    write_unit(figure_rows(), tmp_path / "u.parquet")  # schema, types and unique keys
    assert len(read_run(tmp_path)) == len(figure_rows())


@pytest.mark.parametrize("key", [spec.key for spec in report.FIGURES])
def test_every_figure_writes_png_and_pdf(figure_report, key):
    assert figure_report[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert figure_report[f"{key}_pdf"].read_bytes()[:4] == b"%PDF"
    title = next(s.title for s in report.FIGURES if s.key == key)
    index = figure_report["index"].read_text()
    assert f"## {title}" in index and f"]({key}.png)" in index and f"[{key}.pdf]({key}.pdf)" in index


def test_entry_helpers_exact():
    from pipeline.analysis import Histogram, LayerMagnitudes

    assert report.consistency_entries({2: 0.5, 0: 0.1}, after_task=1) == [
        {"role": "analysis", "metric": "consistency_magnitude", "x": 0.0, "x_kind": "n_consistent", "value": 0.1,
         "method": "magmax", "finetuning": "seq", "after_task": 1},
        {"role": "analysis", "metric": "consistency_magnitude", "x": 2.0, "x_kind": "n_consistent", "value": 0.5,
         "method": "magmax", "finetuning": "seq", "after_task": 1}]
    contrib = report.contribution_entries([0.25, 0.75], finetuning="ind")
    assert [(e["x"], e["x_kind"], e["value"], e["after_task"]) for e in contrib] == [
        (0.0, "source_task", 0.25, 1), (1.0, "source_task", 0.75, 1)]
    layers = report.layer_magnitude_entries(LayerMagnitudes({"ln": 2.0, "mlp": 1.0}, {0: 1.5}), after_task=0)
    assert [(e["metric"], e.get("x_kind", ""), e.get("x"), e["value"]) for e in layers] == [
        ("layer_magnitude_ln", "", None, 2.0), ("layer_magnitude_mlp", "", None, 1.0),
        ("block_magnitude", "block", 0.0, 1.5)]
    hist = report.histogram_entries(Histogram((-1.0, 0.0, 1.0), (3, 4)), method="task_vector", finetuning="seq",
                                    after_task=2)
    assert [(e["x"], e["x_kind"], e["value"]) for e in hist] == [(-0.5, "bin_centre", 3.0), (0.5, "bin_centre", 4.0)]
    # the helpers leave λ and the evaluated task to their defaults (NaN, -1): never an abscissa
    for e in [*contrib, *layers, *hist, *report.consistency_entries({1: 0.2}, after_task=0)]:
        assert "lam" not in e and "eval_task" not in e


def test_analysis_producers_keep_lam_for_lambda_and_x_for_abscissae(tmp_path):
    # Every analysis row the runner makes (figure_rows with every analysis, plus chance, sign
    # conflicts and forgetting): lam is NaN or exactly the λ its vector was evaluated with,
    # eval_task is -1 or an evaluated task, and each figure's abscissa sits in x with its kind.
    from types import SimpleNamespace

    import torch

    from pipeline.orchestration import scenario_results
    from pipeline.orchestration.figures import ANALYSES, figure_rows

    gen = torch.Generator().manual_seed(1)
    seq = [{"transformer.resblocks.0.attn.in_proj_weight": torch.randn(8, generator=gen),
            "transformer.resblocks.1.mlp.c_fc.weight": torch.randn(6, generator=gen),
            "ln_post.weight": torch.randn(3, generator=gen)} for _ in range(FIG_T)]
    ind = [{k: torch.randn(v.shape, generator=gen) for k, v in seq[0].items()} for _ in range(FIG_T)]
    cfg = SimpleNamespace(seed=0, merge=SimpleNamespace(magmax_lambda=0.37, sign_conflict_top_k=0.2))
    scenario = SimpleNamespace(analyses=tuple(ANALYSES))

    def evaluate(items):  # oracle: every accuracy is the λ its vector was applied with
        return [(float(lam), [float(lam)] * FIG_T) for _kind, _payload, lam in items]

    rows = figure_rows(cfg, scenario, {"ind": ind, "seq": seq}, None, evaluate)
    matrix = [{"method": "seq_ft", "finetuning": "seq", "after_task": r, "eval_task": c, "value": 50.0 + r - c}
              for r in range(FIG_T) for c in range(FIG_T)]
    rows += scenario_results._analysis_rows(cfg, SimpleNamespace(analyses=()),
                                            SimpleNamespace(num_tasks=FIG_T, tvs={"ind": ind, "seq": seq}),
                                            SimpleNamespace(trim={}), 1.0, matrix)
    df = pd.DataFrame(make_rows({"run": "r", "scenario": "s/3", "dataset": "s", "backbone": "b", "seed": 0,
                                 "config_hash": "h", "code_version": "v"}, rows), columns=list(COLUMNS))
    write_unit(df, tmp_path / "analysis.parquet")  # valid, unique keys
    abscissa = {"prune_accuracy": "share_kept", "kth_accuracy": "kth", "consistency_magnitude": "n_consistent",
                "contribution": "source_task", "block_magnitude": "block", "entry_histogram": "bin_centre",
                "sign_conflicts": "top_k", "leave_one_out_accuracy": "left_out"}
    evaluated = {"prune_accuracy", "kth_accuracy", "leave_one_out_accuracy"}
    metrics = set(df["metric"])
    assert set(abscissa) | evaluated | {"chance", "first_task_forgetting", "average_forgetting"} <= metrics
    for metric, d in df.groupby("metric"):
        if metric in evaluated:
            np.testing.assert_array_equal(d["lam"], d["value"], err_msg=metric)
        else:
            assert d["lam"].isna().all(), metric
        allowed = set(range(FIG_T)) | {-1} if metric == "leave_one_out_accuracy" else {-1}
        assert set(d["eval_task"]) <= allowed, metric
        if metric == "leave_one_out_accuracy":  # the all-task merge has no x, the others the task left out
            assert set(d["x_kind"]) == {"", "left_out"} and set(d["after_task"]) == {FIG_T - 1}
            assert (d["x"].isna() == (d["x_kind"] == "")).all()
            continue
        assert set(d["x_kind"]) == {abscissa.get(metric, "")}, metric
        assert d["x"].isna().all() == (metric not in abscissa), metric
    x = df.groupby("metric")["x"].apply(lambda s: sorted(set(s.dropna())))
    assert x["prune_accuracy"] == sorted(PRUNE_KEEP) and x["kth_accuracy"] == [1.0, 2.0, 3.0]
    assert x["contribution"] == [0.0, 1.0, 2.0] and x["block_magnitude"] == [0.0, 1.0]
    assert x["sign_conflicts"] == [0.2] and x["leave_one_out_accuracy"] == [0.0, 1.0, 2.0]
    assert set(df.loc[df["metric"] == "prune_accuracy", "lam"]) == {1.0}  # the pruned vector is added whole


def test_leave_one_out_figure_delta_and_malformed_rows(tmp_path):
    rows = make_rows({"run": "r", "backbone": "b", "scenario": "s/2", "dataset": "s", "method": "magmax",
                      "finetuning": "ind", "seed": 1, "role": "analysis", "metric": "leave_one_out_accuracy",
                      "config_hash": "h", "code_version": "v"},
                     [{"after_task": 1, "eval_task": e, "value": v,
                       **({"x": float(a), "x_kind": "left_out"} if a >= 0 else {})}
                      for a, e, v in ((-1, 0, 80.0), (-1, 1, 70.0), (0, 0, 60.0), (0, 1, 71.0), (1, 0, 79.0))])
    part = pd.DataFrame(rows, columns=list(COLUMNS))
    delta, left, evals = leave_one_out_delta(part)
    assert left == [0, 1] and evals == [0, 1]
    np.testing.assert_array_equal(delta, [[-20.0, 1.0], [-1.0, np.nan]])
    broken = part[part["x_kind"] == "left_out"]
    with pytest.warns(UserWarning, match="Figure 8"):
        paths = report.write_report(broken, tmp_path / "rep")
    assert "leave_one_out" not in paths
    assert "## Not drawn" in paths["index"].read_text()



def _no_matplotlib_after(*imports: str) -> None:
    """Import ``imports`` in a fresh interpreter and fail if that loaded matplotlib."""
    script = "import sys\n" + "".join(f"import {m}\n" for m in imports) + "assert 'matplotlib' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"importing {', '.join(imports)} loaded matplotlib:\n{done.stderr}"


def test_report_tables_do_not_import_matplotlib():
    # Only pipeline.report.figures (and index, which draws them) may load matplotlib; tables,
    # rendering and the package itself must not, and its figure names resolve on first use.
    _no_matplotlib_after("pipeline.report.tables")
    _no_matplotlib_after("pipeline.report", "pipeline.report.render", "pipeline.analysis_rows")
    assert report.FIGURES and "pipeline.report.figures" in sys.modules


def test_runner_does_not_import_matplotlib():
    # The driver builds the figure analyses' rows mid-run (pipeline.analysis_rows), not the report.
    _no_matplotlib_after("pipeline.orchestration.runner", "pipeline.orchestration.figures")


def test_seed_tests_pair_each_variant_with_magmax_by_hand(tmp_path):
    from pipeline.report.tables import seed_tests

    common = {"run": "r", "backbone": "b", "scenario": "s/2", "dataset": "s", "role": "final",
              "metric": "accuracy", "after_task": 1, "config_hash": "h", "code_version": "v"}
    # differences from MagMax 1, 2, 3 over seeds: mean 2, sd 1, t = 2 * sqrt(3), 2 dof: p = 0.0742
    values = {("magmax", "seq"): [40.0, 41.0, 42.0], ("ties", "ind"): [41.0, 43.0, 45.0],
              ("tsv", "ind"): [40.0, 41.0, 42.0], ("tsv", "seq"): [39.0, 40.0, 41.0]}
    rows = make_rows(common, [{"method": m, "finetuning": ft, "seed": s, "value": v}
                              for (m, ft), vs in values.items() for s, v in zip((5, 6, 7), vs)])
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    table = seed_tests(df)
    assert table.index.name == "vs MagMax" and list(table.columns) == ["s/2"]
    assert table.loc["TIES", "s/2"] == "+2.00 (p 0.074)"
    assert table.loc["TSV-M (seq)", "s/2"] == "-1.00 (p –)"  # a constant difference has no test
    assert table.loc["TSV-M (ind)", "s/2"] == "+0.00 (p –)"
    paths = report.write_report(df, tmp_path / "rep")
    assert "Paired difference from MagMax over seeds" in paths["index"].read_text()
    assert "| TIES | +2.00 (p 0.074) |" in paths["seeds_md"].read_text()
    page = paths["index_html"].read_text()  # the page has the same section, linked from its nav
    assert '<a href="#seeds">Paired difference from MagMax' in page
    assert '<td class="label">TIES</td><td>+2.00 (p 0.074)</td>' in page
    one_seed = df[df["seed"] == 5]
    assert seed_tests(one_seed).empty and "seeds_md" not in report.write_report(one_seed, tmp_path / "one")
