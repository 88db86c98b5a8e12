"""pipeline.storage on URIs: joins that keep pyarrow's ?query options, every kind of file a run
keeps written and read back through a real S3-protocol server on 127.0.0.1, and no credentials
in what a run writes."""

from __future__ import annotations

import pyarrow.fs as pafs
import pytest
import torch

from pipeline import storage
from pipeline.results import make_rows, read_run, unit_done, write_unit
from s3_server import ENV, REGION, s3_server

Q = "?endpoint_override=127.0.0.1:9000&scheme=http&region=us-east-1"


# --------------------------------------------------------------------------------------------
# paths


def test_join_keeps_the_query_at_the_end():
    assert storage.join("s3://bucket/runs" + Q, "demo", "config.yaml") == "s3://bucket/runs/demo/config.yaml" + Q
    assert storage.join("s3://bucket/runs/" + Q, "a") == "s3://bucket/runs/a" + Q
    assert storage.join("s3://bucket/runs", "a", "b") == "s3://bucket/runs/a/b"
    assert storage.join("/tmp/x", "a", "b.txt") == "/tmp/x/a/b.txt"
    # joined twice, as the runner does (storage -> run -> results/scenario -> part)
    run = storage.join("s3://bucket/runs" + Q, "demo")
    assert storage.join(run, "results", "s_2", "final.parquet") == "s3://bucket/runs/demo/results/s_2/final.parquet" + Q


def test_name_and_parent_ignore_a_query_even_with_slashes():
    uri = "s3://b/runs/checkpoints/abc123/task_000.safetensors?tls_ca_file_path=/etc/ssl/ca.pem&region=x"
    assert storage.name(uri) == "task_000.safetensors"
    assert storage.parent(uri) == "s3://b/runs/checkpoints/abc123?tls_ca_file_path=/etc/ssl/ca.pem&region=x"
    assert storage.name(storage.parent(uri)) == "abc123"
    assert storage.name("/a/b/c.txt") == "c.txt" and storage.parent("/a/b/c.txt") == "/a/b"


def test_a_joined_uri_reaches_pyarrow_with_its_options():
    # before the fix the parts landed after the query ("...region=us-east-1/demo"): 'A region must be set'
    fs, path = storage.filesystem(storage.join("s3://bucket/runs" + Q, "demo", "config.yaml"))
    assert isinstance(fs, pafs.S3FileSystem) and fs.region == REGION  # built offline: nothing is contacted
    assert path == "bucket/runs/demo/config.yaml"


def test_file_uri_and_local_paths_share_the_atomic_local_writes(tmp_path):
    uri = "file://" + str(tmp_path / "u")
    storage.write_text(storage.join(uri, "a", "x.txt"), "hello")
    assert (tmp_path / "u" / "a" / "x.txt").read_text() == "hello"
    with pytest.raises(RuntimeError):
        with storage.atomic_output(tmp_path / "u" / "b.bin") as out:
            out.write(b"half")
            raise RuntimeError("crash mid-write")
    assert sorted(p.name for p in (tmp_path / "u").iterdir()) == ["a"]  # nothing published, no temp left
    assert storage.list_files(uri) == [storage.join(uri, "a", "x.txt")]


# --------------------------------------------------------------------------------------------
# a real S3-protocol server


@pytest.fixture(scope="module")
def s3():
    mp = pytest.MonkeyPatch()
    for k, v in ENV.items():
        mp.setenv(k, v)
    with s3_server("unit") as server:
        yield server
    mp.undo()


def _rows(after_task: int) -> list[dict]:
    common = {"run": "r", "scenario": "s/2", "dataset": "s", "backbone": "b", "method": "magmax",
              "finetuning": "seq", "seed": 5, "config_hash": "h", "code_version": "v", "role": "matrix",
              "metric": "accuracy"}
    return make_rows(common, [{"after_task": after_task, "eval_task": e, "value": 50.0 + e} for e in range(3)])


def test_weights_text_and_metadata_on_s3(s3):
    base = s3.uri("w")
    theta = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(4)}
    path = storage.join(base, "checkpoints", "k", "task_000.safetensors")
    assert not storage.exists(path) and storage.mtime_ns(path) is None
    storage.write_tensors(theta, path, {"task": "0"})
    assert storage.exists(path) and storage.mtime_ns(path) is not None
    back = storage.read_tensors(path, theta)
    assert all(torch.equal(back[k], theta[k]) for k in theta)
    assert storage.read_metadata(path) == {"task": "0"}
    tv = storage.join(base, "tv.safetensors")
    assert storage.write_tensors({"a": theta["a"] * 2}, tv) == tv
    assert torch.equal(storage.read_tensors(tv)["a"], theta["a"] * 2)
    with pytest.raises(ValueError, match="missing tensor 'b'"):
        storage.read_tensors(tv, theta)
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        storage.read_tensors(storage.join(base, "nope.safetensors"))
    storage.write_text(storage.join(base, "x", "summary.json"), "{}")
    assert storage.read_text(storage.join(base, "x", "summary.json")) == "{}"
    storage.delete(storage.join(base, "x", "summary.json"))
    assert not storage.exists(storage.join(base, "x", "summary.json"))


def test_results_and_report_upload_on_s3(s3, tmp_path):
    run = s3.uri("run")
    write_unit(_rows(0), storage.join(run, "results", "s_2", "matrix.parquet"))
    write_unit(_rows(1), storage.join(run, "results", "s_4", "matrix.parquet"))
    assert unit_done(storage.join(run, "results", "s_2", "matrix.parquet"))
    assert sorted(read_run(run).after_task) == [0, 0, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="share a key"):
        write_unit(_rows(0) + _rows(0), storage.join(run, "dup.parquet"))
    with pytest.raises(FileNotFoundError):
        read_run(s3.uri("absent"))
    # an error in the middle of a write sends nothing
    with pytest.raises(RuntimeError):
        with storage.atomic_output(storage.join(run, "half.bin")) as out:
            out.write(b"half")
            raise RuntimeError("crash mid-write")
    assert not storage.exists(storage.join(run, "half.bin"))
    (tmp_path / "report" / "sub").mkdir(parents=True)
    (tmp_path / "report" / "index.md").write_text("# report")
    (tmp_path / "report" / "sub" / "f.png").write_bytes(b"\x89PNG")
    written = storage.upload_dir(tmp_path / "report", storage.join(run, "report"))
    assert written == [storage.join(run, "report", "index.md"), storage.join(run, "report", "sub", "f.png")]
    assert storage.list_files(storage.join(run, "report")) == written
    assert storage.read_bytes(written[1]) == b"\x89PNG"


def test_runner_saves_config_without_uri_credentials(s3, monkeypatch):
    """config.yaml lands beside the results: the runner writes it redacted, and a rerun compares
    the redacted forms (so the same config is not taken for another one)."""
    from pipeline.config import load_config
    from pipeline.orchestration import runner

    secret = "Zq9secretDoNotWrite"
    storage_uri = f"s3://{ENV['AWS_ACCESS_KEY_ID']}:{secret}@{s3.bucket}/cfg{s3.query}"
    cfg = load_config(None, [f"storage={storage_uri}", "name=creds"])

    class Stop(Exception):
        pass

    def stop(_cfg):
        raise Stop

    monkeypatch.setattr(runner, "build_plan", stop)  # the run stops right after writing config.yaml
    monkeypatch.setattr(runner, "check_datasets", lambda _cfg: None)  # (no data here: not what this tests)
    for _ in range(2):  # the second pass checks the saved config against this one: no ConfigError
        with pytest.raises(Stop):
            runner.run_benchmark(cfg, log=lambda _: None)
    saved = storage.read_text(storage.join(s3.uri("cfg"), "creds", "config.yaml"))
    assert secret not in saved
    assert f"s3://***@{s3.bucket}/cfg?endpoint_override=" in saved
