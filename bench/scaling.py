"""Speed-up of the demo plan on 1, 2 and 3 simulated nodes (``ray.cluster_utils.Cluster``).

    .venv/bin/python bench/scaling.py                     # demo plan, 2 epochs, per-task independent units
    .venv/bin/python bench/scaling.py --nodes 1 2 --quick

Each node is a separate raylet with ``--cpus-per-node`` CPUs (the head has none: it only
drives); every run starts from empty storage and goes through the real entry point as its own
driver process. On one machine the nodes share its cores: the speed-up is bounded by the cores
there are, not by the pipeline, so each run also prints how many cores the whole machine kept
busy meanwhile (the bound is cores / cores busy with one node).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies of all cores since boot, from /proc/stat (None elsewhere)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def run_plan(address: str, storage: Path, overrides: list[str]) -> tuple[float, dict, float | None]:
    """Wall seconds, the run's summary, and the machine's cores kept busy on average meanwhile
    (everything on it: the Train workers, Ray's own processes, the driver): when that is already
    all the cores there are, more simulated nodes cannot go faster."""
    argv = [sys.executable, str(ROOT / "jobs" / "run_benchmark.py"), "--no-report", f"storage={storage}",
            f"data_root={ROOT / 'data'}", f"ray.address={address}", *overrides]
    before = _cpu_jiffies()
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = _cpu_jiffies()
    if proc.returncode != 0:
        raise SystemExit(f"run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    busy = None
    if before and after and after[1] > before[1]:
        busy = (after[0] - before[0]) / (after[1] - before[1]) * (os.cpu_count() or 1)
    return wall, json.loads((storage / "demo" / "summary.json").read_text()), busy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--cpus-per-node", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="2 tasks, 1 epoch")
    args = parser.parse_args()
    from ray.cluster_utils import Cluster

    tasks, epochs = (2, 1) if args.quick else (5, args.epochs)
    overrides = [f"scenarios.0.tasks={tasks}", f"finetune.epochs={epochs}", "ray.group_independent=false",
                 "ray.pack_gpu_s=0", "ray.cpus_per_worker=0.9", "ray.eval_cpus=0.45",
                 "merge.sweep_lambdas=[0.25,0.5,0.75,1.0]"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="scaling-") as tmp:
        for n in args.nodes:
            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
            try:
                for _ in range(n):
                    cluster.add_node(num_cpus=args.cpus_per_node)
                wall, summary, busy = run_plan(cluster.address, Path(tmp) / f"nodes{n}", overrides)
            finally:
                cluster.shutdown()
            rows.append((n, wall, summary["fine_tuned_tasks"], summary.get("magmax"), busy))
    base = rows[0][1]
    print(f"demo plan: {tasks} tasks, {epochs} epochs, independent tasks as separate units; "
          f"{args.cpus_per_node} CPU(s) per node; machine: {os.cpu_count()} cores, no GPU")
    print(f"{'nodes':>5} {'wall s':>8} {'speed-up':>9} {'tasks':>6} {'MagMax acc':>11} {'cores busy':>11}")
    for n, wall, done, acc, busy in rows:
        cores = "?" if busy is None else f"{busy:.2f}/{os.cpu_count()}"
        print(f"{n:>5} {wall:>8.1f} {base / wall:>9.2f} {done:>6} {acc!s:>11} {cores:>11}")
    if rows[0][4] is not None and rows[0][4] > 0.8 * (os.cpu_count() or 1):
        print(f"one node already kept {rows[0][4]:.2f} of the machine's {os.cpu_count()} cores busy: the "
              f"simulated nodes share those cores, so this machine cannot show a speed-up beyond "
              f"{(os.cpu_count() or 1) / rows[0][4]:.2f}x")


if __name__ == "__main__":
    main()
