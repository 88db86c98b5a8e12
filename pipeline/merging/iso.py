"""Isotropic merging (Marczak et al., ICML 2025, "No Task Left Behind: Isotropic Model Merging
with Common and Task-Specific Subspaces"): Iso-C flattens the singular value spectrum of the
task-arithmetic sum of each weight matrix; Iso-CTS first swaps the sum's least significant
directions for each task's own top directions outside the common subspace.

Facts (steps, defaults, non-matrix rule) from the paper and the official code,
danielm1405/iso-merging ``src/utils/iso.py`` and ``config/method/iso_c*.yaml``. No Ray, no
open_clip, no files.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from pipeline.merging.vectors import TaskVector, _as_list, _validate
from pipeline.merging.tsv import check_fraction, load_matrix, merge_entries, orthogonal_factor, svd

__all__ = ["iso_c", "iso_cts", "iso_cts_split"]

def _sum_matrix(tvs: list[Mapping[str, torch.Tensor]], key: str, dtype: torch.dtype) -> torch.Tensor:
    acc = load_matrix(tvs[0], key, 0, dtype).clone()
    for i, tv in enumerate(tvs[1:], start=1):
        acc += load_matrix(tv, key, i, dtype)
    return acc


def _flat_spectrum(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor) -> torch.Tensor:
    """``U diag(s) V^T`` with every singular value replaced by their mean (Iso-C's isotropy)."""
    return (u @ vh) * s.mean()


@torch.no_grad()
def iso_c(tvs: Sequence[Mapping[str, torch.Tensor]]) -> TaskVector:
    """Iso-C: merged task vector ``M`` (the caller forms ``theta0 + lam * M``).

    For each matrix entry (2-D, not ``text_projection``; see ``tsv.is_matrix``): the
    task-arithmetic sum ``Delta = sum_i tau_i``, its thin SVD ``Delta = U diag(s) V^T``, and
    ``M = mean(s) * U V^T`` -- the same singular vectors with an isotropic spectrum, the mean
    taken over all r = min(m, n) singular values. Every other entry is the mean over tasks
    (the official code averages them; only matrices are summed).

    One task with singular values (3, 1) gives singular values (2, 2). If ``Delta`` is rank
    deficient its null-space singular vectors are not unique and neither is ``M`` (they get the
    weight mean(s) too); real task matrices have full rank.

    λ: the paper applies ``theta0 + alpha * M``; the official code (``evaluate_task_vector``)
    picks alpha on validation data from {0.1, 0.2, ..., 3.0}, FusionBench's default
    ``scaling_factor`` is 1.0. Without a validation sweep use lam = 1.0.

    Numerics and memory as ``tsv_merge``: float32 SVD (float64 for float64 inputs), input dtype
    returned; peak is the output plus the sum and its SVD for one layer.
    """
    tvs = _as_list(tvs)
    keys = _validate(tvs)
    return merge_entries(tvs, keys, lambda key, ref, dtype: _flat_spectrum(*svd(_sum_matrix(tvs, key, dtype), key)))


def iso_cts_split(r: int, n_tasks: int, common_space_fraction: float) -> tuple[int, int]:
    """(k_common, k_task): sizes of the common subspace and of each task's subspace for a
    matrix with r = min(m, n), so that k_common + n_tasks * k_task == r.

    As the official code: k_common = floor(r * fraction) (product rounded to 9 decimals first,
    so 90 * 0.7 gives 63 where the code's ``int()`` gives 62; no difference at the default 0.8
    for r in {197, 512, 768}), then k_task = round((r - k_common) / T) with Python's round
    (half to even) and k_common = r - T * k_task, so the task part divides evenly. Where that
    rounding would overshoot r (small fraction, T > 2 * k_common; the official code then slices
    with a negative index), k_task is capped at r // T.

    ViT-B/16 with the default 0.8: r = 768, T = 8 -> (616, 19); T = 3 -> (615, 51).
    """
    k_common = math.floor(round(r * common_space_fraction, 9))
    k_task = min(round((r - k_common) / n_tasks), r // n_tasks)
    return r - n_tasks * k_task, k_task


@torch.no_grad()
def iso_cts(tvs: Sequence[Mapping[str, torch.Tensor]], *, common_space_fraction: float = 0.8) -> TaskVector:
    """Iso-CTS: merged task vector ``M`` (the caller forms ``theta0 + lam * M``).

    For each matrix entry (m x n, r = min(m, n); ``k_c, k = iso_cts_split(r, T, fraction)``):

    1. common subspace: thin SVD of the sum ``Delta = sum_i tau_i = U diag(s) V^T``; keep
       ``U_c = U[:, :k_c]``, ``s[:k_c]``, ``V_c = V[:, :k_c]``;
    2. task-specific: per task, the residual ``tau_i - U_c U_c^T tau_i`` (left projection out
       of the common subspace), its thin SVD, top k components ``U_i, s_i, V_i``;
    3. concatenate ``U = [U_1 .. U_T, U_c]`` (m x r), ``s`` likewise (r values), ``V``
       likewise (n x r), and orthogonalise U and V by their polar factors ``P Q^T`` (as
       ``tsv_merge``);
    4. isotropic scaling: ``M = mean(s) * U_perp V_perp^T`` (the mean over all r values, the
       common ones from the sum and the task ones from the residuals, as in the official code).

    Every other entry is the mean over tasks (official code). ``common_space_fraction`` in
    [0, 1], default 0.8 (paper and official config); 1.0 (or any split leaving k = 0) is Iso-C,
    and so is T = 1 (the residual then holds exactly the sum's remaining directions).

    λ: the paper applies ``theta0 + alpha * M``; the official code (``evaluate_task_vector``)
    picks alpha on validation data from {0.1, 0.2, ..., 3.0}, FusionBench's default
    ``scaling_factor`` is 1.0. Without a validation sweep use lam = 1.0.

    Numerics as ``tsv_merge``. Memory: the output plus about four one-layer matrices (the sum's
    SVD, the concatenated U and V, one residual and its SVD); inputs are read per task.
    """
    tvs = _as_list(tvs)
    keys = _validate(tvs)
    check_fraction("common_space_fraction", common_space_fraction, allow_zero=True)
    n_tasks = len(tvs)

    def merge_matrix(key: str, ref: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        m, n = ref.shape
        r = min(m, n)
        k_common, k = iso_cts_split(r, n_tasks, common_space_fraction)
        u, s, vh = svd(_sum_matrix(tvs, key, dtype), key)
        if k == 0:  # no task-specific part: Iso-C (the polar factor of an orthonormal U is U)
            return _flat_spectrum(u, s, vh)
        u_c = u[:, :k_common]
        u_all = torch.empty((m, r), dtype=dtype, device=ref.device)
        s_all = torch.empty((r,), dtype=dtype, device=ref.device)
        vh_all = torch.empty((r, n), dtype=dtype, device=ref.device)
        for i, tv in enumerate(tvs):
            w = load_matrix(tv, key, i, dtype)
            residual = w - u_c @ (u_c.T @ w)
            del w
            u_i, s_i, vh_i = svd(residual, key)
            del residual
            rows = slice(i * k, (i + 1) * k)
            u_all[:, rows] = u_i[:, :k]
            s_all[rows] = s_i[:k]
            vh_all[rows, :] = vh_i[:k, :]
            del u_i, s_i, vh_i
        common = slice(n_tasks * k, r)
        u_all[:, common] = u_c
        s_all[common] = s[:k_common]
        vh_all[common, :] = vh[:k_common, :]
        del u, s, vh, u_c
        u_perp = orthogonal_factor(u_all, key)
        del u_all
        vh_perp = orthogonal_factor(vh_all, key)
        del vh_all
        return (u_perp @ vh_perp) * s_all.mean()

    return merge_entries(tvs, keys, merge_matrix)
