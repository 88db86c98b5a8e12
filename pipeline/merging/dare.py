"""DARE, "Drop And REscale" (Yu et al., ICML 2024, "Language Models are Super Mario"), composed
with Task Arithmetic or TIES.

Each entry of each task vector is dropped (set to 0) independently with probability ``p`` and the
survivors are rescaled by 1/(1-p), so every entry keeps its expected value; then the sparsified
vectors are merged by Task Arithmetic (their sum) or by TIES (``pipeline.merging.ties``, called
as it is: trim, elect, disjoint mean).

Facts, and where they come from:
  * paper, Sec. 3 (Eq. 1): m ~ Bernoulli(p), delta' = (1 - m) * delta / (1 - p), applied to the
    delta (task vector) parameters before any merge; DARE+TA and DARE+TIES are the paper's
    pairings.
  * official code (github yule-BUAA/MergeLM, model_merging_methods/mask_weights_utils.py
    ``mask_input_with_mask_rate``): every parameter of the task vector is masked (no
    distinction of matrices and 1-D tensors; only name regexes the caller excludes), and with
    p = 1 the rescale is skipped (everything is 0). Both are followed here.
  * lambda on top: the base method's own scaling coefficient, tuned on validation (the paper
    keeps the base method's settings; FusionBench's CLIP configs use p=0.5 with TA lambda 0.3,
    TIES lambda 0.5). No default for p is imposed here.

Randomness: one CPU ``torch.Generator`` per (seed, task index, key), seeded by
``pipeline.merging.baselines._key_seed``, so a task's mask for a key depends only on those
three -- not on key order, device, other tasks or ``base``; the same seed gives the same masks for TA and TIES.

Memory: ``base="ta"`` holds the result (one model) plus one tensor's mask; ``base="ties"`` gives
``ties`` lazy views that redraw a dropped tensor on each read (exactly, from its seed), so it
holds what ``ties`` itself holds, not T sparsified copies -- at the price of redrawing every tensor
each time ``ties`` reads it (a few passes).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from pipeline.merging.baselines import _key_seed
from pipeline.merging.ties_merging import ties
from pipeline.merging.vectors import TaskVector, _acc_dtype, _as_list, _validate

__all__ = ["dare", "dare_drop", "DARE_BASES"]

DARE_BASES = ("ta", "ties")


def _check_p(p: float) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or not 0 <= p <= 1:
        raise ValueError(f"dare: drop probability p must be in [0, 1], got {p!r}")
    return float(p)


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"dare: seed must be an int, got {seed!r}")
    return seed


def _task_key_seed(seed: int, task: int, key: str) -> int:
    # the task index joins the key so two tasks never share a mask
    return _key_seed(seed, f"dare\x00{task}\x00{key}")


@torch.no_grad()
def dare_drop(t: torch.Tensor, *, p: float, seed: int, task: int, key: str) -> torch.Tensor:
    """One tensor of one task vector after DARE: entries dropped with probability ``p`` (drawn
    from the generator of (seed, task, key)), survivors divided by (1 - p); ``t``'s dtype, computed
    in float32 (or float64 for float64 inputs)."""
    p = _check_p(p)
    src = t.detach()
    if p == 0.0:
        return src.clone()
    if p == 1.0:  # the official code skips the rescale: everything is dropped
        return torch.zeros_like(src)
    work = src.to(_acc_dtype(src.dtype))
    gen = torch.Generator(device="cpu")
    gen.manual_seed(_task_key_seed(seed, task, key))
    drop = (torch.rand(src.shape, generator=gen) < p).to(src.device)
    kept = torch.where(drop, torch.zeros((), dtype=work.dtype, device=work.device), work)
    return (kept / (1.0 - p)).to(src.dtype)


class _DroppedView(Mapping[str, torch.Tensor]):
    """Task vector ``tv`` after DARE, drawn anew (identically) on every read."""

    def __init__(self, tv: Mapping[str, torch.Tensor], p: float, seed: int, task: int) -> None:
        self._tv, self._p, self._seed, self._task = tv, p, seed, task

    def __getitem__(self, key: str) -> torch.Tensor:
        return dare_drop(self._tv[key], p=self._p, seed=self._seed, task=self._task, key=key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._tv)

    def __len__(self) -> int:
        return len(self._tv)


@torch.no_grad()
def dare(
    tvs: Sequence[Mapping[str, torch.Tensor]],
    *,
    p: float,
    seed: int = 0,
    base: str = "ta",
    ties_kwargs: Mapping[str, Any] | None = None,
) -> TaskVector:
    """DARE-sparsify each task vector, then merge.

    ``base="ta"``: ``sum_t dare_drop(tau_t)`` (accumulated in float32 for half inputs).
    ``base="ties"``: ``pipeline.merging.ties(dropped, **ties_kwargs)`` (its defaults otherwise,
    e.g. top_k=0.2). All entries are dropped alike (matrices, biases, LayerNorm, embeddings).
    Returns the merged vector in the input dtype; the caller applies ``theta0 + lam * tau`` with
    the base method's lambda.
    """
    tvs = _as_list(tvs)
    keys = _validate(tvs)
    p = _check_p(p)
    seed = _check_seed(seed)
    if base not in DARE_BASES:
        raise ValueError(f"dare: base must be one of {DARE_BASES}, got {base!r}")
    if ties_kwargs is not None and base != "ties":
        raise ValueError("dare: ties_kwargs are only used with base='ties'")
    if base == "ties":
        views = [_DroppedView(tv, p, seed, i) for i, tv in enumerate(tvs)]
        return ties(views, **dict(ties_kwargs or {}))
    out: TaskVector = {}
    for key in keys:
        ref = tvs[0][key]
        acc = torch.zeros(ref.shape, dtype=_acc_dtype(ref.dtype), device=ref.device)
        for i, tv in enumerate(tvs):
            acc += _dropped_acc(tv[key], p, seed, i, key, acc.dtype)
        out[key] = acc.to(ref.dtype)
    return out


def _dropped_acc(t: torch.Tensor, p: float, seed: int, task: int, key: str, dtype: torch.dtype) -> torch.Tensor:
    # the TA path adds in the accumulation dtype, so half inputs are not rounded before the sum
    return dare_drop(t.detach().to(dtype), p=p, seed=seed, task=task, key=key)
