"""Tests for pipeline.paper: the shipped copy of the paper's numbers and the table layouts."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from pipeline import paper

REPO = Path(__file__).resolve().parent.parent
KEY = ["table", "backbone", "method", "finetuning", "dataset", "kind", "tasks"]


@pytest.fixture(scope="module")
def numbers() -> pd.DataFrame:
    return paper.load()


def test_schema_counts_and_keys(numbers):
    assert tuple(numbers.columns) == paper.COLUMNS
    assert str(numbers["tasks"].dtype) == "Int64" and numbers["value"].dtype == float
    # One row per printed cell (Δ rows and Table 5's Δ Avg are derived, not stored).
    assert numbers.groupby("table").size().to_dict() == {
        "table1": 115, "table2": 28, "table3": 75, "table4": 120, "table5": 72, "table6": 45,
        "table7": 115, "table8": 115}
    assert not numbers.duplicated(KEY).any()
    assert set(numbers["method"]) == {"zero_shot", "joint", "lwf", "ewc", "randmix", "maxabs", "avg", "ties",
                                      "magmax", "lwf_magmax", "ewc_magmax"}
    assert set(numbers["finetuning"]) == {"none", "joint", "lwf", "ewc", "ind", "seq", "first"}
    assert set(numbers["kind"]) == {"class_incremental", "domain_incremental", "multi_dataset"}
    for table, backbone in paper.TABLE_BACKBONES.items():
        assert set(numbers.loc[numbers["table"] == table, "backbone"]) == {backbone}
    assert numbers["value"].between(40, 100).all()


def test_shipped_as_package_data():
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '[tool.setuptools.package-data]\npipeline = ["paper_numbers.csv"]' in pyproject
    assert (REPO / "pipeline" / "paper_numbers.csv").is_file()


@pytest.mark.parametrize("args, expected", [
    # Spot checks typed from the paper's text, one or more per table.
    (("table1", "magmax", "seq", "cifar100", 5), 84.16),
    (("table1", "zero_shot", "none", "cars", None), 64.71),
    (("table1", "lwf", "lwf", "avg", None), 72.36),
    (("table2", "magmax", "seq", "imagenet_r", 15, "domain_incremental"), 85.40),
    (("table2", "ewc", "ewc", "domainnet", 6, "class_incremental"), 64.73),
    (("table3", "ewc_magmax", "ewc", "cars", 20), 66.00),
    (("table3", "lwf", "lwf", "cub200", 20), 58.89),  # Table 1 prints 58.90 for the same cell
    (("table1", "lwf", "lwf", "cub200", 20), 58.90),
    (("table4", "ties", "seq", "cub200", 20), 59.36),
    (("table4", "magmax", "ind", "cars", 20), 58.95),  # "MagMax Ind" is MaxAbs
    (("table5", "magmax", "seq", "gtsrb", None), 67.59),
    (("table5", "avg", "ind", "avg", None), 67.54),
    (("table6", "magmax", "first", "cifar100", 20), 70.64),
    (("table6", "maxabs", "ind", "cifar100", 50), 73.04),
    (("table7", "magmax", "seq", "avg", None), 82.99),
    (("table8", "maxabs", "ind", "imagenet_r", 50), 78.02),
])
def test_spot_values(args, expected):
    assert paper.value(*args) == pytest.approx(expected)


def test_value_absent_and_ambiguous():
    assert math.isnan(paper.value("table1", "seq_ft", "seq", "cifar100", 5))
    assert math.isnan(paper.value("table1", "magmax", "seq", "cifar100", 15))
    with pytest.raises(ValueError, match="kind"):
        paper.value("table2", "lwf", "lwf", "domainnet", 6)  # CIL and DIL both have 6 tasks
    assert paper.lookup("table2", "lwf", "lwf", "domainnet", "domain_incremental", 6) == pytest.approx(69.67)
    assert math.isnan(paper.lookup("table2", "lwf", "lwf", "domainnet", "domain_incremental", None))


def test_numbers_filters(numbers):
    t4 = paper.numbers(table="table4", method="magmax", finetuning="ind")
    assert len(t4) == 15 and set(t4["method"]) == {"maxabs"}
    assert len(paper.numbers(table="table1", tasks=50)) == 7 * 2  # CIFAR100/50, ImageNet-R/50, 7 methods
    assert len(paper.numbers(backbone="ViT-L-14/openai")) == 115
    assert paper.canonical_method("magmax", "ind") == "maxabs"
    assert paper.canonical_method("magmax", "first") == "magmax"


def test_repeated_rows_agree(numbers):
    # The paper reprints rows across tables; the copies must agree (up to the one known typo).
    def row(table: str, method: str, ft: str) -> pd.Series:
        d = paper.numbers(table=table, method=method, finetuning=ft)
        return d.set_index(["dataset", "tasks"])["value"].sort_index()

    pd.testing.assert_series_equal(row("table6", "maxabs", "ind"), row("table1", "maxabs", "ind"))
    pd.testing.assert_series_equal(row("table6", "magmax", "seq"), row("table1", "magmax", "seq"))
    pd.testing.assert_series_equal(row("table4", "ties", "ind"), row("table1", "ties", "ind"))
    pd.testing.assert_series_equal(row("table3", "ewc", "ewc"), row("table1", "ewc", "ewc"))
    diff = row("table3", "lwf", "lwf") - row("table1", "lwf", "lwf")
    assert (diff.abs() > 0).sum() == 1 and diff.abs().max() == pytest.approx(0.01)


def test_avg_column_is_mean_over_splits(numbers):
    # Avg = mean over the scenario columns, Zero-shot/Joint counted once per split (4+4+3+3).
    splits = {"cifar100": 4, "imagenet_r": 4, "cub200": 3, "cars": 3}
    for (table, method, ft), g in numbers[numbers["table"] != "table2"].groupby(["table", "method", "finetuning"]):
        cells = g[g["dataset"] != "avg"]
        if cells["tasks"].isna().all() and table != "table5":
            weights = cells["dataset"].map(splits)
            mean = (cells["value"] * weights).sum() / weights.sum()
        else:
            mean = cells["value"].mean()
        assert mean == pytest.approx(g.loc[g["dataset"] == "avg", "value"].iloc[0], abs=0.006), (table, method, ft)


def test_layouts_cover_every_number_once(numbers):
    used = []
    for name, layout in paper.LAYOUTS.items():
        for row in layout.rows:
            if not row.method:
                continue
            for col in layout.columns:
                if col.dataset == "delta_avg":
                    continue
                tasks = None if row.reference or col.dataset == "avg" else col.tasks
                key = (name, layout.backbone, paper.canonical_method(row.method, row.finetuning), row.finetuning,
                       col.dataset, col.kind, tasks)
                if key not in used:
                    assert not math.isnan(paper.lookup(name, row.method, row.finetuning, col.dataset, col.kind,
                                                       tasks)), key
                    used.append(key)
    stored = [tuple(None if pd.isna(v) else v for v in r) for r in numbers[KEY].itertuples(index=False)]
    assert sorted(used, key=str) == sorted(stored, key=str)


def test_layout_shapes_match_the_paper():
    shapes = {name: (len(lay.rows), len(lay.columns)) for name, lay in paper.LAYOUTS.items()}
    assert shapes == {"table1": (9, 15), "table2": (7, 4), "table3": (7, 15), "table4": (12, 15),
                      "table5": (8, 10), "table6": (3, 15), "table7": (9, 15), "table8": (9, 15)}
