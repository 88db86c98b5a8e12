"""TSV-Merge (Gargiulo et al., CVPR 2025, "Task Singular Vectors: Reducing Task Interference in
Model Merging"): per weight matrix, keep each task's top singular components, then replace the
concatenated singular vectors by the nearest matrices with orthonormal columns (rows), so the
tasks' directions no longer interfere, and reconstruct.

Also holds the small SVD helpers that ``iso.py`` shares (matrix rule, SVD with the key in its
errors, the orthogonal polar factor). No Ray, no open_clip, no files.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch

from pipeline.merging.vectors import TaskVector, _as_list, _validate

__all__ = ["tsv_merge", "tsv_rank"]

# The official code (and the Iso-merging code built on it) exempts CLIP's text projection from
# the matrix rule; image-tower task vectors do not contain it, but the rule is kept so the
# functions behave like the reference on whole-model vectors too.
_NOT_MATRIX = ("text_projection",)


def is_matrix(key: str, t: torch.Tensor) -> bool:
    """Whether an entry gets the SVD treatment: every 2-D entry (attention/MLP weights, ``proj``
    and ``positional_embedding`` included) except keys containing ``text_projection``."""
    return t.dim() == 2 and not any(s in key for s in _NOT_MATRIX)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # SVD needs float32 at least (no half kernels, and half would lose the small components);
    # float64 inputs stay float64 (tiny exact tests).
    return torch.promote_types(dtype, torch.float32)


def load_matrix(tv: Mapping[str, torch.Tensor], key: str, idx: int, dtype: torch.dtype) -> torch.Tensor:
    """Task ``idx``'s entry ``key`` in ``dtype``; ValueError naming both if it is not finite
    (an SVD of NaN/inf either fails deep in LAPACK or returns garbage)."""
    w = tv[key].detach().to(dtype)
    if not bool(torch.isfinite(w).all()):
        raise ValueError(f"task vector {idx} entry {key!r} has non-finite values: cannot take its SVD")
    return w


def svd(a: torch.Tensor, key: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD ``a = U diag(S) Vh`` (``torch.linalg.svd(full_matrices=False)``), naming the key
    if LAPACK/cuSOLVER fails to converge."""
    try:
        if a.shape[0] < a.shape[1] and a.device.type == "cpu":
            # a wide matrix through its tall transpose: the same decomposition, and torch's CPU
            # SVD of a 768 x 3072 matrix takes about twice as long as of its transpose
            try:
                v, s, uh = torch.linalg.svd(a.T, full_matrices=False)
                return uh.T, s, v.T
            except RuntimeError:
                # LAPACK's divide-and-conquer can fail to converge on a rank-deficient transpose
                # (Iso-CTS's residual at ViT-B/16 size) where the matrix as it is converges
                pass
        try:
            return torch.linalg.svd(a, full_matrices=False)
        except RuntimeError:
            if a.dtype == torch.float64:
                raise
            # the last resort: float64, cast back (same subspaces, more accurate)
            u, s, vh = torch.linalg.svd(a.double(), full_matrices=False)
            return u.to(a.dtype), s.to(a.dtype), vh.to(a.dtype)
    except RuntimeError as err:  # torch.linalg.LinAlgError is a RuntimeError
        raise ValueError(f"SVD failed for entry {key!r} of shape {tuple(a.shape)}: {err}") from err


def orthogonal_factor(a: torch.Tensor, key: str) -> torch.Tensor:
    """The polar factor ``P Q^T`` of ``a = P Sigma Q^T``: of all matrices with orthonormal columns
    (rows, if ``a`` is wide), the one nearest to ``a`` in Frobenius norm. It is what both papers'
    code uses to "orthogonalise" concatenated singular vectors. Unique when ``a`` has full rank;
    columns that are exactly dependent (e.g. two tasks sharing a singular vector) leave it
    undetermined in the missing directions."""
    p, _, qh = svd(a, key)
    return p @ qh


def mean_entry(tvs: list[Mapping[str, torch.Tensor]], key: str, dtype: torch.dtype) -> torch.Tensor:
    acc = tvs[0][key].detach().to(dtype, copy=True)
    for tv in tvs[1:]:
        acc += tv[key].detach().to(dtype)
    return acc.div_(len(tvs))


def merge_entries(tvs: list[Mapping[str, torch.Tensor]], keys: list[str],
                  merge_matrix: Callable[[str, torch.Tensor, torch.dtype], torch.Tensor]) -> TaskVector:
    """Each matrix entry (``is_matrix``) by ``merge_matrix(key, ref, dtype)``, computed in
    ``compute_dtype``; every other entry the mean of the tasks'. Returned in the input dtype."""
    out: TaskVector = {}
    for key in keys:
        ref = tvs[0][key]
        dtype = compute_dtype(ref.dtype)
        merged = merge_matrix(key, ref, dtype) if is_matrix(key, ref) else mean_entry(tvs, key, dtype)
        out[key] = merged.to(ref.dtype)
    return out


def tsv_rank(r: int, n_tasks: int, rank_fraction: float | None = None) -> int:
    """Components kept per task for a matrix of rank bound ``r = min(rows, cols)``.

    ``rank_fraction=None`` is the paper's default 1/T: ``r // T`` exactly (the official code's
    ``int(r * (1 / T))`` agrees except where the float product lands just below an integer,
    e.g. r=49, T=49 -> 0 there). Otherwise ``floor(r * rank_fraction)``, with the product
    rounded to 9 decimals first so that e.g. 90 * 0.7 gives 63, not 62.
    """
    if rank_fraction is None:
        return r // n_tasks
    return math.floor(round(r * rank_fraction, 9))


def check_fraction(name: str, value: float | None, *, allow_zero: bool, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (0.0 <= value <= 1.0) if allow_zero else (0.0 < value <= 1.0)
    if not ok:
        interval = "[0, 1]" if allow_zero else "(0, 1]"
        raise ValueError(f"{name} must be a number in {interval}{' or None' if allow_none else ''}, got {value!r}")


@torch.no_grad()
def tsv_merge(tvs: Sequence[Mapping[str, torch.Tensor]], *, rank_fraction: float | None = None) -> TaskVector:
    """TSV-M: merged task vector ``M`` (the caller forms ``theta0 + lam * M``).

    For each matrix entry (``is_matrix``: 2-D, not ``text_projection``) of shape m x n,
    r = min(m, n), k = ``tsv_rank(r, T, rank_fraction)`` (default r // T):

    1. per task i: thin SVD ``tau_i = U_i diag(s_i) V_i^T``; keep the top k components;
    2. concatenate ``U = [U_1[:, :k] .. U_T[:, :k]]`` (m x Tk), ``S = [s_1[:k] .. s_T[:k]]``,
       ``V = [V_1[:, :k] .. V_T[:, :k]]`` (n x Tk) (the official code pads U and V with zero
       columns up to r; the zero columns meet zero singular values, so where the kept vectors
       are linearly independent the result is the same);
    3. orthogonalise: ``U_perp = P_U Q_U^T`` from the SVD ``U = P_U Sigma_U Q_U^T`` (the nearest
       matrix with orthonormal columns), likewise ``V_perp``;
    4. ``M = U_perp diag(S) V_perp^T``.

    Every other entry (biases, LayerNorm, ``class_embedding``, 4-D ``conv1.weight``) is the mean
    over tasks, as in the official code (``compute_and_sum_svd_mem_reduction``). k = 0 (more
    tasks than r, only for tiny matrices) gives a zero matrix, as the official code does.
    Orthogonal tasks (disjoint row and column spaces, each of rank <= k) merge to their sum;
    T = 1 returns the task vector itself (up to rounding).

    λ: the paper applies ``theta0 + alpha * M``. The official code (AntoAndGar/
    task_singular_vectors and danielm1405/iso-merging, ``evaluate_task_vector``) picks alpha on
    validation data from {0.1, 0.2, ..., 3.0}; FusionBench's default is alpha = 1.0. Without a
    validation sweep use lam = 1.0.

    ``rank_fraction``: kept fraction of r per task, in (0, 1]; None = 1/T (the paper's
    default). A fraction above 1/T makes U wider than Tk <= r would; the polar factor is then
    the nearest matrix with orthonormal rows.

    Numerics: SVDs in float32 for half/bfloat16/float32 inputs and in float64 for float64; the
    result has the input dtype and device. Singular-vector signs do not matter (a sign flip of
    a (u, v) pair flips the same column of U and V, which the polar factors carry through).
    Memory: the output (one model size) plus a few matrices of one layer's size (U, V, one
    task's SVD, the polar SVDs); inputs are read one task and one entry at a time.
    """
    tvs = _as_list(tvs)
    keys = _validate(tvs)
    check_fraction("rank_fraction", rank_fraction, allow_zero=False, allow_none=True)
    n_tasks = len(tvs)

    def merge_matrix(key: str, ref: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        m, n = ref.shape
        k = tsv_rank(min(m, n), n_tasks, rank_fraction)
        if k == 0:
            for i, tv in enumerate(tvs):
                load_matrix(tv, key, i, dtype)  # same input checks as the general path
            return torch.zeros(ref.shape, dtype=ref.dtype, device=ref.device)
        u_cat = torch.empty((m, n_tasks * k), dtype=dtype, device=ref.device)
        s_cat = torch.empty((n_tasks * k,), dtype=dtype, device=ref.device)
        vh_cat = torch.empty((n_tasks * k, n), dtype=dtype, device=ref.device)
        for i, tv in enumerate(tvs):
            u, s, vh = svd(load_matrix(tv, key, i, dtype), key)
            cols = slice(i * k, (i + 1) * k)
            u_cat[:, cols] = u[:, :k]
            s_cat[cols] = s[:k]
            vh_cat[cols, :] = vh[:k, :]
            del u, s, vh
        u_perp = orthogonal_factor(u_cat, key)
        del u_cat
        vh_perp = orthogonal_factor(vh_cat, key)  # rows orthonormal: V_perp^T directly
        del vh_cat
        return (u_perp * s_cat) @ vh_perp

    return merge_entries(tvs, keys, merge_matrix)
