"""Tests for pipeline.report and jobs/make_report.py on a small synthetic run."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import report
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
    np.testing.assert_array_equal(report._seen_average(m), [10.0, 30.0])


def test_write_report_writes_everything(df, tmp_path):
    paths = report.write_report(df, tmp_path / "rep")
    expected = {"table_md", "table_tex", "accuracy_matrices", "lambda_sweep", "sign_conflicts", "index"}
    assert set(paths) == expected
    for key, p in paths.items():
        assert p.exists() and p.stat().st_size > 0, key
    for key in ("accuracy_matrices", "lambda_sweep", "sign_conflicts"):
        assert paths[key].suffix == ".png"
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths["table_md"].read_text() == EXPECTED_MD
    index = paths["index"].read_text()
    assert EXPECTED_MD.rstrip("\n") in index
    for name in ("table.md", "table.tex", "accuracy_matrices.png", "lambda_sweep.png", "sign_conflicts.png"):
        assert f"({name})" in index
    assert "| MagMax | 9.80 |" in index and "| Seq-FT | 25.70 |" in index  # forgetting table


def test_write_report_skips_absent_figures_and_pdf(df, tmp_path):
    only_final = df[df["role"] == "final"]
    paths = report.write_report(only_final, tmp_path / "a")
    assert set(paths) == {"table_md", "table_tex", "index"}
    assert not (tmp_path / "a" / "lambda_sweep.png").exists()
    sweep = df[df["role"] == "sweep"]
    paths = report.write_report(sweep, tmp_path / "b", suffixes=(".png", ".pdf"))
    assert set(paths) == {"lambda_sweep", "lambda_sweep_pdf", "index"}
    assert paths["lambda_sweep_pdf"].read_bytes()[:4] == b"%PDF"


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
