"""Model Breadcrumbs (Davari & Belilovsky, ECCV 2024): per-layer two-sided magnitude masks, then
a sum.

Each task vector is sparsified layer by layer: within one tensor the entries are ranked by
magnitude and both tails are dropped -- the largest ``top`` fraction (outliers) and the smallest
``bottom`` fraction (negligible perturbations). The masked vectors are summed (the "breadcrumbs"),
and the caller applies ``theta0 + alpha * tau``.

Facts, and where they come from:
  * paper, Sec. 3 (from its description; the text was not at hand when this was written): the
    mask is layer-wise, on |tau| of that layer, bottom-beta and top-gamma percentiles masked,
    masked vectors summed and scaled by one alpha. Our ``bottom``/``top`` are those two tails
    as fractions of the layer.
  * official code (github rezazzr/breadcrumbs, src/task_vectors.py ``TaskVectorMiddleKeep``,
    merging_trend_eval.py): the mask is taken along the LAST dimension of each tensor (per row
    of a weight matrix, the whole tensor for a 1-D one; 0-dim tensors are left as they are); it
    first zeroes the ``int(n*gamma)`` largest, then keeps the ``int(n*beta)`` largest of what is
    left, where ``beta`` is the fraction KEPT (so bottom = 1 - beta - gamma, not 1 - beta); the
    hyper-parameter search starts at alpha=0.2, beta (kept)=0.15, gamma=0.006 and searches
    gamma in [0.001, 0.01], beta in [0.05, 0.4]; every tensor of the state dict is masked
    (biases, LayerNorm and embeddings included). ``variant="official"`` reproduces that rule.
  * defaults here: ``bottom=0.85`` (the search's starting keep of 15 %), ``top=0.01`` (the upper
    end of the searched gamma range). The caller's lambda is the paper's alpha, tuned on
    validation (no fixed value is given for every setting; the official search starts at 0.2).

Ties in magnitude are broken by position (earlier entry ranks higher), so the result is
deterministic (the official code's ``torch.topk`` leaves ties unspecified). The ranks are found
with two selections (``kthvalue``) per tensor or row, not a sort.
Memory: the result (one model) plus, per tensor, a few temporaries of that tensor's size (its
magnitudes, boolean masks, one int64 count); independent of T.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from pipeline.merging.vectors import TaskVector, _acc_dtype, _as_list, _validate

__all__ = ["breadcrumbs", "breadcrumbs_mask", "BREADCRUMBS_VARIANTS"]

BREADCRUMBS_VARIANTS = ("paper", "official")


def _count(n: int, frac: float) -> int:
    # floor(n * frac); the epsilon keeps e.g. 100 * 0.29 = 28.999999999999996 at 29
    return int(math.floor(n * frac + 1e-9))


def _check_fractions(top: float, bottom: float) -> tuple[float, float]:
    for name, v in (("top", top), ("bottom", bottom)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= 1:
            raise ValueError(f"breadcrumbs: {name} must be a fraction in [0, 1], got {v!r}")
    if top + bottom > 1 + 1e-12:
        raise ValueError(f"breadcrumbs: top + bottom must be <= 1, got top={top!r}, bottom={bottom!r}")
    return float(top), float(bottom)


def _window(n: int, top: float, bottom: float, variant: str) -> tuple[int, int]:
    """[lo, hi): the descending-magnitude ranks kept out of n."""
    lo = _count(n, top)
    if variant == "paper":
        hi = n - _count(n, bottom)
    else:  # official: keep int(n * (1 - bottom)) of what the top cut left
        hi = lo + _count(n, 1.0 - bottom)
    return lo, max(lo, min(hi, n))


@torch.no_grad()
def breadcrumbs_mask(t: torch.Tensor, *, top: float = 0.01, bottom: float = 0.85,
                     variant: str = "paper") -> torch.Tensor:
    """Boolean mask (shape of ``t``) of the entries Breadcrumbs keeps of one tensor.

    ``variant="paper"``: over the whole tensor of n entries, drop the ``floor(n*top)`` largest and
    the ``floor(n*bottom)`` smallest magnitudes. ``variant="official"``: the same per slice along
    the last dimension (n = t.shape[-1]), keeping ``floor(n*(1-bottom))`` entries below the
    ``floor(n*top)`` largest; a 0-dim tensor is kept whole.
    """
    top, bottom = _check_fractions(top, bottom)
    if variant not in BREADCRUMBS_VARIANTS:
        raise ValueError(f"breadcrumbs: variant must be one of {BREADCRUMBS_VARIANTS}, got {variant!r}")
    if t.dim() == 0 and variant == "official":
        return torch.ones((), dtype=torch.bool, device=t.device)
    rows = t.detach().reshape(1, -1) if variant == "paper" or t.dim() == 0 else t.detach().reshape(-1, t.shape[-1])
    n = rows.shape[1]
    lo, hi = _window(n, top, bottom, variant)
    if hi <= lo or rows.numel() == 0:
        return torch.zeros(t.shape, dtype=torch.bool, device=t.device)
    return _rank_window(rows.abs().to(_acc_dtype(rows.dtype)), lo, hi).reshape(t.shape)


def _rank_window(a: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Per row of ``a`` (magnitudes), the entries whose descending rank r is in [lo, hi), equal
    values ranked by position -- what a stable descending sort gives, without the sort.

    v1 / v2 are the values at ranks lo and hi-1 (two selections). Entries strictly between them
    are inside the window and entries beyond them outside; an entry equal to v1 or v2 has rank
    #(entries > v) + (its index among the entries equal to v), counted exactly.
    """
    n = a.shape[1]
    v1 = a.kthvalue(n - lo, dim=1, keepdim=True).values
    v2 = a.kthvalue(n - hi + 1, dim=1, keepdim=True).values
    mask = (a < v1) & (a > v2)
    eq1 = a == v1
    for eq, v in ((eq1, v1), ((a == v2) & ~eq1, v2)):
        rank = (a > v).sum(1, keepdim=True) + eq.cumsum(1) - 1
        mask |= eq & (rank >= lo) & (rank < hi)
    return mask


@torch.no_grad()
def breadcrumbs(
    tvs: Sequence[Mapping[str, torch.Tensor]],
    *,
    top: float = 0.01,
    bottom: float = 0.85,
    variant: str = "paper",
) -> TaskVector:
    """Model Breadcrumbs: ``sum_t mask_t * tau_t`` with ``mask_t = breadcrumbs_mask(tau_t)`` per tensor.

    Every entry of the task vectors (matrices, biases, LayerNorm, embeddings, conv1) is masked by
    its own tensor's rule, as in the official code. Returns the summed (unscaled) vector in the
    input dtype (accumulated in float32 for half inputs); the paper applies ``theta0 + alpha *
    tau`` with alpha tuned on validation (search start 0.2 in the official code).
    """
    tvs = _as_list(tvs)
    keys = _validate(tvs)
    _check_fractions(top, bottom)
    out: TaskVector = {}
    for key in keys:
        ref = tvs[0][key]
        acc = torch.zeros(ref.shape, dtype=_acc_dtype(ref.dtype), device=ref.device)
        for tv in tvs:
            t = tv[key].detach()
            m = breadcrumbs_mask(t, top=top, bottom=bottom, variant=variant)
            acc += torch.where(m, t.to(acc.dtype), torch.zeros((), dtype=acc.dtype, device=acc.device))
        out[key] = acc.to(ref.dtype)
    return out
