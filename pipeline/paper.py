"""The paper's published numbers (Marczak et al., ECCV 2024, Tables 1-8), for side-by-side reports.

``paper_numbers.csv`` (package data, beside this module) is one tidy table, one row per printed
cell, in the pipeline's own vocabulary so that a results row and a paper number share their keys:

=============  ===============================================================================
table          ``table1`` ... ``table8``
backbone       ``ViT-B-16/openai`` (Tables 1-6), ``ViT-L-14/openai`` (7),
               ``ViT-B-16/laion400m_e32`` (8): ``models.backbone_id`` spelling
method         the runner's method keys: zero_shot, joint, lwf, ewc, randmix, maxabs, avg, ties,
               magmax, lwf_magmax, ewc_magmax. MagMax merging independent fine-tunings (Table 4
               and 5 "MagMax Ind", Table 6 "θ_0") *is* MaxAbs and is stored as ``maxabs``.
finetuning     how the merged vectors were fine-tuned: ``ind`` (from θ_0), ``seq`` (from
               θ_{t-1}), ``first`` (from θ_1, Table 6), ``lwf``/``ewc`` (regularised sequential
               chains), ``joint``, ``none`` (zero-shot). Where the paper leaves it implicit
               (Tables 1-3, 7, 8) it is the method's setting in those tables.
dataset        registry names (cifar100, imagenet_r, cub200, cars, domainnet, dtd, eurosat,
               gtsrb, mnist, resisc45, sun397, svhn) or ``avg`` for the paper's Avg column
kind           ``class_incremental``, ``domain_incremental`` or ``multi_dataset`` (Table 5)
tasks          number of tasks (/5, /10, ...); empty for Zero-shot/Joint (one value per
               dataset), for Avg and for Table 5. Table 2: DomainNet 6, ImageNet-R 15 tasks.
value          task-agnostic top-1 accuracy (%) after the final task, as printed
paper_method   the row label as printed (provenance)
paper_column   the column as printed (provenance)
=============  ===============================================================================

Derived cells the paper prints (the Δ rows of Tables 3 and 4, Table 5's Δ Avg) are not stored:
they are differences of stored cells. Numbers are kept exactly as printed, including the one
place where two tables disagree (LwF CUB200/20: 58.90 in Table 1, 58.89 in Table 3). The Avg
column is the mean over the table's scenario columns, Zero-shot and Joint counted once per split
(67.21 = (4 * 66.91 + 4 * 77.73 + 3 * 56.08 + 3 * 64.71) / 14), not once per dataset.

``LAYOUTS`` holds each table's rows and columns in the paper's order, keyed the same way, so a
report can lay our numbers out exactly as the paper prints them.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from importlib import resources

import pandas as pd

__all__ = [
    "COLUMNS", "TABLES", "TABLE_BACKBONES", "load", "numbers", "value", "lookup", "canonical_method",
    "LayoutRow", "LayoutColumn", "TableLayout", "LAYOUTS", "DATASET_NAMES",
]

COLUMNS: tuple[str, ...] = (
    "table", "backbone", "method", "finetuning", "dataset", "kind", "tasks", "value",
    "paper_method", "paper_column",
)
TABLES: tuple[str, ...] = tuple(f"table{i}" for i in range(1, 9))
TABLE_BACKBONES: dict[str, str] = {
    **{f"table{i}": "ViT-B-16/openai" for i in range(1, 7)},
    "table7": "ViT-L-14/openai",
    "table8": "ViT-B-16/laion400m_e32",
}
_CSV = "paper_numbers.csv"


@functools.lru_cache(maxsize=1)
def _read() -> pd.DataFrame:
    with resources.files("pipeline").joinpath(_CSV).open("r", encoding="utf-8") as fh:
        # Only ``tasks`` may be empty; everything else is text, so "" must stay "" (not NaN).
        df = pd.read_csv(fh, dtype={c: str for c in COLUMNS if c not in ("tasks", "value")},
                         keep_default_na=False, na_values={"tasks": [""]})
    df["tasks"] = df["tasks"].astype("Int64")
    df["value"] = df["value"].astype(float)
    return df


@functools.lru_cache(maxsize=1)
def _by_key() -> dict[tuple[str, str, str, str, str, int | None], float]:
    df = _read()
    return {(r.table, r.method, r.finetuning, r.dataset, r.kind, None if pd.isna(r.tasks) else int(r.tasks)): r.value
            for r in df.itertuples(index=False)}


def lookup(table: str, method: str, finetuning: str, dataset: str, kind: str, tasks: int | None) -> float:
    """The number stored under exactly this key (``tasks`` None = no task count), else NaN.

    A dictionary lookup, for reports that fill hundreds of cells."""
    key = (table, canonical_method(method, finetuning), finetuning, dataset, kind,
           None if tasks is None else int(tasks))
    return _by_key().get(key, math.nan)


def load() -> pd.DataFrame:
    """Every paper number (a copy; columns ``COLUMNS``)."""
    return _read().copy()


def canonical_method(method: str, finetuning: str) -> str:
    """The stored method key: MagMax on independent fine-tunings is MaxAbs."""
    return "maxabs" if method == "magmax" and finetuning == "ind" else method


def numbers(
    table: str | None = None,
    backbone: str | None = None,
    method: str | None = None,
    finetuning: str | None = None,
    dataset: str | None = None,
    kind: str | None = None,
    tasks: int | None = None,
) -> pd.DataFrame:
    """Paper numbers matching every given filter (None = any)."""
    df = _read()
    if method is not None and finetuning is not None:
        method = canonical_method(method, finetuning)
    mask = pd.Series(True, index=df.index)
    for col, want in (("table", table), ("backbone", backbone), ("method", method),
                      ("finetuning", finetuning), ("dataset", dataset), ("kind", kind)):
        if want is not None:
            mask &= df[col] == want
    if tasks is not None:
        mask &= df["tasks"].eq(int(tasks)).fillna(False)
    return df[mask].copy()


def value(
    table: str,
    method: str,
    finetuning: str,
    dataset: str,
    tasks: int | None = None,
    kind: str | None = None,
) -> float:
    """The one printed number of a cell, or NaN when the paper has none.

    ``tasks=None`` selects the cell without a task count (Zero-shot/Joint, Avg, Table 5).
    Raises ValueError if the filters match more than one number (e.g. Table 2 without ``kind``).
    """
    df = numbers(table=table, method=method, finetuning=finetuning, dataset=dataset, kind=kind)
    df = df[df["tasks"].isna()] if tasks is None else df[df["tasks"].eq(int(tasks)).fillna(False)]
    if len(df) > 1:
        raise ValueError(f"{len(df)} paper numbers match {table} {method}/{finetuning} {dataset} "
                         f"tasks={tasks} kind={kind}; pass kind=")
    return float(df["value"].iloc[0]) if len(df) else math.nan


# --------------------------------------------------------------------------------------------
# Table layouts

DATASET_NAMES: dict[str, str] = {
    "cifar100": "CIFAR100", "imagenet_r": "ImageNet-R", "cub200": "CUB200", "cars": "Cars",
    "domainnet": "DomainNet", "dtd": "DTD", "eurosat": "EuroSAT", "gtsrb": "GTSRB", "mnist": "MNIST",
    "resisc45": "RESISC45", "sun397": "SUN397", "svhn": "SVHN",
}


@dataclass(frozen=True)
class LayoutRow:
    """One printed row. ``method``/``finetuning`` key both the paper number and our results rows
    (through ``canonical_method``); a Δ row has ``delta`` = (i, j): row i minus row j."""

    label: str
    method: str = ""
    finetuning: str = ""
    ft_label: str = ""               # the FT column of Tables 4 and 5 ("Ind", "Seq", "Δ")
    reference: bool = False          # Zero-shot/Joint: one value per dataset, not ranked
    delta: tuple[int, int] | None = None
    baseline: int | None = None      # Table 5's Δ Avg: this row's Avg minus row ``baseline``'s


@dataclass(frozen=True)
class LayoutColumn:
    """One printed column: a scenario (dataset, kind, tasks), the Avg column (dataset "avg") or
    Table 5's Δ Avg (dataset "delta_avg"). ``tasks`` is None where the paper gives no count
    (Table 5's datasets, Avg)."""

    label: str
    dataset: str
    kind: str = "class_incremental"
    tasks: int | None = None
    group: str = ""                  # the spanning header above (e.g. "CIFAR100"), if any
    sub: str = ""                    # the header under the group (e.g. "/5")


@dataclass(frozen=True)
class TableLayout:
    name: str
    caption: str
    rows: tuple[LayoutRow, ...]
    columns: tuple[LayoutColumn, ...]
    row_header: str = "Method"
    ft_column: bool = False
    detect: tuple[int, ...] | None = None  # rows whose results make a run "belong" to the table

    @property
    def backbone(self) -> str:
        return TABLE_BACKBONES[self.name]


def _cil_columns() -> tuple[LayoutColumn, ...]:
    splits = {"cifar100": (5, 10, 20, 50), "imagenet_r": (5, 10, 20, 50), "cub200": (5, 10, 20),
              "cars": (5, 10, 20)}
    cols = [LayoutColumn(f"{DATASET_NAMES[d]} /{n}", d, "class_incremental", n, DATASET_NAMES[d], f"/{n}")
            for d, ns in splits.items() for n in ns]
    return (*cols, LayoutColumn("Avg", "avg", "class_incremental"))


_MAIN = {
    "zero_shot": LayoutRow("Zero-shot", "zero_shot", "none", reference=True),
    "joint": LayoutRow("Joint", "joint", "joint", reference=True),
    "lwf": LayoutRow("LwF", "lwf", "lwf"),
    "ewc": LayoutRow("EWC", "ewc", "ewc"),
    "randmix": LayoutRow("RandMix", "randmix", "ind"),
    "maxabs": LayoutRow("MaxAbs", "maxabs", "ind"),
    "avg": LayoutRow("Avg", "avg", "ind"),
    "ties": LayoutRow("TIES", "ties", "ind"),
    "magmax": LayoutRow("MagMax", "magmax", "seq"),
}
_MERGES = (("randmix", "RandMix"), ("avg", "Avg"), ("ties", "TIES"), ("magmax", "MagMax"))


def _table4_rows() -> tuple[LayoutRow, ...]:
    rows: list[LayoutRow] = []
    for method, label in _MERGES:
        i = len(rows)
        rows += [LayoutRow(label, method, "ind", "Ind"), LayoutRow("", method, "seq", "Seq"),
                 LayoutRow("", ft_label="Δ", delta=(i + 1, i))]
    return tuple(rows)


def _table5_rows() -> tuple[LayoutRow, ...]:
    rows: list[LayoutRow] = []
    for method, label in _MERGES:
        i = len(rows)
        rows += [LayoutRow(label, method, "ind", "Ind"), LayoutRow("", method, "seq", "Seq", baseline=i)]
    return tuple(rows)


_EIGHT = ("cars", "dtd", "eurosat", "gtsrb", "mnist", "resisc45", "sun397", "svhn")
_TABLE1_ROWS = tuple(_MAIN.values())
_CAPTION_CIL = "task-agnostic accuracy (%) after the final task, class-incremental"

LAYOUTS: dict[str, TableLayout] = {
    "table1": TableLayout(
        "table1", f"Table 1: MagMax against CL and merging baselines; {_CAPTION_CIL}",
        _TABLE1_ROWS, _cil_columns()),
    "table2": TableLayout(
        "table2", "Table 2: domain-incremental (DIL) against class-incremental (CIL) splits into as "
        "many tasks (DomainNet 6, ImageNet-R 15)",
        tuple(_MAIN[m] for m in ("lwf", "ewc", "randmix", "maxabs", "avg", "ties", "magmax")),
        tuple(LayoutColumn(f"{DATASET_NAMES[d]} {k}", d, kind, n, DATASET_NAMES[d], k)
              for d, n in (("domainnet", 6), ("imagenet_r", 15))
              for k, kind in (("CIL", "class_incremental"), ("DIL", "domain_incremental")))),
    "table3": TableLayout(
        "table3", "Table 3: MagMax's consolidation on top of LwF and EWC",
        (_MAIN["lwf"], LayoutRow("LwF + MagMax", "lwf_magmax", "lwf"), LayoutRow("Δ", delta=(1, 0)),
         _MAIN["ewc"], LayoutRow("EWC + MagMax", "ewc_magmax", "ewc"), LayoutRow("Δ", delta=(4, 3)),
         _MAIN["magmax"]),
        _cil_columns(), detect=(1, 4)),
    "table4": TableLayout(
        "table4", "Table 4: merging independent (Ind) and sequential (Seq) fine-tunings",
        _table4_rows(), _cil_columns(), ft_column=True, detect=(1, 4, 7)),
    "table5": TableLayout(
        "table5", "Table 5: the eight datasets (Cars, MNIST, EuroSAT, SVHN, RESISC45, SUN397, DTD, "
        "GTSRB in training order), Ind against Seq fine-tuning",
        _table5_rows(),
        (*(LayoutColumn(DATASET_NAMES[d], d, "multi_dataset") for d in _EIGHT),
         LayoutColumn("Avg", "avg", "multi_dataset"), LayoutColumn("Δ Avg", "delta_avg", "multi_dataset")),
        ft_column=True),
    "table6": TableLayout(
        "table6", "Table 6: MagMax with fine-tuning of task t started from θ_0, θ_1 or θ_{t-1}",
        (LayoutRow("θ_0", "maxabs", "ind"), LayoutRow("θ_1", "magmax", "first"),
         LayoutRow("θ_{t-1}", "magmax", "seq")),
        _cil_columns(), row_header="Initial θ for D_t", detect=(1,)),
    "table7": TableLayout(
        "table7", f"Table 7: ViT-L-14 (openai); {_CAPTION_CIL}", _TABLE1_ROWS, _cil_columns()),
    "table8": TableLayout(
        "table8", f"Table 8: ViT-B-16 (laion400m_e32); {_CAPTION_CIL}", _TABLE1_ROWS, _cil_columns()),
}
