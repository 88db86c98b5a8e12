"""A rerun of a finished plan: zero fine-tuning steps, and a fraction of the first run's time.

    .venv/bin/python bench/rerun.py              # the demo plan (configs/demo.yaml), as `make demo` runs it
    .venv/bin/python bench/rerun.py --quick      # 2 tasks, 1 epoch: a smoke run

Both runs go through the real entry point (`jobs/run_benchmark.py`) in fresh processes on the
same storage, so the times include Python and Ray start-up; the second finds every checkpoint
and every result in storage. Prints both times, the ratio and the tasks each run fine-tuned.
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


def run_once(overrides: list[str]) -> tuple[float, dict]:
    argv = [sys.executable, str(ROOT / "jobs" / "run_benchmark.py"), "--no-report", *overrides]
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ))
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    storage = next(o.split("=", 1)[1] for o in overrides if o.startswith("storage="))
    summary = json.loads((Path(storage) / "demo" / "summary.json").read_text())
    return wall, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 tasks, 1 epoch, a small world")
    parser.add_argument("--storage", default="", help="storage folder (default: a fresh temp folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rerun-") as tmp:
        storage = args.storage or str(Path(tmp) / "storage")
        # a private local Ray per run, as on a fresh machine (not a `ray start` cluster that may be running)
        overrides = [f"storage={storage}", f"data_root={ROOT / 'data'}", "ray.address=local"]
        if args.quick:
            overrides += ["scenarios.0.tasks=2", "finetune.epochs=1", "merge.sweep_lambdas=[0.5]"]
        first, s1 = run_once(overrides)
        again, s2 = run_once(overrides)
    print(f"plan: {'quick (2 tasks, 1 epoch)' if args.quick else 'the demo (configs/demo.yaml)'}; "
          f"{os.cpu_count()} CPUs, no GPU")
    print(f"{'run':<8} {'wall s':>8} {'tasks fine-tuned':>17}")
    print(f"{'first':<8} {first:>8.1f} {s1['fine_tuned_tasks']:>17}")
    print(f"{'rerun':<8} {again:>8.1f} {s2['fine_tuned_tasks']:>17}")
    volatile = ("wall_seconds", "fine_tuned_tasks")
    same = {k: v for k, v in s1.items() if k not in volatile} == {k: v for k, v in s2.items() if k not in volatile}
    print(f"rerun / first = {again / first:.3f} (target < 0.10); same results: {same}")


if __name__ == "__main__":
    main()
