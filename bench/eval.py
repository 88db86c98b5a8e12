"""Evaluation benchmark: throughput of a method x lambda sweep, and where its time goes.

    .venv/bin/python bench/eval.py            # tiny CLIP, demo test set (10 images x 100 classes), ~3 min
    .venv/bin/python bench/eval.py --quick    # seconds

One sweep trial is what a Tune trial of the pipeline does: ``apply_task_vector(theta0, tau, lam)``
then ``pipeline.evaluation.Evaluator`` (load the weights into the image tower, forward the whole test
set, top-1 over all classes). Merged vectors are computed once per method, as the runner does,
and timed separately. Sweeps of growing size (methods x lambdas) show that the cost is a fixed
part plus a constant cost per trial, and how that cost splits into applying the vector and the
forward pass. Task vectors are seeded perturbations of theta0 (accuracy is not the point here).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, add_threads_arg, machine, table  # noqa: E402

import torch  # noqa: E402

METHODS = ("magmax", "ties", "random_mix", "average")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a few test images, small sweeps: a smoke test")
    ap.add_argument("--test-per-class", type=int, help="test images per class (default 10; quick 1)")
    ap.add_argument("--tasks", type=int, default=5, help="task vectors merged")
    ap.add_argument("--sweeps", nargs="+", metavar="METHODSxLAMBDAS",
                    help="sweep sizes, e.g. 1x1 1x4 (default 1x1 1x4 1x16 2x16 4x16; quick 1x1 1x2)")
    add_threads_arg(ap)
    args = ap.parse_args(argv)
    sweeps = [tuple(int(v) for v in item.lower().split("x")) for item in
              (args.sweeps or (["1x1", "1x2"] if args.quick else ["1x1", "1x4", "1x16", "2x16", "4x16"]))]
    if any(len(sw) != 2 or not 1 <= sw[0] <= len(METHODS) or sw[1] < 1 for sw in sweeps):
        ap.error(f"--sweeps takes METHODSxLAMBDAS with 1 <= METHODS <= {len(METHODS)}")
    per_class = args.test_per_class or (1 if args.quick else 10)
    torch.set_num_threads(args.threads)
    print(f"# bench/eval.py {' '.join(sys.argv[1:] if argv is None else argv)} on {machine()}")

    from pipeline import merging
    from pipeline.config import load_config
    from pipeline.data.demo_world import write_image_folder
    from pipeline.scenario import build_scenario
    from pipeline.evaluation import Evaluator

    work = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    try:
        write_image_folder(work / "demo_shapes", train_per_class=1, test_per_class=per_class, seed=0)
        cfg = load_config(ROOT / "configs" / "demo.yaml", [f"data_root={work}", "demo_data=false",
                                                          f"scenarios.0.tasks={args.tasks}"])
        start = time.perf_counter()
        ev = Evaluator(build_scenario(cfg, cfg.scenarios[0]))
        setup = time.perf_counter() - start
        n_images = len(ev.labels)
        theta0 = ev.scn.theta0
        gen = torch.Generator().manual_seed(0)
        tvs = [{k: torch.randn(v.shape, generator=gen) * 1e-3 for k, v in theta0.items()} for _ in range(args.tasks)]
        merged, merge_s = {}, {}
        for name in METHODS[: max(m for m, _ in sweeps)]:
            kwargs = {"random_mix": {"seed": 0}, "ties": {"top_k": 0.2}}.get(name, {})
            start = time.perf_counter()
            merged[name] = merging.MERGE_FUNCTIONS[name](tvs, **kwargs)
            merge_s[name] = time.perf_counter() - start
        ev(theta0)  # warm-up: first forward allocates

        rows, points, apply_total, eval_total, trials_total = [], [], 0.0, 0.0, 0
        for m, n_lam in sweeps:
            lams = [round(0.05 + 0.95 * i / max(1, n_lam - 1), 3) for i in range(n_lam)]
            apply_s = eval_s = 0.0
            for name in METHODS[:m]:
                for lam in lams:
                    t0 = time.perf_counter()
                    state = merging.apply_task_vector(theta0, merged[name], lam)
                    t1 = time.perf_counter()
                    ev(state)
                    t2 = time.perf_counter()
                    apply_s += t1 - t0
                    eval_s += t2 - t1
            trials = m * n_lam
            total = apply_s + eval_s
            points.append((trials, total))
            apply_total, eval_total, trials_total = apply_total + apply_s, eval_total + eval_s, trials_total + trials
            rows.append([m, n_lam, trials, total, total / trials, trials * n_images / total, 100 * apply_s / total])
        slope, intercept, r2 = _line(points)
        print(f"test set: {n_images} images ({per_class} per class), tiny CLIP image tower; "
              f"setup (backbone, head, decoding the test set): {setup:.1f} s")
        print()
        print("## Sweep cost by size (each trial: apply the merged vector at one lambda, evaluate)")
        print(table(["methods", "lambdas", "trials", "s", "s / trial", "images / s", "% in apply"], rows))
        print()
        print(f"fit: total s = {intercept:.3f} + {slope:.4f} x trials (R^2 = {r2:.4f}) -- linear in trials, "
              f"no fixed cost per sweep beyond the setup above")
        print(f"per trial: apply {1e3 * apply_total / trials_total:.1f} ms + evaluate "
              f"{1e3 * eval_total / trials_total:.1f} ms ({n_images} images, "
              f"{n_images * trials_total / eval_total:.0f} images/s in the forward pass)")
        print("merge, once per method (T=%d): %s" % (args.tasks, ", ".join(
            f"{k} {1e3 * v:.0f} ms" for k, v in merge_s.items())))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _line(points: list[tuple[int, float]]) -> tuple[float, float, float]:
    """Least-squares slope, intercept and R^2."""
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    sxx = sum((p[0] - mx) ** 2 for p in points) or 1.0
    slope = sum((p[0] - mx) * (p[1] - my) for p in points) / sxx
    intercept = my - slope * mx
    ss_tot = sum((p[1] - my) ** 2 for p in points) or 1.0
    ss_res = sum((p[1] - intercept - slope * p[0]) ** 2 for p in points)
    return slope, intercept, 1 - ss_res / ss_tot


if __name__ == "__main__":
    sys.exit(main())
