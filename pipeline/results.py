"""The Parquet results layer: schema, row helpers, atomic unit files, reading a run back.

Each unit of work writes its own Parquet file with ``write_unit``; the write is atomic (temporary
file in the same directory, fsync, ``os.replace``), so a crash never leaves a partial file at the
unit's path, and its sha256 goes to ``<unit>.sha256`` beside it: ``unit_done`` skips a finished
unit on a rerun only when its bytes match (a damaged one is moved aside and redone), and
``read_run`` names a damaged file instead of failing inside Arrow. ``read_run``
concatenates every unit file of a run and refuses duplicate rows instead of dropping them.
Paths may be local paths or pyarrow filesystem URIs (``s3://...?endpoint_override=...``,
``file://...``); every read and write goes through ``pipeline.storage``.

Typed columns: ``lam`` is always the merge coefficient λ the row's model was built with (NaN
where none), ``eval_task`` always the evaluated task (-1 = all classes / whole test set). A
row's other abscissa (a figure's x value: share of entries kept, k, bin centre, block, ...)
goes to ``x`` with its kind in ``x_kind`` (``X_KINDS``; NaN and "" where none). Parts written
before ``x``/``x_kind`` existed are read with them filled in (NaN, "") -- right for
final/matrix/sweep rows and the analysis rows that had no abscissa; a part lacking them that
holds analysis rows whose abscissa sat in lam/eval_task (``_MOVED_TO_X``) is refused, naming the
file: its figures would be read wrongly.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import os
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import storage
from pipeline import __version__

__all__ = [
    "SCHEMA",
    "COLUMNS",
    "KEY_COLUMNS",
    "ROLES",
    "X_KINDS",
    "Row",
    "make_rows",
    "write_unit",
    "unit_done",
    "read_run",
    "code_version",
]

SCHEMA = pa.schema(
    [
        pa.field("run", pa.string(), nullable=False),
        pa.field("scenario", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("backbone", pa.string(), nullable=False),
        pa.field("method", pa.string(), nullable=False),
        pa.field("finetuning", pa.string(), nullable=False),
        pa.field("lam", pa.float64(), nullable=False),  # NaN where no λ applies
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("after_task", pa.int64(), nullable=False),  # 0-based; -1 = before any task
        pa.field("eval_task", pa.int64(), nullable=False),  # -1 = all classes / whole test set
        pa.field("x", pa.float64(), nullable=False),  # the row's abscissa of kind x_kind; NaN where none
        pa.field("x_kind", pa.string(), nullable=False),  # one of X_KINDS; "" where none
        pa.field("role", pa.string(), nullable=False),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("value", pa.float64(), nullable=False),
        pa.field("config_hash", pa.string(), nullable=False),
        pa.field("code_version", pa.string(), nullable=False),
    ]
)
COLUMNS: tuple[str, ...] = tuple(SCHEMA.names)
# A row's identity: everything but the measured value and the provenance columns.
KEY_COLUMNS: tuple[str, ...] = tuple(c for c in COLUMNS if c not in ("value", "config_hash", "code_version"))
ROLES: tuple[str, ...] = ("final", "matrix", "sweep", "analysis")
# What ``x`` holds, one kind per analysis abscissa ("" = no x, and then x is NaN).
X_KINDS: tuple[str, ...] = (
    "",
    "share_kept",  # share (0..1) of a task vector's entries kept by magnitude pruning (Figure 2)
    "kth",  # k of the merge by the k-th highest magnitude, 1 = MagMax (Figure 5)
    "n_consistent",  # number of tasks whose update direction agrees with the vector's sign (Figure 6)
    "source_task",  # 0-based index of the task vector the value is about (Figure 7)
    "block",  # transformer block index (Figure 12)
    "bin_centre",  # centre of a histogram bin of task-vector entries (Figure 13)
    "top_k",  # share (0..1) of largest-magnitude entries kept before counting sign conflicts (Figures 3, 10)
    "left_out",  # 0-based index of the task vector left out of the merge (Figure 8; none: the all-task merge)
)
# Analysis metrics whose abscissa sat in lam/eval_task before x/x_kind: a part lacking the
# columns with such rows cannot be filled in (``read_run``).
_MOVED_TO_X: frozenset[str] = frozenset(
    {"prune_accuracy", "kth_accuracy", "consistency_magnitude", "contribution", "block_magnitude", "entry_histogram",
     "leave_one_out_accuracy"})
# Accepted Python values per Arrow type; strict so that e.g. 1.5 never lands in an int column.
_PY_TYPES: dict[pa.DataType, tuple[type, ...]] = {
    pa.string(): (str,),
    pa.int64(): (int, np.integer),
    pa.float64(): (int, float, np.integer, np.floating),
}


@dataclasses.dataclass(frozen=True)
class Row:
    """One result row; ``as_dict()`` gives the columns in ``SCHEMA`` order."""

    run: str
    scenario: str
    dataset: str
    backbone: str
    method: str
    finetuning: str
    seed: int
    metric: str
    value: float
    config_hash: str
    code_version: str
    lam: float = math.nan
    after_task: int = -1
    eval_task: int = -1
    x: float = math.nan
    x_kind: str = ""
    role: str = "final"

    def __post_init__(self) -> None:
        _check_x(self.x, self.x_kind, "")

    def as_dict(self) -> dict[str, Any]:
        return {c: getattr(self, c) for c in COLUMNS}


def _check_x(x: Any, kind: Any, where: str) -> None:
    """``kind`` is in ``X_KINDS``, and ``x`` is NaN exactly when ``kind`` is ""."""
    if kind not in X_KINDS:
        raise ValueError(f"column 'x_kind' must be one of {X_KINDS}, got {kind!r}{where}")
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, _PY_TYPES[pa.float64()]):
        raise ValueError(f"column 'x' has a value of the wrong type{where}: {x!r}")
    if kind == "" and not math.isnan(x):
        raise ValueError(f"column 'x' is {x!r} but x_kind is empty{where}: name its kind")
    if kind != "" and not math.isfinite(x):
        raise ValueError(f"column 'x' is {x!r} for x_kind {kind!r}{where}: a kind needs a finite x")


def make_rows(common: Mapping[str, Any], entries: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows made of the shared columns ``common`` plus each entry's own columns.

    A column given in both is an error (so nothing is overridden by accident). ``lam`` and ``x``
    default to NaN, ``x_kind`` to "", ``after_task``/``eval_task`` to -1 when given nowhere;
    ``x_kind`` must be one of ``X_KINDS`` (ValueError naming it otherwise).
    """
    rows = []
    for i, entry in enumerate(entries):
        both = set(common) & set(entry)
        if both:
            raise ValueError(f"column {sorted(both)[0]!r} given both in common and in an entry")
        row = {"lam": math.nan, "after_task": -1, "eval_task": -1, "x": math.nan, "x_kind": "", **common, **entry}
        _check_x(row["x"], row["x_kind"], f" in entry {i}")
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------
# Validation


def _check_columns(names: Iterable[str], where: str) -> None:
    names = list(names)
    for c in COLUMNS:
        if c not in names:
            raise ValueError(f"missing column {c!r}{where}")
    for c in names:
        if c not in COLUMNS:
            raise ValueError(f"unknown column {c!r}{where}")


def _to_table(rows: Sequence[Row | Mapping[str, Any]] | pd.DataFrame) -> pa.Table:
    if isinstance(rows, pd.DataFrame):
        _check_columns(rows.columns, "")
        columns = {c: rows[c].tolist() for c in COLUMNS}
    else:
        dicts = []
        for i, r in enumerate(rows):
            d = r.as_dict() if isinstance(r, Row) else r
            if not isinstance(d, Mapping):
                raise ValueError(f"row {i} is neither a Row nor a mapping")
            _check_columns(d.keys(), f" in row {i}")
            dicts.append(d)
        columns = {c: [d[c] for d in dicts] for c in COLUMNS}
    arrays = []
    for field in SCHEMA:
        values = columns[field.name]
        for i, v in enumerate(values):
            if v is None:
                raise ValueError(f"column {field.name!r} is null in row {i}")
            if not isinstance(v, _PY_TYPES[field.type]) or isinstance(v, (bool, np.bool_)):
                raise ValueError(f"column {field.name!r} has a value of the wrong type in row {i}: {v!r}")
        if field.name == "role":
            for i, v in enumerate(values):
                if v not in ROLES:
                    raise ValueError(f"column 'role' must be one of {ROLES}, got {v!r} in row {i}")
        if field.name == "x_kind":
            for i, (x, kind) in enumerate(zip(columns["x"], values)):
                _check_x(x, kind, f" in row {i}")
        try:
            arrays.append(pa.array(values, type=field.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as e:
            raise ValueError(f"column {field.name!r} does not convert to {field.type}: {e}") from e
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def _check_duplicates(df: pd.DataFrame, sources: pd.Series | None = None) -> None:
    if df.empty:
        return
    dup = df.duplicated(subset=list(KEY_COLUMNS), keep=False)
    if dup.any():
        first = df.loc[dup, list(KEY_COLUMNS)].iloc[0].to_dict()
        where = ""
        if sources is not None:
            same = (df.loc[dup, list(KEY_COLUMNS)] == df.loc[dup, list(KEY_COLUMNS)].iloc[0]) | (
                df.loc[dup, list(KEY_COLUMNS)].isna() & df.loc[dup, list(KEY_COLUMNS)].iloc[0].isna()
            )
            files = sorted(set(sources[dup][same.all(axis=1)]))
            where = f" (in files {files})"
        raise ValueError(f"{int(dup.sum())} rows share a key; first duplicate key: {first}{where}")


# --------------------------------------------------------------------------------------------
# Reading and writing: through ``pipeline.storage`` (local folders and URIs alike)


def _write_parquet(table: pa.Table, sink: BinaryIO | pa.NativeFile) -> None:
    # Separate function so tests can simulate a crash in the middle of a write.
    pq.write_table(table, sink)


def write_unit(rows: Sequence[Row | Mapping[str, Any]] | pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Validate ``rows`` against ``SCHEMA`` and write them atomically as one Parquet file.

    Raises ValueError naming the column on missing/extra/mistyped columns, and on rows sharing a
    key (all columns but value/config_hash/code_version). An existing file at ``path`` is replaced.
    The file is written through ``storage.atomic_output``: a renamed temp file locally, one
    upload to an object store.
    """
    table = _to_table(rows)
    _check_duplicates(table.to_pandas())
    if not storage.split_query(path)[0].endswith(".parquet"):
        raise ValueError(f"unit path must end in .parquet: {storage.shown(path)}")
    with storage.atomic_output(path) as sink:
        digest = _DigestSink(sink)
        _write_parquet(table, digest)
    # after the part: a crash in between leaves a part without a sidecar, read unverified
    storage.write_sidecar(path, digest.hexdigest())


class _DigestSink:
    """A write-only file that passes bytes on to ``sink`` and hashes them on the way."""

    def __init__(self, sink: BinaryIO) -> None:
        self.sink, self._hash, self.closed = sink, hashlib.sha256(), False

    def write(self, data) -> int:
        self._hash.update(data)
        return self.sink.write(data)

    def flush(self) -> None:
        self.sink.flush()

    def writable(self) -> bool:
        return True

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def unit_done(path: str | os.PathLike[str]) -> bool:
    """Whether the unit file at ``path`` exists and is intact: writes are atomic, and a Parquet
    part is checked against its ``.sha256`` sidecar (or, written before sidecars, parsed whole).
    A damaged part is moved aside and said, and does not count: its scenario is run again."""
    if not storage.exists(path):
        return False
    if not storage.split_query(path)[0].endswith(".parquet"):
        return True
    try:
        _read_part(path)
    except storage.DamagedFileError as err:
        storage.discard(err, path, "its scenario will be run again")
        return False
    return True


def _read_part(path: str | os.PathLike[str]) -> pa.Table:
    """One Parquet part, checked against its digest; DamagedFileError naming it if it is not intact."""
    data = storage.read_checked(path, "results file")
    try:
        return pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError, ValueError) as e:
        raise storage.DamagedFileError(path, f"not a readable Parquet file: {e}") from e


def read_run(run_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """All rows of all unit files under ``run_dir`` (recursive ``*.parquet``, temp files ignored).

    Columns in ``SCHEMA`` order. Raises ValueError if a file does not match the schema or if the
    same key appears twice (within or across files); ``storage.DamagedFileError`` (a ValueError,
    one line naming the file; nothing is moved) if a file does not match its digest or does not
    parse; FileNotFoundError if ``run_dir`` is absent.
    """
    try:
        files = storage.list_files(run_dir, ".parquet")
    except FileNotFoundError:
        raise FileNotFoundError(f"no run directory at {storage.shown(run_dir)}") from None
    except NotADirectoryError:
        raise ValueError(f"{storage.shown(run_dir)} is not a directory") from None
    if not files:
        return SCHEMA.empty_table().to_pandas()
    tables = []
    sources: list[str] = []
    for f in files:
        where = storage.shown(storage.split_query(f)[0])  # named without options or credentials
        try:
            t = _read_part(f)
        except storage.DamagedFileError as e:
            raise storage.DamagedFileError(where, e.why) from None
        t = _fill_x(t, where)
        _check_columns(t.column_names, f" in {where}")
        t = t.select(list(COLUMNS))
        try:
            t = t.cast(SCHEMA)
        except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as e:
            raise ValueError(f"{where} does not match the results schema: {e}") from e
        tables.append(t)
        sources.extend([where] * t.num_rows)
    df = pa.concat_tables(tables).to_pandas()
    _check_duplicates(df, pd.Series(sources, index=df.index))
    return df


def _fill_x(t: pa.Table, where: str) -> pa.Table:
    """A part written before ``x``/``x_kind`` existed, with them filled in (NaN, ""); refused
    when it holds analysis rows whose abscissa sat in lam/eval_task (module docstring)."""
    names = set(t.column_names)
    if "x" in names or "x_kind" in names:
        return t  # new (or partly foreign: _check_columns names what is missing)
    if {"role", "metric"} <= names:
        df = t.select(["role", "metric"]).to_pandas()
        moved = sorted(set(df.loc[(df["role"] == "analysis") & df["metric"].isin(_MOVED_TO_X), "metric"]))
        if moved:
            raise ValueError(f"{where} predates the results columns 'x'/'x_kind' and holds analysis rows "
                             f"({', '.join(moved)}) whose x sat in lam/eval_task; remove that part and run its "
                             "scenario again to rewrite it")
    n = t.num_rows
    t = t.append_column("x", pa.array(np.full(n, np.nan), type=pa.float64()))
    return t.append_column("x_kind", pa.array([""] * n, type=pa.string()))


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Short git hash of this repository (with ``-dirty`` for uncommitted changes to tracked
    files), else the installed package version."""
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        if head:
            status = subprocess.run(
                ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True, text=True, timeout=10, check=True,
            ).stdout.strip()
            return f"{head}-dirty" if status else head
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        from importlib.metadata import version

        return version("magmax-pipeline")
    except Exception:
        return __version__
