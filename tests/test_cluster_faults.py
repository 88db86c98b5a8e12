"""The cluster, simulated on one machine: several Ray nodes, units spread over them, faults injected.

A head with no CPUs (it only drives) and two one-CPU worker nodes from ``ray.cluster_utils``;
the benchmark runs as its own driver process (``jobs/run_benchmark.py``), as on a cluster. The head
runs the dashboard, as a real head does: Ray Train's placement-group cleaner asks its State API
whether a controller is alive (without it, a controller lost with its node kept its placement group
reserved and the retried unit waited forever; CI saw that before the units' drivers moved to the head).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from pipeline.results import read_run
from ports import free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    dashboard = free_port()
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": dashboard})
    c.dashboard_url = f"http://127.0.0.1:{dashboard}"
    workers = [c.add_node(num_cpus=1) for _ in range(2)]
    yield c, workers
    c.shutdown()


def _alive_actors(dashboard_url: str, class_name: str) -> list:
    """Every live actor of this class (Ray's State API records)."""
    from ray.util.state import list_actors

    return list_actors(address=dashboard_url, filters=[("class_name", "=", class_name),
                                                       ("state", "=", "ALIVE")], timeout=10)


def _actor_nodes(dashboard_url: str, class_name: str) -> set[str]:
    """Nodes that host a live actor of this class."""
    return {a.node_id for a in _alive_actors(dashboard_url, class_name)}


def _argv(storage: Path, data_root: Path, address: str, name: str = "faults") -> list[str]:
    # the smallest run with what the faults hit: a chain (seq_ft, and MagMax's actor) and independent
    # tasks (avg) as two units, three epochs (so a fault lands inside a task: after the first stored
    # epoch, with two epochs of one task to go; at two, a unit could finish before the test had
    # looked its Train actors up), a λ trial on Tune; two test images per class are enough to
    # compare results
    return [sys.executable, str(ROOT / "jobs" / "run_benchmark.py"), "--no-report", "--config",
            str(ROOT / "configs" / "demo.yaml"), f"name={name}", f"storage={storage}", f"data_root={data_root}",
            "demo_data=false", "scenarios.0.tasks=2", "finetune.epochs=3", "finetune.batch_size=50",
            "methods=[seq_ft,magmax,avg]", "merge.sweep_lambdas=[0.5]", "max_eval_per_class=2",
            "merge.sweep_methods=[magmax]", f"ray.address={address}", "ray.cpus_per_worker=0.9",
            "ray.eval_cpus=0.45", "ray.max_failures=3"]


def _start(argv: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(argv, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                            start_new_session=True)


def _wait(proc: subprocess.Popen, log: Path, timeout: float = 600) -> None:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"the driver did not finish in {timeout:.0f} s; its log ends:\n{log.read_text()[-6000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, log.read_text()[-4000:]


def _until(predicate, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    end = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, f"driver ended before the fault could be injected:\n{log.read_text()[-3000:]}"
        assert time.time() < end, "timed out waiting for fine-tuning to start"
        time.sleep(0.2)


def _start_and_wait_for_a_stored_epoch(storage: Path, data_root: Path, address: str, log: Path) -> subprocess.Popen:
    """A driver on the fault-free run's config, once its first checkpoint or epoch state is stored."""
    proc = _start(_argv(storage, data_root, address), log)
    _until(lambda: any((storage / "checkpoints").rglob("*.safetensors")) if (storage / "checkpoints").is_dir()
           else False, proc, log)
    return proc


def _checkpoints(storage: Path) -> list[Path]:
    return sorted((storage / "checkpoints").rglob("task_*.safetensors"))


def _results(storage: Path, name: str = "faults") -> pd.DataFrame:
    df = read_run(storage / name / "results")  # refuses duplicate keys
    return df.drop(columns=["code_version", "config_hash", "run"]).sort_values(
        ["method", "finetuning", "lam", "after_task", "eval_task", "role", "metric"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def fault_free(cluster, demo_data_root, tmp_path_factory):
    c, _ = cluster
    storage = tmp_path_factory.mktemp("fault_free")
    log = storage / "driver.log"
    _wait(_start(_argv(storage, demo_data_root, c.address), log), log)
    return storage


def test_units_spread_across_nodes(fault_free):
    from pipeline.storage import read_metadata

    nodes = {read_metadata(p)["node"] for p in _checkpoints(fault_free) if ".epoch." not in p.name}
    assert len(nodes) == 2  # the sequential chain and the independent tasks ran on different nodes
    summary = json.loads((fault_free / "faults" / "summary.json").read_text())
    assert summary["failures"] == [] and summary["fine_tuned_tasks"] == 4


def test_losing_a_node_mid_fine_tuning_changes_nothing(cluster, fault_free, demo_data_root, tmp_path):
    from pipeline.storage import read_tensors

    c, workers = cluster
    storage = tmp_path / "storage"
    log = tmp_path / "driver.log"
    # once the first epoch of fine-tuning has been stored, in the middle of a task, a node that
    # runs Train workers dies
    proc = _start_and_wait_for_a_stored_epoch(storage, demo_data_root, c.address, log)
    # the units' drivers and Train controllers wait on the head, so a lost GPU node loses only workers
    assert _actor_nodes(c.dashboard_url, "TrainController") == {c.head_node.node_id}
    hosts = _actor_nodes(c.dashboard_url, "RayTrainWorker")
    victim = next((w for w in workers if w.node_id in hosts), None)
    assert victim is not None, f"no worker node hosts a Train worker: {hosts}"
    workers.remove(victim)
    c.remove_node(victim, allow_graceful=False)
    workers.append(c.add_node(num_cpus=1))  # the autoscaler's replacement
    _wait(proc, log)
    assert "State API" not in log.read_text()  # the driver found the dashboard Train's cleaner needs

    pd.testing.assert_frame_equal(_results(storage), _results(fault_free), check_exact=False, rtol=1e-6)
    ours, theirs = _checkpoints(storage), _checkpoints(fault_free)
    assert [p.relative_to(storage) for p in ours] == [p.relative_to(fault_free) for p in theirs]
    for a, b in zip(ours, theirs):  # no task vector lost or changed by the restart
        want, got = read_tensors(b), read_tensors(a)
        assert set(got) == set(want)
        for key in want:
            assert (got[key] - want[key]).abs().max() <= 1e-5, (a.name, key)


def test_killing_the_units_driving_actor_mid_fine_tuning_changes_nothing(cluster, fault_free, demo_data_root,
                                                                         tmp_path):
    c, _ = cluster
    storage = tmp_path / "storage"
    log = tmp_path / "driver.log"
    # the one process that drives every Train run (a thread per unit) dies once an epoch is stored:
    # Ray restarts it, the calls in flight are retried, their controllers and workers (owned by it)
    # go with it, and each unit resumes from its folder
    proc = _start_and_wait_for_a_stored_epoch(storage, demo_data_root, c.address, log)
    from ray.util.state import get_actor

    drivers = _alive_actors(c.dashboard_url, "UnitDriver")
    assert len(drivers) == 1 and drivers[0].pid, drivers
    os.kill(drivers[0].pid, signal.SIGKILL)
    _wait(proc, log)
    assert get_actor(drivers[0].actor_id, address=c.dashboard_url, timeout=10).num_restarts >= 1  # the fault did land
    pd.testing.assert_frame_equal(_results(storage), _results(fault_free), check_exact=False, rtol=1e-6)
    ours, theirs = _checkpoints(storage), _checkpoints(fault_free)
    assert [p.relative_to(storage) for p in ours] == [p.relative_to(fault_free) for p in theirs]


def test_killing_the_driver_and_rerunning_resumes(cluster, fault_free, demo_data_root, tmp_path):
    c, _ = cluster
    storage = tmp_path / "storage"
    log = tmp_path / "driver.log"
    proc = _start(_argv(storage, demo_data_root, c.address), log)
    _until(lambda: len([p for p in _checkpoints(storage) if ".epoch." not in p.name]) >= 1
           if (storage / "checkpoints").is_dir() else False, proc, log)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p: p.stat().st_mtime_ns for p in _checkpoints(storage) if ".epoch." not in p.name}
    assert finished and not (storage / "faults" / "summary.json").exists()

    log2 = tmp_path / "rerun.log"
    _wait(_start(_argv(storage, demo_data_root, c.address), log2), log2)
    for p, mtime in finished.items():  # finished tasks were skipped, not redone
        assert p.stat().st_mtime_ns == mtime, p
    summary = json.loads((storage / "faults" / "summary.json").read_text())
    assert 0 < summary["fine_tuned_tasks"] <= 4 - len(finished)
    pd.testing.assert_frame_equal(_results(storage), _results(fault_free), check_exact=False, rtol=1e-6)

    # and a rerun of the finished plan does nothing at all
    log3 = tmp_path / "again.log"
    before = _results(storage)
    _wait(_start(_argv(storage, demo_data_root, c.address), log3), log3)
    assert "nothing to do" in log3.read_text()
    pd.testing.assert_frame_equal(_results(storage), before)
