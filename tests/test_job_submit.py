"""The cluster workflow on this machine: `ray start --head`, `ray job submit` the demo, `ray stop`.

The job is the demo's entry point and config, cut to 2 tasks of 1 epoch on the suite's small demo
world, the methods of two fine-tuning units (sequential and independent) and a 2-point λ grid: the
workflow (submission, the job's own driver joining the head, Train units, the MagMax actor, the λ
sweep on Tune, the report) is the full demo's, in a fraction of its time. Every method's rows
through the real entry point are tests/test_end_to_end.py's.

`ray stop` ends every Ray process on the machine, so this test runs last (conftest orders
``ray_cli`` tests after all others) and first shuts the suite's own Ray session down.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.results import KEY_COLUMNS, read_run
from ports import free_port

pytestmark = [pytest.mark.slow, pytest.mark.ray_cli]
ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
METHODS = ("zero_shot", "seq_ft", "randmix", "maxabs", "avg", "ties", "magmax")  # two units: seq and ind


def _ray(*args: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def _ray_processes() -> list[str]:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines()
    return [line for line in out if "gcs_server" in line or "/raylet" in line]


def test_ray_start_job_submit_the_demo_ray_stop(tmp_path, demo_data_root):
    import ray

    if ray.is_initialized():
        ray.shutdown()
    # the job's `python` must be this environment's (as on a cluster node set up by cluster.yaml)
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", RAY_USAGE_STATS_ENABLED="0",
               RAY_AUTH_MODE="token")  # the job API is token-protected (Ray >= 2.59); the client must say so
    dash = free_port()
    started = _ray("start", "--head", f"--port={free_port()}", "--num-cpus=2", "--include-dashboard=true",
                   "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--disable-usage-stats", env=env)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        storage = tmp_path / "storage"
        t0 = time.time()
        submit = _ray("job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", str(ROOT), "--",
                      "python", "jobs/run_benchmark.py", f"storage={storage}", f"data_root={demo_data_root}",
                      "demo_data=false", "scenarios.0.tasks=2", "finetune.epochs=1", "finetune.batch_size=32",
                      "merge.sweep_lambdas=[0.5,1.0]", f"methods=[{','.join(METHODS)}]", env=env, timeout=1800)
        log = submit.stdout + submit.stderr
        assert submit.returncode == 0, log[-5000:]
        assert "succeeded" in log, log[-3000:]
        assert "joined" in log, log[-3000:]  # the job's driver joined the head, it did not start its own Ray
        print(f"demo through ray job submit: {time.time() - t0:.0f}s")
    finally:
        stopped = _ray("stop", env=env)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    time.sleep(1)
    assert _ray_processes() == []  # ray stop cleaned up

    run = storage / "demo"
    df = read_run(run / "results")
    assert not df.duplicated(list(KEY_COLUMNS)).any()
    parts = sorted(p.stem for p in (run / "results" / "demo_shapes_2").glob("*.parquet"))
    assert parts == ["analysis", "final", "matrix", "sweep"]
    final = set(df[df.role == "final"].method)
    assert final == set(METHODS)
    sweep = df[df.role == "sweep"]
    assert len(sweep) == 5 * 2  # the λ grid for every method that has λ
    matrix = df[(df.role == "matrix") & (df.eval_task >= 0)]
    assert len(matrix[matrix.method == "magmax"]) == 2 * 2
    assert (run / "report" / "table.md").is_file() and (run / "summary.json").is_file()
