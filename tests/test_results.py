"""Tests for pipeline.results: schema checks, atomic unit writes, reading a run back."""

from __future__ import annotations

import math
import os

import pandas as pd
import pyarrow as pa
import pytest

from pipeline import results as R
from pipeline.results import (
    COLUMNS,
    KEY_COLUMNS,
    SCHEMA,
    Row,
    code_version,
    make_rows,
    read_run,
    unit_done,
    write_unit,
)

COMMON = {
    "run": "demo",
    "scenario": "cil",
    "dataset": "cifar100",
    "backbone": "ViT-B-16/openai",
    "method": "magmax",
    "finetuning": "seq",
    "seed": 5,
    "role": "matrix",
    "metric": "accuracy",
    "config_hash": "abc123",
    "code_version": "deadbee",
}


def rows_for(after_task: int, n: int = 3, **over) -> list[dict]:
    return make_rows(
        {**COMMON, "lam": 0.5, "after_task": after_task, **over},
        [{"eval_task": c, "value": 10.0 * c + after_task} for c in range(n)],
    )


def test_schema_column_order():
    assert list(SCHEMA.names) == [
        "run", "scenario", "dataset", "backbone", "method", "finetuning", "lam", "seed",
        "after_task", "eval_task", "role", "metric", "value", "config_hash", "code_version",
    ]
    assert SCHEMA.field("lam").type == pa.float64()
    assert SCHEMA.field("seed").type == pa.int64()
    assert "value" not in KEY_COLUMNS and "config_hash" not in KEY_COLUMNS
    assert set(COLUMNS) == set(KEY_COLUMNS) | {"value", "config_hash", "code_version"}


def test_row_dataclass_and_make_rows_defaults():
    row = Row(
        run="r", scenario="cil", dataset="d", backbone="b", method="avg", finetuning="ind",
        seed=1, metric="accuracy", value=1.5, config_hash="h", code_version="v",
    )
    d = row.as_dict()
    assert list(d) == list(COLUMNS)
    assert math.isnan(d["lam"]) and d["after_task"] == -1 and d["eval_task"] == -1 and d["role"] == "final"
    rows = make_rows({k: v for k, v in COMMON.items()}, [{"value": 1.0}])
    assert math.isnan(rows[0]["lam"]) and rows[0]["after_task"] == -1
    with pytest.raises(ValueError, match="'value'"):
        make_rows({**COMMON, "value": 1.0}, [{"value": 2.0}])


def test_write_and_read_roundtrip(tmp_path):
    run = tmp_path / "run"
    write_unit(rows_for(0), run / "units" / "a.parquet")
    write_unit([Row(**{**COMMON, "role": "final", "value": 77.0})], run / "b.parquet")
    assert unit_done(run / "units" / "a.parquet")
    assert not unit_done(run / "units" / "missing.parquet")
    df = read_run(run)
    assert list(df.columns) == list(COLUMNS)
    assert len(df) == 4
    assert df["seed"].dtype == "int64" and df["lam"].dtype == "float64"
    final = df[df["role"] == "final"].iloc[0]
    assert final["value"] == 77.0 and math.isnan(final["lam"]) and final["eval_task"] == -1
    matrix = df[df["role"] == "matrix"].sort_values("eval_task")
    assert matrix["value"].tolist() == [0.0, 10.0, 20.0]
    # a DataFrame round-trips through write_unit too
    write_unit(df, tmp_path / "copy" / "all.parquet")
    pd.testing.assert_frame_equal(read_run(tmp_path / "copy"), df.reset_index(drop=True))


def test_read_run_via_file_uri(tmp_path):
    uri = "file://" + str(tmp_path / "uri_run" / "u.parquet")
    write_unit(rows_for(1), uri)
    assert unit_done(uri)
    assert len(read_run("file://" + str(tmp_path / "uri_run"))) == 3


def test_empty_and_missing_run(tmp_path):
    (tmp_path / "empty").mkdir()
    df = read_run(tmp_path / "empty")
    assert df.empty and list(df.columns) == list(COLUMNS)
    with pytest.raises(FileNotFoundError):
        read_run(tmp_path / "nope")


def test_schema_errors_name_the_column(tmp_path):
    path = tmp_path / "u.parquet"
    bad = rows_for(0)
    del bad[1]["metric"]
    with pytest.raises(ValueError, match="'metric'"):
        write_unit(bad, path)
    bad = rows_for(0)
    bad[0]["extra_col"] = 1
    with pytest.raises(ValueError, match="'extra_col'"):
        write_unit(bad, path)
    bad = rows_for(0)
    bad[2]["seed"] = "five"
    with pytest.raises(ValueError, match="'seed'"):
        write_unit(bad, path)
    bad = rows_for(0)
    bad[0]["method"] = 3
    with pytest.raises(ValueError, match="'method'"):
        write_unit(bad, path)
    bad = rows_for(0)
    bad[0]["value"] = None
    with pytest.raises(ValueError, match="'value'"):
        write_unit(bad, path)
    bad = rows_for(0)
    bad[0]["after_task"] = 1.5
    with pytest.raises(ValueError, match="'after_task'"):
        write_unit(bad, path)
    bad = rows_for(0)
    bad[0]["role"] = "misc"
    with pytest.raises(ValueError, match="'role'"):
        write_unit(bad, path)
    with pytest.raises(ValueError, match="'role'"):
        write_unit(pd.DataFrame(rows_for(0)).drop(columns="role"), path)
    assert not path.exists()


def test_duplicate_rows_refused(tmp_path):
    path = tmp_path / "u.parquet"
    rows = rows_for(0) + rows_for(0, n=1)  # eval_task 0 twice
    with pytest.raises(ValueError, match="share a key"):
        write_unit(rows, path)
    # NaN lam still identifies a row: two NaN-lam rows with the same key are duplicates
    nan_rows = make_rows(COMMON, [{"value": 1.0}, {"value": 2.0}])
    with pytest.raises(ValueError, match="share a key"):
        write_unit(nan_rows, path)
    # differing only in value/config_hash/code_version is still a duplicate
    a = rows_for(0, n=1)
    b = rows_for(0, n=1)
    b[0]["value"], b[0]["config_hash"] = 99.0, "other"
    with pytest.raises(ValueError, match="share a key"):
        write_unit(a + b, path)
    assert not path.exists()


def test_duplicates_across_files_raise(tmp_path):
    write_unit(rows_for(0), tmp_path / "a.parquet")
    write_unit(rows_for(0), tmp_path / "sub" / "b.parquet")
    with pytest.raises(ValueError, match="b.parquet"):
        read_run(tmp_path)


def test_atomic_write_survives_crash(tmp_path, monkeypatch):
    path = tmp_path / "unit.parquet"
    real = R._write_parquet

    def crashing(table, sink):
        sink.write(b"PAR1 partial garbage")
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of a write

    monkeypatch.setattr(R, "_write_parquet", crashing)
    with pytest.raises(KeyboardInterrupt):
        write_unit(rows_for(0), path)
    assert not path.exists()
    assert not unit_done(path)
    assert os.listdir(tmp_path) == []  # the temp file is cleaned up too

    monkeypatch.setattr(R, "_write_parquet", real)
    write_unit(rows_for(0), path)
    assert unit_done(path)
    assert len(read_run(tmp_path)) == 3


def test_crash_does_not_clobber_previous_file_and_temp_files_ignored(tmp_path, monkeypatch):
    path = tmp_path / "unit.parquet"
    write_unit(rows_for(0), path)

    def crashing(table, sink):
        sink.write(b"junk")
        raise OSError("disk full")

    monkeypatch.setattr(R, "_write_parquet", crashing)
    with pytest.raises(OSError):
        write_unit(rows_for(1), path)
    assert read_run(tmp_path)["after_task"].tolist() == [0, 0, 0]
    # a temp file left by a hard kill (no cleanup) is ignored by read_run
    (tmp_path / ".unit.parquet.0123.tmp").write_bytes(b"junk")
    assert len(read_run(tmp_path)) == 3


def test_read_run_rejects_foreign_files(tmp_path):
    pd.DataFrame({"run": ["x"], "value": [1.0]}).to_parquet(tmp_path / "foreign.parquet")
    with pytest.raises(ValueError, match="missing column"):
        read_run(tmp_path)


def test_unit_path_must_be_parquet(tmp_path):
    with pytest.raises(ValueError):
        write_unit(rows_for(0), tmp_path / "u.csv")


def test_code_version():
    v = code_version()
    assert isinstance(v, str) and v
