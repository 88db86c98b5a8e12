"""Wall time of `make demo` and where it goes, from the driver's own log lines.

    .venv/bin/python bench/demo_time.py                          # one demo run in a fresh storage
    .venv/bin/python bench/demo_time.py --reference results/demo/summary.json
    .venv/bin/python bench/demo_time.py --storage /tmp/demo_ck   # reuse a storage (cached fine-tuning)

Runs ``jobs/run_benchmark.py storage=<fresh folder>`` (the demo config unless --config), stamps
every line it prints with the seconds since start, and splits the run at the lines the driver
prints: before Ray (data check, imports), Ray start, fine-tuning units, the accuracy matrices,
the λ trials, and what follows (analyses, Parquet, report). With --reference, the new
summary.json must equal it except for wall_seconds (the numbers did not change). The load
average before and after is printed: on a shared machine, compare runs made side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

STAGES = (  # (name, pattern of the line that ends it)
    ("before Ray (data check, imports)", re.compile(r"^ray: ")),
    ("fine-tuning units", re.compile(r"fine-tuning units run in")),
    ("accuracy matrices", re.compile(r": \d+ evaluations in ")),
    ("λ trials", re.compile(r" merge trials ")),
)


def run(args: argparse.Namespace) -> dict:
    storage = args.storage or tempfile.mkdtemp(prefix="demo_time_")
    cmd = [sys.executable, str(ROOT / "jobs" / "run_benchmark.py"), "--config", args.config, f"storage={storage}"]
    load0 = os.getloadavg()
    start = time.time()
    marks: list[tuple[str, float]] = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            now = time.time() - start
            if args.verbose:
                print(f"{now:7.1f} {line}", end="")
            for name, pattern in STAGES:
                if pattern.search(line) and name not in dict(marks):
                    marks.append((name, now))
    total = time.time() - start
    if proc.returncode:
        raise SystemExit(f"the demo failed (exit {proc.returncode})")
    summary = json.loads((Path(storage) / "demo" / "summary.json").read_text()) \
        if args.config.endswith("demo.yaml") else {}
    print(f"load average before {load0[0]:.1f}, after {os.getloadavg()[0]:.1f}; storage {storage}")
    last = 0.0
    for name, t in marks:
        print(f"  {name:36s} {t - last:7.1f} s")
        last = t
    print(f"  {'after (analyses, Parquet, report)':36s} {total - last:7.1f} s")
    print(f"  {'total':36s} {total:7.1f} s")
    if args.reference and summary:
        ref = json.loads(Path(args.reference).read_text())
        skip = {"wall_seconds"}
        diff = sorted(k for k in set(ref) | set(summary) if k not in skip and ref.get(k) != summary.get(k))
        print("summary.json: identical to the reference" if not diff else f"summary.json DIFFERS in {diff}")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    parser.add_argument("--storage", default="", help="storage folder (default: a fresh temporary one)")
    parser.add_argument("--reference", default="", help="a summary.json the new one must equal")
    parser.add_argument("--verbose", action="store_true", help="print the driver's lines, stamped")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
