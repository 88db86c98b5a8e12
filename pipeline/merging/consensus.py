"""Consensus merging (Wang et al., ICML 2024, "Localizing Task Information for Improved Model
Merging and Compression"): keep only the entries of a multi-task vector that at least ``k`` tasks'
TALL masks claim.

1. Multi-task vector tau_MTL: Task Arithmetic's sum of the task vectors (``base="ta"``, the
   default) or the TIES merge (``base="ties"``).
2. TALL mask of task t: m_t = 1{ |tau_t| >= lam_t * |tau_MTL - tau_t| } -- entry by entry, "tau_t
   matters more to task t than the rest of the merge does" (|theta_0 - theta_t| against
   |theta_MTL - theta_t| with theta_MTL = theta_0 + tau_MTL, unscaled).
3. Consensus mask: entries where sum_t m_t >= k; result tau_MTL * consensus mask.
   k=2 drops "selfish" (one task) and "catastrophic" (no task) weights; k=1 only catastrophic
   ones; k=0 gives the base merge back; k > T gives 0.

Facts, and where they come from:
  * paper, Sec. 3-4: the TALL-mask rule, the consensus threshold k (k=2 in the experiments) and
    that consensus applies to TA and to TIES.
  * official code (github nik-dim/tall_masks, src/utils/tallmask_utils.py
    ``generate_task_masks``/``construct_consensus_mask``, src/eval/aggregation.py): the masks
    are built over every entry of the flattened state dict (no special case for 1-D tensors,
    followed here); lam_t is chosen per task on validation from {0.2, 0.3, 0.4, 0.5, 0.6}
    (``lam_tall`` here takes one value or one per task); the code compares with a strict ">"
    where the paper writes ">=" -- they differ only where both sides are equal (e.g. tau_t = 0 =
    tau_MTL - tau_t, where tau_MTL = 0 anyway); the paper's ">=" is used. With TIES the code
    builds tau_MTL with a disjoint SUM ("dis-sum", top-20 %); ``base="ties"`` here calls
    ``pipeline.merging.ties`` as it is (disjoint mean, the MagMax paper's TIES), so that variant
    is "consensus over this project's TIES", not the code's dis-sum.
  * lambda on top: the base method's scaling coefficient, tuned on validation (TA's alpha).

Memory: the result (one model) plus per-tensor temporaries; with ``base="ties"`` also what
``ties`` holds while it runs. Independent of T otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from pipeline.merging.ties_merging import ties
from pipeline.merging.vectors import TaskVector, _acc_dtype, _as_list, _validate

__all__ = ["consensus", "tall_mask", "CONSENSUS_BASES"]

CONSENSUS_BASES = ("ta", "ties")


def _check_lam(lam: float, what: str) -> float:
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam < 0:
        raise ValueError(f"consensus: {what} must be a finite number >= 0, got {lam!r}")
    return float(lam)


def _lams(lam_tall: float | Sequence[float], n: int) -> list[float]:
    if isinstance(lam_tall, Sequence) and not isinstance(lam_tall, str):
        if len(lam_tall) != n:
            raise ValueError(f"consensus: lam_tall has {len(lam_tall)} values for {n} task vectors")
        return [_check_lam(v, f"lam_tall[{i}]") for i, v in enumerate(lam_tall)]
    return [_check_lam(lam_tall, "lam_tall")] * n  # type: ignore[arg-type]


@torch.no_grad()
def tall_mask(tau_t: torch.Tensor, tau_mtl: torch.Tensor, lam: float) -> torch.Tensor:
    """TALL mask of one tensor of task t: ``|tau_t| >= lam * |tau_mtl - tau_t|`` (bool, computed in
    float32, or float64 for float64 inputs)."""
    lam = _check_lam(lam, "lam")
    dtype = _acc_dtype(torch.promote_types(tau_t.dtype, tau_mtl.dtype))
    a, m = tau_t.detach().to(dtype), tau_mtl.detach().to(dtype)
    return a.abs() >= (m - a).abs() * lam


@torch.no_grad()
def consensus(
    tvs: Sequence[Mapping[str, torch.Tensor]],
    *,
    k: int = 2,
    lam_tall: float | Sequence[float],
    base: str = "ta",
    ties_kwargs: Mapping[str, Any] | None = None,
) -> TaskVector:
    """Consensus merge: ``tau_MTL * 1{#tasks whose TALL mask holds the entry >= k}``.

    ``lam_tall``: the TALL masks' lambda, one for all tasks or one per task (the paper picks each
    from {0.2, ..., 0.6} on that task's validation set). ``base``: how tau_MTL is built, ``"ta"``
    (sum, default) or ``"ties"`` (``pipeline.merging.ties(tvs, **ties_kwargs)``). Every entry is
    treated alike. Returns the input dtype; the caller applies ``theta0 + lam * tau`` with the
    base method's lambda.
    """
    tvs = _as_list(tvs)
    keys = _validate(tvs)
    n = len(tvs)
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"consensus: k must be an int >= 0, got {k!r}")
    lams = _lams(lam_tall, n)
    if base not in CONSENSUS_BASES:
        raise ValueError(f"consensus: base must be one of {CONSENSUS_BASES}, got {base!r}")
    if ties_kwargs is not None and base != "ties":
        raise ValueError("consensus: ties_kwargs are only used with base='ties'")
    merged = ties(tvs, **dict(ties_kwargs or {})) if base == "ties" else None
    out: TaskVector = {}
    for key in keys:
        ref = tvs[0][key]
        acc = _acc_dtype(ref.dtype)
        if merged is None:
            mtl = ref.detach().to(acc, copy=True)
            for tv in tvs[1:]:  # fixed order, as pipeline.merging's task_arithmetic
                mtl += tv[key].detach().to(acc)
        else:
            mtl = merged.pop(key).to(acc)  # pop: the ties result is not held twice
        count = torch.zeros(ref.shape, dtype=torch.int32, device=ref.device)
        for tv, lam in zip(tvs, lams):
            count += tall_mask(tv[key], mtl, lam).to(torch.int32)
        out[key] = torch.where(count >= k, mtl, torch.zeros((), dtype=acc, device=mtl.device)).to(ref.dtype)
    return out
