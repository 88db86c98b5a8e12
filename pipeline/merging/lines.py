"""LiNeS, "Layer-increasing Network Scaling" (Wang et al., ICLR 2025): post-hoc depth-dependent
scaling of a (merged) task vector.

The entries of residual block l of L are multiplied by ``alpha + beta * l / (L - 1)``, so the
shallow blocks (general features) stay close to the pre-trained model and the deep blocks keep
the task-specific change. It is applied after any merge (TA, TIES, MagMax, Consensus, ...) and
the result is used with lambda = 1: ``theta0 + lines(tau)``.

Facts, and where they come from:
  * paper, Sec. 3: linear in depth from alpha (first block) to alpha + beta (last block); the
    official code below is the same schedule, lambda(l) = alpha + beta * l / (L - 1).
  * official code (github wang-kee/LiNeS, src/eval/eval.py ``LiNeS_scaling`` and ``evaluate``):
    the block of a key is the l in 0..L-1 whose ".<l>." occurs in its name (open_clip's
    ``transformer.resblocks.<l>.``); L = 12 for ViT-B, 24 for ViT-L; EVERY key outside the
    blocks (conv1, class_embedding, positional_embedding, ln_pre, ln_post, proj) is scaled by
    alpha -- ``outside="alpha"``, the default here. ``outside="by_position"`` instead puts the
    keys after the blocks (``ln_post.*``, ``proj``) at the last depth (alpha + beta) and the rest
    at depth 0 (alpha); it is this module's option, not the paper's.
  * choice of alpha/beta (code, ``evaluate``): single-task editing uses alpha = lam, beta = 1 -
    lam; multi-task merging sets alpha = (||sum_t tau_t||_1 / ||tau_merged||_1) / T
    (``lines_multitask_alpha``; 1/T for Task Arithmetic) and tunes beta on validation; the
    scaled vector is then applied with lambda = 1.

Memory: the scaled copy (one model); nothing else.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence

import torch

from pipeline.merging.vectors import TaskVector, _acc_dtype, _as_list, _check_floating, _validate

__all__ = ["lines", "lines_scales", "block_index", "lines_multitask_alpha", "LINES_OUTSIDE"]

LINES_OUTSIDE = ("alpha", "by_position")

# open_clip's residual blocks, whatever prefix the key carries ("", "visual.", "model.visual.")
_BLOCK = re.compile(r"(?:^|\.)resblocks\.(\d+)\.")
# open_clip's image-tower tensors that come after the blocks
_POST_BLOCKS = re.compile(r"(?:^|\.)(?:ln_post\.[^.]+|proj)$")


def block_index(key: str) -> int | None:
    """Residual-block index l of an open_clip key (``...transformer.resblocks.<l>....``), or None
    for a key outside the blocks (conv1, class_embedding, positional_embedding, ln_pre, ln_post,
    proj)."""
    m = _BLOCK.search(key)
    return int(m.group(1)) if m else None


def _check_number(v: float, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"lines: {name} must be a finite number, got {v!r}")
    return float(v)


def lines_scales(
    keys: Iterable[str], *, alpha: float, beta: float, num_blocks: int | None = None,
    outside: str = "alpha",
) -> dict[str, float]:
    """The LiNeS factor of each key: ``alpha + beta * l / (L - 1)`` for a key of block l (alpha
    for every block when L = 1); keys outside the blocks per ``outside`` (see the module doc).

    ``num_blocks`` (L): None infers it as 1 + the largest block index among ``keys``; a key whose
    block index is >= L raises ValueError naming it.
    """
    keys = list(keys)
    alpha, beta = _check_number(alpha, "alpha"), _check_number(beta, "beta")
    if outside not in LINES_OUTSIDE:
        raise ValueError(f"lines: outside must be one of {LINES_OUTSIDE}, got {outside!r}")
    index = {k: block_index(k) for k in keys}
    found = [i for i in index.values() if i is not None]
    if num_blocks is None:
        if not found:
            raise ValueError("lines: no key names a residual block (transformer.resblocks.<l>.); "
                             "pass num_blocks")
        num_blocks = max(found) + 1
    elif isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 1:
        raise ValueError(f"lines: num_blocks must be an int >= 1, got {num_blocks!r}")
    last = num_blocks - 1
    scales: dict[str, float] = {}
    for key, l in index.items():
        if l is None:
            post = outside == "by_position" and _POST_BLOCKS.search(key) is not None
            depth = last if post else 0
        elif l > last:
            raise ValueError(f"lines: key {key!r} is in block {l}, but num_blocks is {num_blocks}")
        else:
            depth = l
        scales[key] = alpha + beta * (depth / last if last > 0 else 0.0)
    return scales


@torch.no_grad()
def lines(
    tau: Mapping[str, torch.Tensor], *, alpha: float, beta: float, num_blocks: int | None = None,
    outside: str = "alpha",
) -> TaskVector:
    """``tau`` with each key multiplied by its ``lines_scales`` factor (in float32 for half
    inputs; the input dtype back). Apply with lambda = 1."""
    if not isinstance(tau, Mapping):
        raise ValueError(f"lines: expected one task vector (a mapping), got {type(tau).__name__}")
    for key, t in tau.items():
        _check_floating(key, t)
    scales = lines_scales(tau.keys(), alpha=alpha, beta=beta, num_blocks=num_blocks, outside=outside)
    return {k: (t.detach().to(_acc_dtype(t.dtype)) * scales[k]).to(t.dtype) for k, t in tau.items()}


@torch.no_grad()
def lines_multitask_alpha(tvs: Sequence[Mapping[str, torch.Tensor]], merged: Mapping[str, torch.Tensor]) -> float:
    """The official code's alpha for multi-task merging: ``(||sum_t tau_t||_1 / ||merged||_1) / T``
    over all entries (1/T when ``merged`` is the Task Arithmetic sum)."""
    tvs = _as_list(tvs)
    keys = _validate(tvs)
    _validate([tvs[0], merged])  # same keys and shapes (and dtype) as the task vectors
    summed = merged_norm = 0.0
    for key in keys:
        acc = _acc_dtype(tvs[0][key].dtype)
        s = tvs[0][key].detach().to(acc, copy=True)
        for tv in tvs[1:]:
            s += tv[key].detach().to(acc)
        summed += float(s.double().abs().sum())
        merged_norm += float(merged[key].detach().double().abs().sum())
    if merged_norm == 0.0:
        raise ValueError("lines: the merged task vector is zero, its L1 norm cannot divide")
    return summed / merged_norm / len(tvs)
