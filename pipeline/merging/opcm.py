"""OPCM: Orthogonal-Projection-based Continual Merging (Tang et al., 2025, "Merging Models on the
Fly Without Retraining: A Sequential Approach to Scalable Continual Model Merging",
arXiv 2501.09522; reference code tanganke/opcm and FusionBench
fusion_bench/method/opcm/opcm.py, config/method/opcm/opcm.yaml).

Task vectors arrive one at a time. The state is the merged vector M_{t-1} (already scaled)
and its scale lambda_{t-1}; M_1 = tau_1, lambda_1 = 1. When tau_t arrives:

1. For every linear weight matrix, with the SVD M_{t-1} = U S V^T, write tau_t in the
   (u_i, v_j) basis, C = U^T tau_t V, and remove
     * the block C[:r, :r], r = #{k : (s_1 + .. + s_k) / sum(s) <= alpha}: the directions
       u_i v_j^T spanned by the principal singular vectors, and
     * the diagonal C[i, i] for every i (the components along M's own rank-one terms
       u_i v_i^T; FusionBench's "fix bug" of 2025-03-18 made this take effect -- the original
       tanganke/opcm code called ``.diag().fill_(0)``, a no-op, so ``drop_diagonal=False``
       reproduces that code);
   P(tau_t) = U C' V^T. Every other entry (biases, LayerNorm, embeddings, conv1, the
   class token) is taken as it is: P(tau_t) = tau_t.
2. Unscaled sum N = lambda_{t-1} M_{t-1} + P(tau_t) (so N = sum of all projected vectors).
3. lambda_t = ||N|| / mean(||tau_1||, .., ||tau_t||) with norms over the whole vector, and
   M_t = N / lambda_t: the merged vector keeps the average task-vector norm.

The merged model is theta0 + 1.0 * M_t (the method carries its own scale).
``alpha`` = 0.5 is FusionBench's default.

Memory: the merged vector (one model size, float32 for half inputs) and three numbers
(lambda, the running sum of norms, the count) -- O(1) model sizes for any T. ``add`` works one
key at a time, so its temporaries are one layer's SVD.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from pipeline.merging.vectors import TaskVector
from pipeline.merging._matrix_rules import (
    MatrixFilter,
    RunningState,
    check_device,
    check_filter,
    check_fraction,
    compute_dtype,
    global_norm,
    row_blocks,
)

__all__ = ["OPCM", "opcm_project", "split_rank"]


def split_rank(s: torch.Tensor, alpha: float) -> int:
    """r = #{k : cumsum(s)_k / sum(s) <= alpha} (FusionBench: the first index where the ratio
    exceeds alpha). With alpha >= 1 every direction counts (r = len(s)); FusionBench's
    ``argmax`` of an all-False mask would give 0 there instead."""
    total = s.sum()
    if float(total) == 0.0:
        return 0
    ratio = s.cumsum(0) / total
    return int((ratio <= alpha).sum())


@torch.no_grad()
def opcm_project(prev: torch.Tensor, tau: torch.Tensor, alpha: float, *, drop_diagonal: bool = True) -> torch.Tensor:
    """P(tau): tau without the components OPCM reserves for the merged matrix ``prev``.

    A zero ``prev`` reserves nothing (its singular vectors would be arbitrary).
    """
    if prev.dim() != 2 or prev.shape != tau.shape:
        raise ValueError(f"opcm_project needs two matrices of one shape, got {tuple(prev.shape)} and {tuple(tau.shape)}")
    if not bool(prev.any()):
        return tau.clone()
    # The reduced SVD suffices: the removed coefficients all lie in the min(m, n) square block.
    u, s, vh = torch.linalg.svd(prev, full_matrices=False)
    coef = u.T @ tau @ vh.T
    removed = torch.zeros_like(coef)
    r = split_rank(s, alpha)
    removed[:r, :r] = coef[:r, :r]
    if drop_diagonal:
        removed.diagonal().copy_(coef.diagonal())
    return tau - u @ removed @ vh


class OPCM:
    """Running OPCM merge: ``add(tv)`` one task vector at a time, ``value()`` the merged one.

    ``alpha``: SVD energy threshold for the reserved block (default 0.5, FusionBench).
    ``matrices``: (key, tensor) -> bool, the linear weight matrices (default: 2-D entries other
    than embeddings, see ``_matrix_rules.is_linear_weight``). ``split_qkv``: project open_clip's
    packed ``in_proj_weight`` as its q, k, v matrices (as HF CLIP's separate layers are).
    ``drop_diagonal``: see the module docstring. ``device``: where the SVDs run (default: where
    the state is); the state stays on the first vector's device.
    """

    def __init__(
        self,
        *,
        alpha: float = 0.5,
        matrices: MatrixFilter | None = None,
        split_qkv: bool = True,
        drop_diagonal: bool = True,
        device: str | torch.device | None = None,
    ) -> None:
        self.alpha = check_fraction("alpha", alpha)
        self._is_matrix = check_filter(matrices)
        self.split_qkv = bool(split_qkv)
        self.drop_diagonal = bool(drop_diagonal)
        self._device = check_device(device)
        self._state = RunningState()
        self._value: dict[str, torch.Tensor] = {}
        self.lambda_t = 1.0
        self.norm_sum = 0.0

    @property
    def count(self) -> int:
        return self._state.count

    @classmethod
    def from_state(
        cls, value: Mapping[str, torch.Tensor], *, count: int, lambda_t: float, norm_sum: float, **kwargs
    ) -> "OPCM":
        """Resume from a persisted merged vector M_count and its scalars."""
        if count < 1:
            raise ValueError(f"count must be >= 1 to resume, got {count}")
        if not (math.isfinite(lambda_t) and lambda_t > 0 and math.isfinite(norm_sum) and norm_sum >= 0):
            raise ValueError(f"bad OPCM state: lambda_t={lambda_t!r}, norm_sum={norm_sum!r}")
        obj = cls(**kwargs)
        obj.add(value)
        obj._state.count = int(count)
        obj.lambda_t = float(lambda_t)
        obj.norm_sum = float(norm_sum)
        return obj

    @torch.no_grad()
    def add(self, tv: Mapping[str, torch.Tensor]) -> None:
        """Merge one more task vector (see the module docstring for the update)."""
        first = self._state.ref is None
        self._state.check(tv)
        norm = global_norm(tv)
        if not math.isfinite(norm):
            raise ValueError("task vector has non-finite entries")
        if first:
            self._value = {
                k: t.detach().to(compute_dtype(t.dtype), copy=True, memory_format=torch.contiguous_format)
                for k, t in tv.items()
            }
            self.norm_sum, self.lambda_t = norm, 1.0
            self._state.count = 1
            return
        sq = 0.0
        for key, prev in self._value.items():
            dev = self._device if self._device is not None else prev.device
            new = tv[key].detach().to(dev, prev.dtype, copy=True)
            old = prev.to(dev)
            if self._is_matrix(key, prev):
                for rows in row_blocks(key, tuple(prev.shape), self.split_qkv):
                    new[rows] = opcm_project(old[rows], new[rows], self.alpha, drop_diagonal=self.drop_diagonal)
            new.add_(old, alpha=self.lambda_t)  # N = lambda_{t-1} M_{t-1} + P(tau_t)
            # a fresh tensor per key: dicts returned by value() earlier keep their contents
            self._value[key] = new.to(prev.device)
            sq += float(new.double().pow(2).sum())
        self._state.count += 1
        self.norm_sum += norm
        avg = self.norm_sum / self._state.count
        total = math.sqrt(sq)
        if total == 0.0 or avg == 0.0:
            return  # all-zero merge: nothing to rescale, lambda unchanged
        self.lambda_t = total / avg
        for t in self._value.values():
            t.div_(self.lambda_t)

    def value(self) -> TaskVector:
        """The merged task vector M_t in the input dtype (apply with lambda = 1).

        Tensors may be shared with the state (float32/64 inputs): read them, do not modify
        them in place. Later ``add`` calls replace, not modify, the state's tensors.
        """
        if self._state.ref is None:
            raise ValueError("OPCM is empty: add a task vector first")
        return {k: t.to(self._state.ref[k].dtype) for k, t in self._value.items()}
