"""Memory on the driver's node per fine-tuning unit in flight (issue 13, item 5).

    .venv/bin/python bench/head_memory.py              # N = 1, 2, 4 units in flight (~5 min on 2 CPUs)
    .venv/bin/python bench/head_memory.py --units 1 2  # other N

Every unit in flight is driven by one thread of one process for the whole run (the
``pipeline.orchestration.train.UnitDriver`` actor, placed on the driver's node by
``driving_options``), and keeps Ray Train's controller actor beside it; both wait on that node
while the Train workers train elsewhere. This starts a private local Ray cluster, submits N
single-task units of the tiny CLIP on generated data exactly as ``runner.fit_units`` does (same
actor, same options), and samples every process on the machine once a second by its Ray process
title: ``ray::UnitDriver`` (driving), ``ray::TrainController`` (controller),
``ray::RayTrainWorker`` (the worker, which on a cluster runs on a GPU node, not the head), and
``ray::IDLE`` (a pooled Ray worker with nothing to do: what any Ray Python process costs). It
prints, for the sample with the most units' processes alive, the processes of each kind and
their RSS, USS (pages only that process holds) and PSS (shared pages split between sharers):
RSS counts the shared libraries of every process in full, USS not at all, PSS is what the
processes add up to on the node.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, machine, table  # noqa: E402

KINDS = {"driving actor": "ray::UnitDriver", "Train controller": "ray::TrainController",
         "Train worker": "ray::RayTrainWorker", "idle Ray worker": "ray::IDLE"}
GB = 1 << 30
AT = 64  # units in flight the head is sized for (issue 13: <= 16 GB there)


def kind_of(cmdline: list[str]) -> str | None:
    title = " ".join(cmdline)
    return next((k for k, prefix in KINDS.items() if title.startswith(prefix)), None)


def sample() -> dict[str, list[tuple[int, int, int]]]:
    """(rss, uss, pss) in bytes of every process of each kind now, of this cluster only (its
    processes descend from this one: other Ray clusters on the machine are not counted)."""
    import psutil

    out: dict[str, list[tuple[int, int, int]]] = {k: [] for k in KINDS}
    for p in psutil.Process().children(recursive=True):
        try:
            kind = kind_of(p.cmdline())
            if kind is None:
                continue
            m = p.memory_full_info()
            out[kind].append((m.rss, m.uss, getattr(m, "pss", 0)))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return out


class Sampler(threading.Thread):
    """Samples once a second; keeps the sample with the most driving + controller processes
    (on a tie, the one where they hold the most RSS)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.best: dict[str, list[tuple[int, int, int]]] | None = None

    def run(self) -> None:
        def score(s):
            units = s["driving actor"] + s["Train controller"]
            return len(units), sum(r for r, _, _ in units)

        while not self.stop.is_set():
            s = sample()
            if self.best is None or score(s) > score(self.best):
                self.best = s
            self.stop.wait(1.0)


def run(n: int, data_root: Path, work: Path, epochs: int) -> dict[str, list[tuple[int, int, int]]]:
    import ray

    from pipeline.config import load_config
    from pipeline.orchestration.plan import build_plan
    from pipeline.orchestration.runner import resolve_paths
    from pipeline.orchestration.train import UnitDriver, driving_options

    cfg = resolve_paths(load_config(ROOT / "configs" / "demo.yaml", [
        f"data_root={data_root}", f"storage={work / f'n{n}'}", "demo_data=false", f"scenarios.0.tasks={max(2, n)}",
        "methods=[avg]", "ray.group_independent=false", "ray.pack_gpu_s=0", f"ray.max_concurrent_units={n}",
        f"finetune.epochs={epochs}", "finetune.batch_size=50", "ray.use_gpu='false'", "ray.cpus_per_worker=0.5",
        "ray.max_failures=0"]))
    units = build_plan(cfg).units[:n]
    driver = UnitDriver.options(**driving_options(cfg.ray.max_failures, n)).remote()
    sampler = Sampler()
    sampler.start()
    refs = [driver.fit.remote(cfg, u.unit, u.folder, str(work / f"n{n}" / "ray_train")) for u in units]
    ray.get(refs)
    ray.kill(driver)
    sampler.stop.set()
    sampler.join()
    assert sampler.best is not None
    return sampler.best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=6, help="generated training images per class")
    args = parser.parse_args()

    import ray

    from pipeline.data.demo_world import write_image_folder

    print(f"machine: {machine()}")
    work = Path(tempfile.mkdtemp(prefix="bench-head-memory-"))
    try:
        data_root = work / "data"
        write_image_folder(data_root / "demo_shapes", train_per_class=args.per_class, test_per_class=1, seed=0)
        # CPUs declared, not real: every unit's one worker (0.5 CPU) fits, so all N are in flight at once
        ray.init(address="local", num_cpus=max(2, max(args.units)), include_dashboard=False,
                 log_to_driver=False, logging_level="ERROR")
        rows = []
        for n in args.units:
            start = time.perf_counter()
            best = run(n, data_root, work, args.epochs)
            wall = time.perf_counter() - start
            head = best["driving actor"] + best["Train controller"]
            for kind in KINDS:
                procs = best[kind]
                rows.append([n, kind, len(procs), sum(r for r, _, _ in procs) / GB, sum(u for _, u, _ in procs) / GB,
                             sum(p for _, _, p in procs) / GB])
            units = max(1, len(best["Train controller"]))
            rows.append([n, "head per unit (driving + controllers) / N", f"{len(head)}",
                         sum(r for r, _, _ in head) / GB / units, sum(u for _, u, _ in head) / GB / units,
                         sum(p for _, _, p in head) / GB / units])
            # one driving process whatever N, plus a controller per unit: the head at 64 units in flight
            ctl = best["Train controller"]
            if ctl:
                per = [sum(x[k] for x in ctl) / len(ctl) / GB for k in range(3)]
                drive = [sum(x[k] for x in best["driving actor"]) / GB for k in range(3)]
                rows.append([n, f"head at {AT} units (1 driving + {AT} controllers)", f"{1 + AT}",
                             *(d + AT * c for d, c in zip(drive, per))])
            print(f"N = {n}: {wall:.0f} s", file=sys.stderr, flush=True)
        print()
        print("## Memory per kind of process, at the sample with the most units alive (GiB)")
        print(table(["units in flight", "process", "count", "RSS", "USS", "PSS"], rows))
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
