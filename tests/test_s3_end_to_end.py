"""The tiny demo with ``storage=s3://...`` against a real S3-protocol server on 127.0.0.1.

The benchmark runs as a user runs it (``jobs/run_benchmark.py`` in its own process, which starts
its own local Ray cluster): dummy AWS credentials are in that process's environment, which Ray's
workers inherit, and the endpoint is in the URI's query string, the way on-premise S3 (MinIO,
Ceph) is reached with pyarrow. A rerun must fine-tune nothing, and ``jobs/make_report.py`` must
render the report from the URI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import PAPER_METHODS

from pipeline import storage
from pipeline.results import KEY_COLUMNS, read_run
from s3_server import ENV, s3_server

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def _run(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    return proc


def test_demo_on_s3_storage_reruns_from_cache_and_reports(tmp_path, demo_data_root, monkeypatch):
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)  # this process reads the bucket too
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a private cluster, not the suite's
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    with s3_server("e2e") as s3:
        root = s3.uri("runs")
        argv = ["jobs/run_benchmark.py", "--config", "configs/demo.yaml", "profile=tiny", "name=s3demo",
                f"storage={root}", f"data_root={demo_data_root}", "demo_data=false", "scenarios.0.tasks=2",
                "max_eval_per_class=3", PAPER_METHODS]
        t0 = time.time()
        first = _run(argv, env, timeout=240)
        took = time.time() - t0
        run_dir = storage.join(root, "s3demo")
        summary = json.loads(storage.read_text(storage.join(run_dir, "summary.json")))
        assert summary["failures"] == [] and summary["fine_tuned_tasks"] == 2 + 2 + 2 + 2 + 1, summary
        for key in ("zero_shot", "joint", "seq_ft", "lwf", "ewc", "maxabs", "ties", "magmax"):
            assert summary[key] is not None, key
        df = read_run(storage.join(run_dir, "results"))
        assert not df.duplicated(list(KEY_COLUMNS)).any()
        assert set(df[df.role == "final"].method) >= {"zero_shot", "joint", "seq_ft", "lwf", "ewc", "magmax"}
        checkpoints = [p for p in storage.list_files(storage.join(root, "checkpoints"), ".safetensors")
                       if ".epoch." not in p]
        assert len(checkpoints) == 9, checkpoints  # seq, ind, lwf, ewc chains of 2 and joint, all in the bucket
        # the report step ran on the URI: rendered locally, uploaded beside the results
        report = storage.join(run_dir, "report")
        assert {storage.name(p) for p in storage.list_files(report)} >= {"index.md", "table.md", "table.tex"}
        assert "report: s3://e2e/runs/s3demo/report/index.md?endpoint_override=" in first.stdout
        assert not any(Path(ROOT, "results").glob("s3demo*")) and not Path(ROOT, "s3:").exists()

        # a rerun: every result exists, so nothing is fine-tuned or rewritten, and Ray never starts
        stamps = {p: storage.mtime_ns(p) for p in checkpoints + storage.list_files(storage.join(run_dir, "results"))}
        t0 = time.time()
        again = _run(argv, env, timeout=120)
        assert "nothing to do" in again.stdout
        assert json.loads(storage.read_text(storage.join(run_dir, "summary.json")))["fine_tuned_tasks"] == 0
        assert {p: storage.mtime_ns(p) for p in stamps} == stamps
        assert time.time() - t0 < took

        # the report again, from the URI alone
        table = storage.read_text(storage.join(report, "table.md"))
        assert "| Zero-shot |" in table and "magmax" in table.lower()
        for p in storage.list_files(report):
            storage.delete(p)
        made = _run(["jobs/make_report.py", run_dir], env, timeout=120)
        assert table in made.stdout
        assert storage.read_text(storage.join(report, "table.md")) == table
        assert storage.exists(storage.join(report, "index.md"))
