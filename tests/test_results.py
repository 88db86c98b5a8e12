"""Tests for pipeline.results: schema checks, atomic unit writes, reading a run back."""

from __future__ import annotations

import math
import os

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import results as R
from pipeline.results import (
    COLUMNS,
    KEY_COLUMNS,
    SCHEMA,
    X_KINDS,
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
        "after_task", "eval_task", "x", "x_kind", "role", "metric", "value", "config_hash", "code_version",
    ]
    assert SCHEMA.field("lam").type == pa.float64()
    assert SCHEMA.field("x").type == pa.float64() and SCHEMA.field("x_kind").type == pa.string()
    assert "x" in KEY_COLUMNS and "x_kind" in KEY_COLUMNS  # an abscissa is part of a row's identity
    assert X_KINDS[0] == "" and len(set(X_KINDS)) == len(X_KINDS)
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
    assert math.isnan(d["x"]) and d["x_kind"] == ""
    rows = make_rows({k: v for k, v in COMMON.items()}, [{"value": 1.0}])
    assert math.isnan(rows[0]["lam"]) and rows[0]["after_task"] == -1
    assert math.isnan(rows[0]["x"]) and rows[0]["x_kind"] == ""
    with pytest.raises(ValueError, match="'value'"):
        make_rows({**COMMON, "value": 1.0}, [{"value": 2.0}])


def test_x_kind_validated_by_row_make_rows_and_write(tmp_path):
    base = dict(run="r", scenario="cil", dataset="d", backbone="b", method="highest", finetuning="joint",
                seed=1, metric="prune_accuracy", value=1.5, config_hash="h", code_version="v", role="analysis")
    assert Row(**base, x=0.1, x_kind="share_kept").as_dict()["x"] == 0.1
    with pytest.raises(ValueError, match="'kept_share'"):
        Row(**base, x=0.1, x_kind="kept_share")
    with pytest.raises(ValueError, match="'x_kind'"):
        make_rows(COMMON, [{"value": 1.0, "x": 3.0, "x_kind": "layer_depth"}])
    with pytest.raises(ValueError, match="x_kind is empty"):  # an x must say what it is
        make_rows(COMMON, [{"value": 1.0, "x": 3.0}])
    with pytest.raises(ValueError, match="'bin_centre'"):  # and a kind needs its x
        make_rows(COMMON, [{"value": 1.0, "x_kind": "bin_centre"}])
    with pytest.raises(ValueError, match="'x'"):
        make_rows(COMMON, [{"value": 1.0, "x": "3", "x_kind": "block"}])
    bad = make_rows(COMMON, [{"value": 1.0, "x": 2.0, "x_kind": "block"}])
    bad[0]["x_kind"] = "layer"  # changed after make_rows: write_unit checks too
    with pytest.raises(ValueError, match="'layer'"):
        write_unit(bad, tmp_path / "u.parquet")
    assert not (tmp_path / "u.parquet").exists()


def test_x_round_trip_and_identity(tmp_path):
    # Rows differing only in x are distinct (a curve's points); x and x_kind come back as written.
    rows = make_rows({**COMMON, "role": "analysis", "metric": "entry_histogram", "after_task": 0},
                     [{"x": c, "x_kind": "bin_centre", "value": float(n)} for c, n in ((-0.5, 3), (0.5, 4))])
    rows += make_rows({**COMMON, "role": "analysis", "metric": "chance"}, [{"value": 1.0}])
    write_unit(rows, tmp_path / "a.parquet")
    df = read_run(tmp_path).sort_values("value")
    assert df["x_kind"].tolist() == ["", "bin_centre", "bin_centre"] and df["x"].dtype == "float64"
    assert math.isnan(df["x"].iloc[0]) and df["x"].tolist()[1:] == [-0.5, 0.5]
    assert df["lam"].isna().all() and (df["eval_task"] == -1).all()
    with pytest.raises(ValueError, match="share a key"):
        write_unit(rows + rows[:1], tmp_path / "b.parquet")


def _old_part(path, rows) -> None:
    """A part as written before x/x_kind existed (no sidecar: read unverified)."""
    table = R._to_table(rows).drop_columns(["x", "x_kind"])
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def test_old_parts_are_filled_on_read_or_refused(tmp_path):
    run = tmp_path / "old"
    _old_part(run / "s" / "matrix.parquet", rows_for(0))
    _old_part(run / "s" / "final.parquet", make_rows({**COMMON, "role": "final"}, [{"value": 70.0}]))
    no_metric = {k: v for k, v in COMMON.items() if k != "metric"}
    _old_part(run / "s" / "analysis.parquet", make_rows({**no_metric, "role": "analysis"}, [
        {"metric": "chance", "value": 1.0}, {"metric": "first_task_forgetting", "eval_task": 0, "value": 6.0}]))
    df = read_run(run)
    assert list(df.columns) == list(COLUMNS) and len(df) == 6
    assert df["x"].isna().all() and (df["x_kind"] == "").all()
    assert sorted(df.loc[df["role"] == "matrix", "eval_task"]) == [0, 1, 2]
    # an old analysis part whose abscissa sat in lam/eval_task would be drawn wrongly: refused
    old = make_rows({**COMMON, "role": "analysis", "metric": "prune_accuracy", "method": "highest"},
                    [{"value": 50.0}])
    _old_part(run / "t" / "analysis.parquet", old)
    with pytest.raises(ValueError, match=r"t/analysis.parquet predates .*'x'/'x_kind'.*prune_accuracy"):
        read_run(run)


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
