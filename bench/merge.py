"""Merge benchmark: time and peak memory of every merge method at ViT-B/16 size.

    .venv/bin/python bench/merge.py                 # full size, T = 5 10 20 50 (~10 min, ~17 GB of /tmp)
    .venv/bin/python bench/merge.py --quick         # tiny CLIP shapes, T = 2 3, seconds

Task vectors have the real ViT-B/16 image tower's shapes (152 tensors, 86.2M float32 entries,
one "model size" = 345 MB) and live in safetensors files that the merges open memory-mapped
(``pipeline.task_vectors.open_tensors``), as a user with 50 task vectors would run them. Every
(method, T) case runs in a fresh subprocess; peak memory is its anonymous resident memory above
the level before the merge (page-cache pages of the mapped inputs are not process memory).

Two references, measured in the same run:
* ``copy``: copying the same T x model-size bytes into one model-size buffer, the memory-speed
  floor for anything that reads T vectors;
* ``naive_magmax``: stack all T vectors, ``abs().argmax(0)``, gather -- the way MagMax is written
  without care for memory. It is run up to ``--naive-max-t`` (it needs about 2T model sizes) and
  extrapolated linearly beyond, marked ``~``.
A separate in-memory case compares one RunningMagMax fold with a copy of the same bytes
(bandwidth = bytes that must move / time: a fold reads cur and new and writes cur, a copy reads
and writes once).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    MB,
    PeakMemory,
    add_threads_arg,
    machine,
    numel,
    run_child,
    table,
    timed,
    tiny_clip_visual_shapes,
)

import torch  # noqa: E402

METHODS = ("copy", "running_magmax", "magmax", "average", "random_mix", "ties", "kth_magnitude",
           "naive_magmax")
# Largest T run by default, per method, so the full run stays near 10 minutes on 2 cores: TIES and
# the k-th magnitude are compute-bound (minutes at T=20), the naive MagMax needs ~2T model sizes.
MAX_T = {"average": 20, "random_mix": 20, "ties": 10, "kth_magnitude": 10, "naive_magmax": 10}
SCALE = 0.01  # task vectors are small updates; the value only matters for TIES' thresholds


# --------------------------------------------------------------------------------------------
# inputs


def shapes_for(quick: bool) -> dict[str, tuple[int, ...]]:
    if quick:
        return tiny_clip_visual_shapes()
    from pipeline.models import visual_shapes

    return visual_shapes("ViT-B-16")


def write_task_vectors(folder: Path, shapes: dict[str, tuple[int, ...]], count: int) -> list[Path]:
    """``count`` seeded random task vectors as safetensors files (reused if already there).

    Each is a window of one shared buffer of Gaussian noise at its own offset and scale: distinct
    values per task at the cost of a copy instead of a fresh random draw (the disk is the limit).
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tag = hashlib.sha256(json.dumps(sorted(shapes.items())).encode()).hexdigest()[:12]
    total = numel(shapes)
    pool = None
    paths = []
    for i in range(count):
        path = folder / f"tv_{i:03d}.safetensors"
        if path.is_file():
            with safe_open(str(path), framework="pt") as fh:
                if (fh.metadata() or {}).get("shapes") == tag:
                    paths.append(path)
                    continue
        if pool is None:
            pool = torch.randn(total + 7919 * count, generator=torch.Generator().manual_seed(1000))
        offset, scale = 7919 * i, SCALE * (1.0 + 0.01 * i)
        tensors = {}
        for k, shape in shapes.items():
            n = math.prod(shape)
            tensors[k] = pool[offset:offset + n].view(shape) * scale
            offset += n
        save_file(tensors, str(path), metadata={"shapes": tag})
        paths.append(path)
    return paths


def open_inputs(paths: list[Path]) -> list:
    from pipeline.task_vectors import open_tensors

    return [open_tensors(p) for p in paths]


# --------------------------------------------------------------------------------------------
# the cases


@torch.no_grad()
def naive_magmax(tvs: list) -> dict[str, torch.Tensor]:
    """MagMax the straightforward way: all vectors stacked, argmax of |.| per column."""
    keys = list(tvs[0])
    # reversed: argmax returns the first maximum, and the later task must win ties
    stacked = torch.stack([torch.cat([tv[k].reshape(-1) for k in keys]) for tv in reversed(tvs)])
    pick = stacked.abs().argmax(0, keepdim=True)
    flat = stacked.gather(0, pick).squeeze(0)
    out, pos = {}, 0
    for k in keys:
        n = tvs[0][k].numel()
        out[k] = flat[pos:pos + n].view(tvs[0][k].shape)
        pos += n
    return out


@torch.no_grad()
def merge(method: str, paths: list[Path]) -> dict[str, torch.Tensor]:
    from pipeline import merging
    from pipeline.task_vectors import open_tensors

    if method == "running_magmax":
        run = merging.RunningMagMax()
        for p in paths:  # one file open at a time: how the MagMax actor receives vectors
            run.add(open_tensors(p))
        return run.value
    tvs = open_inputs(paths)
    if method == "copy":
        out = {k: torch.empty(tvs[0].shape(k)) for k in tvs[0]}
        for tv in tvs:
            for k, dst in out.items():
                dst.copy_(tv[k])
        return out
    if method == "naive_magmax":
        return naive_magmax(tvs)
    kwargs = {"random_mix": {"seed": 0}, "ties": {"top_k": 0.2}, "kth_magnitude": {"k": 2}}.get(method, {})
    return merging.METHODS[method](tvs, **kwargs)


def digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        h.update(k.encode())
        h.update(tensors[k].contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def run_case(method: str, paths: list[Path]) -> dict:
    with PeakMemory() as mem:
        start = time.perf_counter()
        out = merge(method, paths)
        seconds = time.perf_counter() - start
    result = {"method": method, "T": len(paths), "seconds": seconds, "peak_bytes": mem.used}
    if method in ("running_magmax", "magmax", "naive_magmax"):
        result["digest"] = digest(out)
    return result


def bandwidth_case(paths: list[Path], threads: list[int], reps: int) -> dict:
    """One fold of an in-memory vector into an in-memory merge, against a copy of its bytes."""
    from pipeline.merging import RunningMagMax
    from pipeline.task_vectors import load_tensors

    first, second = load_tensors(paths[0]), load_tensors(paths[1])
    run = RunningMagMax.from_value(first, 1)
    cur = {k: v.clone() for k, v in first.items()}
    dst = {k: torch.empty_like(v) for k, v in second.items()}

    def copy() -> None:
        for k, v in second.items():
            dst[k].copy_(v)

    def fold() -> None:
        run.add(second)  # branch-free: folding the same vector again costs the same

    @torch.no_grad()
    def fold_torch_where() -> None:  # the implementation before this benchmark
        for k, v in second.items():
            c = cur[k]
            torch.where(v.abs() >= c.abs(), v, c, out=c)

    out = {"bytes": sum(v.numel() * v.element_size() for v in second.values()), "cases": {}, "cpu": {}}
    for _ in range(2):  # interleaved rounds, so a burst of load on the machine hits every case
        for t in threads:
            torch.set_num_threads(t)
            for name, fn in (("copy", copy), ("fold", fold), ("fold_torch_where", fold_torch_where)):
                if name == "fold_torch_where" and t != threads[0]:
                    continue
                key = f"{name}@{t}"
                best, _ = timed(fn, reps=reps)
                out["cases"][key] = min(best, out["cases"].get(key, math.inf))
                if t == 1:  # CPU time of a single thread is not stretched by other processes' load
                    cpu = min(_cpu_seconds(fn) for _ in range(reps))
                    out["cpu"][key] = min(cpu, out["cpu"].get(key, math.inf))
    return out


def _cpu_seconds(fn) -> float:
    start = time.thread_time()
    fn()
    return time.thread_time() - start


# --------------------------------------------------------------------------------------------
# the report


def _fit(points: list[tuple[int, float]], x: int) -> float:
    """Least-squares line through ``points`` evaluated at ``x`` (one point: proportional)."""
    if len(points) == 1:
        return points[0][1] * x / points[0][0]
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    sxx = sum((p[0] - mx) ** 2 for p in points)
    slope = sum((p[0] - mx) * (p[1] - my) for p in points) / sxx
    return my + slope * (x - mx)


def report_bandwidth(bw: dict) -> tuple[str, float, float]:
    """The table, the fold's % of the best copy bandwidth (wall), and of a one-thread copy (CPU time)."""
    size, cases, cpu = bw["bytes"], bw["cases"], bw["cpu"]
    copy_best = min(v for k, v in cases.items() if k.startswith("copy@"))
    copy_bw = 2 * size / copy_best
    rows = []
    for key, sec in sorted(cases.items()):
        name, threads = key.split("@")
        moved = 2 * size if name == "copy" else 3 * size
        cpu_s = cpu.get(key, math.nan)
        cpu_pct = 100 * (moved / cpu_s) / (2 * size / cpu["copy@1"]) if key in cpu and "copy@1" in cpu else math.nan
        rows.append([name, threads, sec * 1e3, moved / sec / 1e9, 100 * moved / sec / copy_bw, cpu_s * 1e3, cpu_pct])
    fold_best = min(v for k, v in cases.items() if k.startswith("fold@"))
    pct = 100 * (3 * size / fold_best) / copy_bw
    pct_cpu = 100 * (3 * size / cpu["fold@1"]) / (2 * size / cpu["copy@1"]) if "fold@1" in cpu else math.nan
    text = table(["case (one model size, in memory)", "threads", "wall ms (min)", "GB/s moved",
                  "% of best copy GB/s", "CPU ms (1 thread)", "% of 1-thread copy, by CPU time"], rows)
    return text, pct, pct_cpu


def report_merges(results: list[dict], model_bytes: int, copy_by_t: dict[int, float]) -> tuple[str, dict]:
    naive = {r["T"]: r for r in results if r["method"] == "naive_magmax"}
    naive_pts_m = sorted((t, r["peak_bytes"] / model_bytes) for t, r in naive.items())
    rows, summary = [], {}
    for r in results:
        t, m = r["T"], r["method"]
        peak = r["peak_bytes"] / model_bytes
        vs_t = vs_m = "-"
        if t in naive:
            vs_t = f"{r['seconds'] / naive[t]['seconds']:.2f}"
            vs_m = f"{peak / (naive[t]['peak_bytes'] / model_bytes):.2f}"
        elif naive_pts_m:  # memory is deterministic (2T + 2 model sizes); times are too noisy to fit
            vs_m = f"~{peak / _fit(naive_pts_m, t):.2f}"
        rows.append([m, t, r["seconds"], r["seconds"] / t, t * model_bytes / r["seconds"] / 1e9,
                     r["seconds"] / copy_by_t[t] if t in copy_by_t else math.nan,
                     r["peak_bytes"] / MB, peak, vs_t, vs_m, r.get("digest", "")])
        summary[(m, t)] = r
    text = table(["method", "T", "s", "s / vector", "input GB/s", "x copy time", "peak MiB",
                  "peak / model size", "time vs naive", "memory vs naive", "result digest"], rows)
    return text, summary


# --------------------------------------------------------------------------------------------
# main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny CLIP shapes, T = 2 3, in-process: a smoke test")
    ap.add_argument("--tasks", type=int, nargs="+", help="numbers of task vectors T (default 5 10 20 50)")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--max-t", nargs="+", default=[], metavar="METHOD=T",
                    help="largest T per method (defaults: %s; others: every T)" % " ".join(
                        f"{k}={v}" for k, v in MAX_T.items()))
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "magmax-bench",
                    help="where the task-vector files go (deleted afterwards unless --keep)")
    ap.add_argument("--keep", action="store_true", help="keep the task-vector files for a rerun")
    ap.add_argument("--bandwidth-threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--reps", type=int, default=5, help="repetitions of the in-memory bandwidth case")
    add_threads_arg(ap)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.child:  # one case in this fresh process
        spec = json.loads(args.child)
        paths = [Path(p) for p in spec["paths"]]
        if spec["method"] == "bandwidth":
            res = bandwidth_case(paths, spec["threads"], spec["reps"])
        else:
            res = run_case(spec["method"], paths)
        print(json.dumps(res))
        return 0

    tasks = args.tasks or ([2, 3] if args.quick else [5, 10, 20, 50])
    limits = {} if args.quick else dict(MAX_T)
    for item in args.max_t:
        name, _, value = item.partition("=")
        if name not in METHODS or not value.isdigit():
            ap.error(f"--max-t takes METHOD=T with METHOD one of {', '.join(METHODS)}, got {item!r}")
        limits[name] = int(value)
    if args.quick:
        args.reps = min(args.reps, 2)
    shapes = shapes_for(args.quick)
    model_bytes = 4 * numel(shapes)
    need = max(tasks) * model_bytes
    args.dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(args.dir).free
    if need > 0.8 * free:
        print(f"need {need / 1e9:.1f} GB for the task-vector files in {args.dir}, only {free / 1e9:.1f} GB free: "
              f"pass --dir or fewer --tasks", file=sys.stderr)
        return 2
    print(f"# bench/merge.py {'--quick ' if args.quick else ''}on {machine()}")
    print(f"model: {len(shapes)} tensors, {numel(shapes) / 1e6:.1f}M float32 entries, "
          f"one model size = {model_bytes / 1e6:.0f} MB; T = {tasks}")
    start = time.perf_counter()
    paths = write_task_vectors(args.dir, shapes, max(tasks))
    print(f"wrote/reused {len(paths)} task-vector files in {args.dir} ({time.perf_counter() - start:.0f} s)")

    def case(spec: dict) -> dict:
        if args.quick:  # in-process: fast enough for a smoke test, memory figures are indicative
            if spec["method"] == "bandwidth":
                return bandwidth_case([Path(p) for p in spec["paths"]], spec["threads"], spec["reps"])
            return run_case(spec["method"], [Path(p) for p in spec["paths"]])
        return run_child(Path(__file__), ["--threads", str(args.threads), "--child", json.dumps(spec)])

    try:
        bw = case({"method": "bandwidth", "paths": [str(p) for p in paths[:2]],
                   "threads": args.bandwidth_threads, "reps": args.reps})
        bw_text, pct, pct_cpu = report_bandwidth(bw)
        results = []
        for t in tasks:
            for m in args.methods:
                if t > limits.get(m, t):
                    continue
                t0 = time.perf_counter()
                results.append(case({"method": m, "paths": [str(p) for p in paths[:t]]}))
                print(f"  {m:15s} T={t:<3d} {time.perf_counter() - t0:6.1f} s wall", file=sys.stderr, flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)

    copy_by_t = {r["T"]: r["seconds"] for r in results if r["method"] == "copy"}
    merge_text, summary = report_merges(results, model_bytes, copy_by_t)
    print()
    print("## MagMax fold vs copy, in memory (min over repetitions)")
    print(bw_text)
    print()
    print(f"## Merging T task vectors from memory-mapped safetensors files (torch threads: {args.threads})")
    print(merge_text)
    print()
    print("## Targets")
    print(f"* MagMax fold: {pct:.0f}% of the best copy bandwidth, wall clock (target >= 50%): "
          f"{'met' if pct >= 50 else 'NOT met'}; {pct_cpu:.0f}% of a one-thread copy by CPU time")
    t_max = max(tasks)
    for m in ("running_magmax", "magmax"):
        if (m, t_max) in summary:
            peak = summary[(m, t_max)]["peak_bytes"] / model_bytes
            print(f"* {m}, T={t_max}: peak {peak:.2f} model sizes (target <= 4): {'met' if peak <= 4 else 'NOT met'}")
    naive_pts = sorted((r["T"], r["peak_bytes"] / model_bytes) for r in results if r["method"] == "naive_magmax")
    if naive_pts:
        measured_at = [t for t, _ in naive_pts]
        if t_max in measured_at:
            print(f"* naive_magmax, T={t_max}: peak {dict(naive_pts)[t_max]:.1f} model sizes (measured)")
        else:
            print(f"* naive_magmax, T={t_max}: ~{_fit(naive_pts, t_max):.0f} model sizes, extrapolated linearly "
                  f"from T={measured_at} (not run: it would not fit next to the rest of this machine's memory)")
    digests = {r["T"]: set() for r in results if "digest" in r}
    for r in results:
        if "digest" in r:
            digests[r["T"]].add(r["digest"])
    if digests:
        same = all(len(v) == 1 for v in digests.values())
        print(f"* magmax, running_magmax and naive_magmax results bit-identical at every T run: {same}")
    skipped = [f"{m} at T={t}" for t in tasks for m in args.methods if t > limits.get(m, t)]
    if skipped:
        print(f"* not run (option --max-t): {', '.join(skipped)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
