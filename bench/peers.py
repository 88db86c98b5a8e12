"""Our merges against FusionBench's implementations of the same methods, in one run.

    pip install -e '.[peers]'        # in a separate environment: FusionBench pulls in lightning,
                                     # transformers, hydra, datasets, ... (not needed by the project)
    python bench/peers.py                      # ViT-B/16 image-tower shapes, T = 3
    python bench/peers.py --shapes tiny -T 4   # the demo's tiny CLIP shapes (seconds)

For each method both projects have, both implementations merge the same seeded random task
vectors (in memory, float32) and the table gives each one's time, peak memory (anonymous resident
memory above the level before the call, in model sizes) and the largest absolute difference
between the two results over all entries, next to the largest absolute entry of ours (the scale).

What is compared, with FusionBench's settings chosen to match ours (each row says it):
* MagMax: ``fusion_bench.method.magmax.magmax._magmax_select``; ours ``magmax``.
* TIES: ``ties_merging_utils.ties_merging`` on the flattened, stacked vectors, top 20 %,
  "dis-mean"; ours ``ties(top_k=0.2, entries="official")`` (its kthvalue keeps int(d*0.2)+1
  entries per task; our default "exact" keeps int(d*0.2), so one boundary entry per task differs).
* TSV-M: ``TSVM_utils.compute_and_sum_svd_mem_reduction``; ours ``tsv_merge``.
* Iso-C / Iso-CTS: ``isotropic_merging.iso_utils.iso_c`` / ``iso_cts(common_space_fraction=0.8)``.
* WUDI: ``wudi.wudi.wudi_merging`` (it optimises every 2-D entry as stored and averages the
  rest); ours ``wudi(matrices="all_2d", other="mean", input_major=())``, the same rule. Its
  autograd loss builds T (m x m) products per step, so at ViT-B/16 size on a CPU it is skipped
  unless ``--wudi`` is given (``--shapes tiny`` runs it).
* TALL/consensus: ``tall_mask.utils.generate_task_masks`` with the TA sum as the multi-task
  vector (its strict ">" against our ">=") and the k=2 consensus of those masks applied to the
  sum; ours ``consensus(k=2, lam_tall=0.4)``.
* DARE: ``dare.utils.param_random_drop_`` (then the sum), time and memory only: the two draw
  their random masks from different generators, so the results differ by design.
* OPCM and DOP: not run. FusionBench has them only as algorithm classes over a CLIP model pool
  (``OPCMForCLIP.run``, ``ContinualDOPForCLIP.run`` with a Lightning Fabric): the per-matrix
  steps read state that ``run`` sets from whole models (lambda_t, the fabric), so there is no
  tensor-level function to call on task vectors.

If FusionBench cannot be imported, the script prints the exact error and exits with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PeakMemory, add_threads_arg, machine, numel, table, tiny_clip_visual_shapes  # noqa: E402

import torch  # noqa: E402

os.environ.setdefault("TQDM_DISABLE", "1")  # FusionBench's progress bars

METHODS = ("magmax", "ties", "tsv_merge", "iso_c", "iso_cts", "wudi", "consensus", "dare_ta", "opcm", "dop")
LAM_TALL, CONSENSUS_K, DARE_P = 0.4, 2, 0.5


def import_fusion_bench() -> tuple[object | None, str]:
    """FusionBench's modules we call, or None and the exact reason they cannot be imported."""
    try:
        import fusion_bench  # noqa: F401
        from fusion_bench.method.dare import utils as dare_utils
        from fusion_bench.method.isotropic_merging import iso_utils
        from fusion_bench.method.magmax import magmax as magmax_mod
        from fusion_bench.method.tall_mask import utils as tall_utils
        from fusion_bench.method.task_singular_vector.utils import TSVM_utils
        from fusion_bench.method.ties_merging import ties_merging_utils
        from fusion_bench.method.wudi import wudi as wudi_mod
    except BaseException as err:  # noqa: BLE001 - any failure is the answer, printed as it is
        return None, "".join(traceback.format_exception_only(type(err), err)).strip()
    version = getattr(sys.modules["fusion_bench"], "__version__", None)
    if version is None:
        from importlib.metadata import version as _v

        version = _v("fusion-bench")
    mods = argparse.Namespace(dare=dare_utils, iso=iso_utils, magmax=magmax_mod, tall=tall_utils,
                              tsvm=TSVM_utils, ties=ties_merging_utils, wudi=wudi_mod)
    return mods, str(version)


def make_task_vectors(shapes: dict[str, tuple[int, ...]], n: int) -> list[dict[str, torch.Tensor]]:
    out = []
    for i in range(n):
        gen = torch.Generator().manual_seed(100 + i)
        out.append({k: torch.randn(s, generator=gen) * (0.01 * (1 + 0.1 * i)) for k, s in shapes.items()})
    return out


# --------------------------------------------------------------------------------------------
# FusionBench's side, called on plain task-vector dicts


def _flatten(tv: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tv.values()])


def _unflatten(flat: torch.Tensor, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, pos = {}, 0
    for k, t in like.items():
        out[k] = flat[pos:pos + t.numel()].view(t.shape)
        pos += t.numel()
    return out


def fb_ties(fb, tvs):
    stacked = torch.stack([_flatten(tv) for tv in tvs])
    return _unflatten(fb.ties.ties_merging(stacked, reset_thresh=20, merge_func="dis-mean"), tvs[0])


def fb_consensus(fb, tvs):
    stacked = torch.stack([_flatten(tv) for tv in tvs])
    total = stacked.sum(0)
    zero = torch.zeros_like(total)  # theta_0 = 0, so theta_t = tau_t
    masks = fb.tall.generate_task_masks(stacked, stacked, zero, tv=total, tall_mask_lambda=LAM_TALL)
    consensus = masks.sum(0) >= CONSENSUS_K
    return _unflatten(total * consensus, tvs[0])


def fb_dare(fb, tvs):
    out = {k: torch.zeros_like(t) for k, t in tvs[0].items()}
    for tv in tvs:
        for k, t in tv.items():
            p = t.clone()
            fb.dare.param_random_drop_(p, DARE_P, rescale=True)
            out[k] += p
    return out


def theirs(name: str) -> Callable:
    return {
        "magmax": lambda fb, tvs: fb.magmax._magmax_select(tvs),
        "ties": fb_ties,
        "tsv_merge": lambda fb, tvs: fb.tsvm.compute_and_sum_svd_mem_reduction(tvs, accelerator="cpu"),
        "iso_c": lambda fb, tvs: fb.iso.iso_c(tvs, accelerator="cpu"),
        "iso_cts": lambda fb, tvs: fb.iso.iso_cts(tvs, common_space_fraction=0.8, accelerator="cpu"),
        "wudi": lambda fb, tvs: fb.wudi.wudi_merging(tvs, accelerator="cpu", iter_num=300),
        "consensus": fb_consensus,
        "dare_ta": fb_dare,
    }[name]


def ours(name: str) -> Callable:
    from pipeline import merging

    return {
        "magmax": lambda tvs: merging.magmax(tvs),
        "ties": lambda tvs: merging.ties(tvs, top_k=0.2, entries="official"),
        "tsv_merge": lambda tvs: merging.tsv_merge(tvs),
        "iso_c": lambda tvs: merging.iso_c(tvs),
        "iso_cts": lambda tvs: merging.iso_cts(tvs, common_space_fraction=0.8),
        "wudi": lambda tvs: merging.wudi(tvs, matrices="all_2d", other="mean", input_major=()),
        "consensus": lambda tvs: merging.consensus(tvs, k=CONSENSUS_K, lam_tall=LAM_TALL),
        "dare_ta": lambda tvs: merging.dare(tvs, p=DARE_P, seed=0),
    }[name]


NOT_RUN = {
    "opcm": "FusionBench has OPCM only as OPCMForCLIP.run over a CLIP model pool (lambda_t and the "
            "norms come from whole models; no tensor-level function)",
    "dop": "FusionBench has DOP only as ContinualDOPForCLIP.run over a CLIP model pool with a "
           "Lightning Fabric (no tensor-level function)",
}


def measure(fn: Callable[[], dict]) -> tuple[dict | None, float, int, str]:
    gc.collect()
    err = ""
    with PeakMemory() as mem:
        start = time.perf_counter()
        try:
            out = fn()
        except Exception as e:  # noqa: BLE001 - reported in the table
            out, err = None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        seconds = time.perf_counter() - start
    if out is not None:
        out = {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in out.items()}
    return out, seconds, mem.used, err


def max_diff(a: dict, b: dict) -> tuple[float, float, int]:
    """(max |a - b|, max |a|, #entries where |a - b| > 1e-4 max |a|)."""
    diff = scale = 0.0
    for k, t in a.items():
        u = torch.as_tensor(b[k]).to(t.dtype)
        diff = max(diff, float((t - u).abs().max()))
        scale = max(scale, float(t.abs().max()))
    far = sum(int(((t - torch.as_tensor(b[k]).to(t.dtype)).abs() > 1e-4 * scale).sum()) for k, t in a.items())
    return diff, scale, far


def warm_up(fb, names: list[str]) -> None:
    """Each implementation once on two tiny vectors: first calls compile (numba) or import
    (torch's optimiser stack) things that are not part of a merge."""
    small = [{"transformer.resblocks.0.mlp.c_fc.weight": torch.randn(8, 4, generator=torch.Generator().manual_seed(i)),
              "transformer.resblocks.0.mlp.c_fc.bias": torch.randn(8, generator=torch.Generator().manual_seed(9 + i))}
             for i in range(2)]
    for name in names:
        if name in NOT_RUN:
            continue
        ours(name)(small)
        with contextlib.redirect_stdout(io.StringIO()):
            theirs(name)(fb, [dict(tv) for tv in small])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", choices=("vitb16", "tiny"), default="vitb16")
    ap.add_argument("-T", "--tasks", type=int, default=3)
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--wudi", action="store_true", help="run FusionBench's WUDI at ViT-B/16 size too (hours on a CPU)")
    add_threads_arg(ap)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    fb, version = import_fusion_bench()
    if fb is None:
        print(f"FusionBench cannot be imported in this environment ({sys.executable}):\n  {version}\n"
              "Install the optional extra in a separate environment: pip install -e '.[peers]'", file=sys.stderr)
        return 2
    if args.shapes == "tiny":
        shapes = tiny_clip_visual_shapes()
    else:
        from pipeline.models import visual_shapes

        shapes = visual_shapes("ViT-B-16")
    model_bytes = 4 * numel(shapes)
    print(f"# bench/peers.py on {machine()}")
    print(f"FusionBench {version}; shapes: {args.shapes} ({len(shapes)} tensors, {numel(shapes) / 1e6:.1f}M "
          f"float32 entries, one model size = {model_bytes / 1e6:.1f} MB); T = {args.tasks}; in-process, inputs in memory")
    warm_up(fb, args.methods)
    tvs = make_task_vectors(shapes, args.tasks)
    rows = []
    for name in args.methods:
        if name in NOT_RUN:
            rows.append([name, "-", "-", "-", "-", "-", "-", "-", "not run: " + NOT_RUN[name]])
            continue
        if name == "wudi" and args.shapes == "vitb16" and not args.wudi:
            rows.append([name, "-", "-", "-", "-", "-", "-", "-", "skipped at ViT-B/16 size: FusionBench's autograd loss "
                         "takes T (m x m) products per step, 300 steps per matrix (hours on a CPU); --wudi runs it"])
            continue
        o, o_s, o_mem, o_err = measure(lambda: ours(name)(tvs))
        with contextlib.redirect_stdout(io.StringIO()):  # FusionBench prints a line per key
            t, t_s, t_mem, t_err = measure(lambda: theirs(name)(fb, [dict(tv) for tv in tvs]))
        note = o_err or t_err
        if o is not None and t is not None:
            d, scale, far = max_diff(o, t)
            if name == "dare_ta":
                note = "different random masks by design: the difference is not a check"
            diff, scale_s, far_s = f"{d:.3g}", f"{scale:.3g}", str(far)
        else:
            diff = scale_s = far_s = "-"
        rows.append([name, o_s, t_s, o_mem / model_bytes, t_mem / model_bytes, diff, scale_s, far_s, note])
        del o, t
        print(f"  {name:10s} ours {o_s:7.2f} s  FusionBench {t_s:7.2f} s", file=sys.stderr, flush=True)
    print()
    print(table(["method", "ours s", "FusionBench s", "ours peak / model size", "FusionBench peak / model size",
                 "max |ours - FusionBench|", "max |ours|", "entries differing (> 1e-4 max |ours|)", "note"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
