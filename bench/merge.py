"""Merge benchmark: time and peak memory of every merge method at ViT-B/16 size.

    .venv/bin/python bench/merge.py --methods paper # the paper's merges, T = 5 10 20 50 (~10 min, ~17 GB of /tmp)
    .venv/bin/python bench/merge.py --methods newer --tasks 10 50 --case-budget 120
                                                    # the newer merges (~30 min on 2 cores)
    .venv/bin/python bench/merge.py --quick         # tiny CLIP shapes, T = 2 3, every method, seconds

Task vectors have the real ViT-B/16 image tower's shapes (152 tensors, 86.2M float32 entries,
one "model size" = 345 MB) and live in safetensors files that the merges open memory-mapped
(``pipeline.storage.open_mapped``), as a user with 50 task vectors would run them. Every
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

The newer merges (``pipeline.merging``: breadcrumbs, DARE over TA and TIES, consensus, TSV-M,
Iso-C, Iso-CTS, WUDI, LiNeS as a post-step on the task-arithmetic sum, and the running OPCM and
DOP) run the same way (``--methods newer`` selects them all). Some are compute-bound at this size
on a few CPU cores (SVDs per matrix and task; WUDI's 300 and DOP's 200 optimiser steps per matrix):
``--case-budget`` stops a case after that many CPU seconds (process time, so that other load on
the machine does not shrink it; checked whenever the case reads an input tensor)
and prints it as not finished, with the time extrapolated from the fraction of the work done
(weighted by each matrix's flop count, see ``_work``) and the peak memory up to then (a lower
bound). The column "needs all T" says whether the method holds all T whole vectors in memory at
once; "inputs held" says what it does hold of them.
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
from collections.abc import Mapping
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

PAPER = ("copy", "running_magmax", "magmax", "average", "random_mix", "ties", "kth_magnitude",
         "naive_magmax")
NEWER = ("breadcrumbs", "dare_ta", "dare_ties", "consensus", "tsv_merge", "iso_c", "iso_cts", "wudi",
         "lines", "opcm", "dop")
METHODS = PAPER + NEWER
# What each case holds of its T inputs at once (the inputs are memory-mapped files; what a method
# reads is paged in and dropped by the kernel, only what it copies counts as its memory).
# "needs all T" = it holds all T whole vectors in memory at once; none of the merges does.
INPUTS_HELD = {
    "copy": "one tensor of one task",
    "running_magmax": "one vector open at a time (running)",
    "magmax": "one tensor of each task, chunked",
    "average": "one chunk of each task",
    "random_mix": "one tensor of each task",
    "ties": "T x chunk stack (8 MiB)",
    "kth_magnitude": "T x chunk stack (8 MiB)",
    "naive_magmax": "all T whole vectors, stacked",
    "breadcrumbs": "one tensor of one task",
    "dare_ta": "one tensor of one task",
    "dare_ties": "T dropped copies of one tensor",
    "consensus": "one tensor of one task",
    "tsv_merge": "one matrix of one task + its SVD",
    "iso_c": "one matrix (the sum) + its SVD",
    "iso_cts": "one matrix of one task + SVDs",
    "wudi": "T slices of one matrix (mapped views)",
    "lines": "one tensor of one task (TA), then the sum",
    "opcm": "one vector at a time (running)",
    "dop": "one vector at a time (running)",
}
NEEDS_ALL_T = {m: ("yes" if m == "naive_magmax" else "no") for m in METHODS}
# The fixed hyper-parameters of the newer merges (each module's defaults where it has one)
NEWER_KWARGS = {
    "breadcrumbs": {},  # top=0.01, bottom=0.85
    "dare_ta": {"p": 0.5, "seed": 0, "base": "ta"},  # p: FusionBench's CLIP configs
    "dare_ties": {"p": 0.5, "seed": 0, "base": "ties"},  # TIES' own top_k=0.2
    "consensus": {"k": 2, "lam_tall": 0.4, "base": "ta"},  # k=2 (paper), lam from {0.2..0.6}
    "tsv_merge": {}, "iso_c": {}, "iso_cts": {},  # rank 1/T; common-space fraction 0.8
    "wudi": {},  # 300 Adam steps per matrix, lr 1e-5 (official code)
    "opcm": {}, "dop": {},  # alpha 0.5 / 200 Adam steps per matrix, MGDA+EMA (FusionBench)
}
# --quick: a few optimiser steps instead of the fixed budgets (a smoke test, not a measurement)
QUICK_KWARGS = {"wudi": {"steps": 3}, "dop": {"steps": 3}}
LINES_BETA = 0.5  # LiNeS' beta (tuned on validation in the paper); alpha = 1/T for the TA sum
DEFAULT_CASE_BUDGET = 600.0  # seconds per newer case at full size before it is stopped
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
    from pipeline.storage import open_mapped as open_tensors

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


class _OverBudget(BaseException):
    """Raised from an input read once a case has run past its budget (not an Exception, so no
    merge's error handling can catch it)."""


class _Progress:
    """Where a case is: the key each input read asks for, and in which vector (for the running
    merges, one pass over the keys per added vector). Stops the case past ``deadline``."""

    def __init__(self, keys: list[str], deadline: float) -> None:
        self.order = {k: i for i, k in enumerate(keys)}
        self.deadline = deadline
        self.index = 0  # key order index of the last read
        self.vector = 0  # which input vector was read last

    def read(self, vector: int, key: str) -> None:
        self.vector, self.index = vector, self.order[key]
        if time.process_time() > self.deadline:  # CPU time: a loaded machine does not shrink the budget
            raise _OverBudget


class _Probed(Mapping):
    """A task vector whose reads report to a ``_Progress`` (a view: nothing is copied)."""

    def __init__(self, tv: Mapping, vector: int, progress: _Progress) -> None:
        self._tv, self._vector, self._progress = tv, vector, progress

    def __getitem__(self, key: str) -> torch.Tensor:
        self._progress.read(self._vector, key)
        return self._tv[key]

    def __iter__(self):
        return iter(self._tv)

    def __len__(self) -> int:
        return len(self._tv)


def _work(method: str, key: str, shape: tuple[int, ...]) -> float:
    """Relative cost of one key for the extrapolation of a stopped case: the flops of what the
    method does to it. SVD-based merges (TSV, Iso, OPCM, DOP): m n min(m, n) per matrix (DOP's
    Adam steps are products of the same order); WUDI: m n^2 per optimised matrix (its step is a
    product with an n x n matrix, n = the input dimension); others: the entry count."""
    from pipeline.merging.wudi import official_vit_matrix

    n_entries = float(math.prod(shape))
    if len(shape) != 2:
        return n_entries if method not in ("wudi", "tsv_merge", "iso_c", "iso_cts", "opcm", "dop") else 0.0
    m, n = shape
    if method == "wudi":
        if not official_vit_matrix(key, torch.empty(0, 0)):
            return 0.0
        return float(m) * n * n
    if method in ("tsv_merge", "iso_c", "iso_cts", "opcm", "dop"):
        if method in ("opcm", "dop") and key.endswith("in_proj_weight") and m == 3 * n:
            return 3.0 * n ** 3  # q, k, v as three matrices (split_qkv)
        if method in ("opcm", "dop") and "embedding" in key:
            return 0.0
        return float(m) * n * min(m, n)
    return n_entries


def _fraction_done(method: str, progress: _Progress, shapes: dict[str, tuple[int, ...]], n_tasks: int) -> float:
    """Fraction of the case's work done when it was stopped: the keys before the one being read
    are done, in the pass over the keys that is under way (one pass for the merges of all T
    vectors at once; one pass per added vector after the first for OPCM and DOP)."""
    weights = [_work(method, k, s) for k, s in shapes.items()]
    total = sum(weights) or 1.0
    in_pass = sum(weights[:progress.index]) / total
    if method in ("opcm", "dop"):
        passes = max(1, n_tasks - 1)  # the first vector is copied, each later one is a pass
        return (max(0, progress.vector - 1) + in_pass) / passes
    return in_pass


def _merge_newer(method: str, paths: list[Path], progress: _Progress | None,
                 quick: bool = False) -> dict[str, torch.Tensor]:
    from pipeline import merging
    from pipeline.storage import open_mapped as open_tensors

    kwargs = {**NEWER_KWARGS.get(method, {}), **(QUICK_KWARGS.get(method, {}) if quick else {})}

    def wrap(tv, i):
        return tv if progress is None else _Probed(tv, i, progress)

    if method in ("opcm", "dop"):
        run = (merging.OPCM if method == "opcm" else merging.DOP)(**kwargs)
        for i, p in enumerate(paths):  # one vector open at a time, as a continual merge gets them
            run.add(wrap(open_tensors(p), i))
        return run.value()
    tvs = [wrap(tv, i) for i, tv in enumerate(open_inputs(paths))]
    if method == "lines":
        tau = merging.task_arithmetic(tvs)
        return merging.lines(tau, alpha=1.0 / len(tvs), beta=LINES_BETA)
    fn = {"dare_ta": merging.dare, "dare_ties": merging.dare}.get(method) or getattr(merging, method)
    return fn(tvs, **kwargs)


@torch.no_grad()
def merge(method: str, paths: list[Path], progress: _Progress | None = None,
          quick: bool = False) -> dict[str, torch.Tensor]:
    from pipeline import merging
    from pipeline.storage import open_mapped as open_tensors

    if method in NEWER:
        return _merge_newer(method, paths, progress, quick)
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
    return merging.MERGE_FUNCTIONS[method](tvs, **kwargs)


def digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        h.update(k.encode())
        h.update(tensors[k].contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _warm_up_adam() -> None:
    """One step of torch's Adam on a scalar: its first use imports torch's compiler stack (seconds,
    tens of MB) -- a one-off per process that is not part of the merge."""
    x = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([x], lr=1e-3)
    x.grad = torch.ones(1)
    opt.step()


def run_case(method: str, paths: list[Path], budget: float | None = None, quick: bool = False) -> dict:
    """Time and peak memory of one case; past ``budget`` seconds (newer merges only) the case is
    stopped and reported with ``"stopped": true``, the fraction done and the extrapolated time."""
    progress = None
    if budget is not None and method in NEWER:
        from pipeline.storage import open_mapped as open_tensors

        shapes = {k: tuple(open_tensors(paths[0]).shape(k)) for k in open_tensors(paths[0])}
        progress = _Progress(list(shapes), time.process_time() + budget)
    if method in ("wudi", "dop"):
        _warm_up_adam()
    stopped = False
    with PeakMemory() as mem:
        start, cpu_start = time.perf_counter(), time.process_time()
        try:
            out = merge(method, paths, progress, quick)
        except _OverBudget:
            stopped, out = True, None
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    result = {"method": method, "T": len(paths), "seconds": seconds, "cpu_seconds": cpu, "peak_bytes": mem.used}
    if stopped:
        frac = _fraction_done(method, progress, shapes, len(paths))
        result.update(stopped=True, fraction=frac, estimate=seconds / frac if frac > 0 else math.nan,
                      cpu_estimate=cpu / frac if frac > 0 else math.nan)
    if method in ("running_magmax", "magmax", "naive_magmax"):
        result["digest"] = digest(out)
    return result


def bandwidth_case(paths: list[Path], threads: list[int], reps: int) -> dict:
    """One fold of an in-memory vector into an in-memory merge, against a copy of its bytes."""
    from pipeline.merging import RunningMagMax
    from pipeline.storage import read_tensors as load_tensors

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
        if "error" in r:
            rows.append([m, t, "failed", *["-"] * 6, NEEDS_ALL_T.get(m, "-"), INPUTS_HELD.get(m, "-"), "-", "-", ""])
            continue
        peak = r["peak_bytes"] / model_bytes
        vs_t = vs_m = "-"
        if t in naive:
            vs_t = f"{r['seconds'] / naive[t]['seconds']:.2f}"
            vs_m = f"{peak / (naive[t]['peak_bytes'] / model_bytes):.2f}"
        elif naive_pts_m:  # memory is deterministic (2T + 2 model sizes); times are too noisy to fit
            vs_m = f"~{peak / _fit(naive_pts_m, t):.2f}"
        secs = r.get("estimate", r["seconds"])
        cpu = r.get("cpu_estimate", r.get("cpu_seconds", math.nan))
        if r.get("stopped"):  # extrapolated time; memory up to the stop is a lower bound
            known = math.isfinite(secs)
            shown = [f"~{secs:.0f}" if known else f">{r['seconds']:.0f}",
                     f"~{cpu:.0f}" if known else f">{r['cpu_seconds']:.0f}", f"~{secs / t:.1f}" if known else "-", "-",
                     f"~{secs / copy_by_t[t]:.0f}" if known and t in copy_by_t else "-",
                     f">={r['peak_bytes'] / MB:.0f}", f">={peak:.2f}"]
        else:
            shown = [secs, cpu, secs / t, t * model_bytes / secs / 1e9,
                     secs / copy_by_t[t] if t in copy_by_t else math.nan, r["peak_bytes"] / MB, peak]
        rows.append([m, t, *shown, NEEDS_ALL_T.get(m, "-"), INPUTS_HELD.get(m, "-"), vs_t, vs_m,
                     r.get("digest", "")])
        summary[(m, t)] = r
    text = table(["method", "T", "s", "CPU s", "s / vector", "input GB/s", "x copy time", "peak MiB",
                  "peak / model size", "needs all T", "inputs held", "time vs naive", "memory vs naive",
                  "result digest"], rows)
    return text, summary


# --------------------------------------------------------------------------------------------
# main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny CLIP shapes, T = 2 3, in-process: a smoke test")
    ap.add_argument("--tasks", type=int, nargs="+", help="numbers of task vectors T (default 5 10 20 50)")
    ap.add_argument("--methods", nargs="+", choices=[*METHODS, "paper", "newer"], default=["paper", "newer"],
                    help="methods to run; 'paper' and 'newer' stand for their groups (default: both)")
    ap.add_argument("--case-budget", type=float, default=None, metavar="S",
                    help="stop a newer merge's case after S seconds and extrapolate its time (default "
                         f"{DEFAULT_CASE_BUDGET:.0f} at full size, none with --quick)")
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
            res = run_case(spec["method"], paths, spec.get("budget"))
        print(json.dumps(res))
        return 0

    methods = []
    for m in args.methods:
        for name in {"paper": PAPER, "newer": NEWER}.get(m, (m,)):
            if name not in methods:
                methods.append(name)
    args.methods = methods
    budget = args.case_budget if args.case_budget is not None else (None if args.quick else DEFAULT_CASE_BUDGET)

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
            return run_case(spec["method"], [Path(p) for p in spec["paths"]], spec.get("budget"), quick=True)
        # a stopped case overruns its budget by at most one tensor's work (a DOP matrix: minutes)
        limit = 1800 if spec.get("budget") is None else 3 * spec["budget"] + 900
        try:
            return run_child(Path(__file__), ["--threads", str(args.threads), "--child", json.dumps(spec)],
                             timeout=limit)
        except RuntimeError as err:
            if spec["method"] not in NEWER:
                raise
            # a newer merge that fails at this size is a finding to print, not a reason to stop
            last = [ln for ln in str(err).splitlines() if ln.strip()][-1]
            return {"method": spec["method"], "T": len(spec["paths"]), "error": last[:300]}

    try:
        bw_text = None
        if any(m in PAPER for m in args.methods):  # the fold-vs-copy case is about the paper's MagMax
            bw = case({"method": "bandwidth", "paths": [str(p) for p in paths[:2]],
                       "threads": args.bandwidth_threads, "reps": args.reps})
            bw_text, pct, pct_cpu = report_bandwidth(bw)
        results = []
        for t in tasks:
            for m in args.methods:
                if t > limits.get(m, t):
                    continue
                t0 = time.perf_counter()
                spec = {"method": m, "paths": [str(p) for p in paths[:t]]}
                if m in NEWER and budget is not None:
                    spec["budget"] = budget
                results.append(case(spec))
                r = results[-1]
                if "error" in r:
                    print(f"  {m:15s} T={t:<3d} FAILED: {r['error']}", file=sys.stderr, flush=True)
                    continue
                note = (f" (stopped: over budget at {100 * r['fraction']:.1f}%, ~{r['cpu_estimate']:.0f} CPU s "
                        "extrapolated)" if r.get("stopped") else "")
                print(f"  {m:15s} T={t:<3d} {time.perf_counter() - t0:6.1f} s wall, "
                      f"{r.get('cpu_seconds', math.nan):.1f} CPU s, peak {r['peak_bytes'] / model_bytes:.2f} "
                      f"model sizes{note}", file=sys.stderr, flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)

    copy_by_t = {r["T"]: r["seconds"] for r in results if r["method"] == "copy"}
    merge_text, summary = report_merges(results, model_bytes, copy_by_t)
    if bw_text is not None:
        print()
        print("## MagMax fold vs copy, in memory (min over repetitions)")
        print(bw_text)
    print()
    print(f"## Merging T task vectors from memory-mapped safetensors files (torch threads: {args.threads})")
    print(merge_text)
    print()
    print("## Targets")
    if bw_text is not None:
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
    for r in results:
        if "error" in r:
            print(f"* {r['method']}, T={r['T']}: FAILED -- {r['error']}")
        if r.get("stopped"):
            done = [q for q in results if q["method"] == r["method"] and not q.get("stopped") and "error" not in q]
            last = max(done, key=lambda q: q["T"]) if done else None
            ran = (f"; largest T that finished: T={last['T']}, {last['cpu_seconds']:.0f} CPU s, peak "
                   f"{last['peak_bytes'] / model_bytes:.2f} model sizes" if last else "; no T finished")
            print(f"* {r['method']}, T={r['T']}: NOT finished -- stopped at the {budget:.0f} CPU-s budget after "
                  f"{r['cpu_seconds']:.0f} CPU s ({r['seconds']:.0f} s wall) with {100 * r['fraction']:.1f}% of its "
                  "work done (by flop count); "
                  + (f"~{r['cpu_estimate']:.0f} CPU s (~{r['estimate']:.0f} s wall) extrapolated"
                     if r["fraction"] > 0 else "too little done to extrapolate")
                  + f"; peak >= {r['peak_bytes'] / model_bytes:.2f} "
                  f"model sizes up to the stop{ran}")
    newer_run = [m for m in args.methods if m in NEWER]
    if newer_run:
        if args.quick:
            print(f"* --quick: {QUICK_KWARGS} instead of the fixed step budgets (a smoke test only)")
        print("* newer merges' settings: " + "; ".join(
            f"{m} {NEWER_KWARGS[m] or 'defaults'}" for m in newer_run if m in NEWER_KWARGS)
              + (f"; lines: alpha 1/T, beta {LINES_BETA} on the task-arithmetic sum" if "lines" in newer_run else ""))
        print("* needs all T (all T whole vectors in memory at once): "
              + ", ".join(f"{m} {NEEDS_ALL_T[m]}" for m in args.methods))
    return 0


if __name__ == "__main__":
    sys.exit(main())
