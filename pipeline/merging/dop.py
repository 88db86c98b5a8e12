"""DOP: Dual Orthogonal Projections for continual merging ("Continual Model Merging without
Data: Dual Projections for Balancing Stability and Plasticity", NeurIPS 2025; reference code
FusionBench fusion_bench/method/dop/dop.py, config/method/dop/dop.yaml, docs/algorithms/dop.md).

Task vectors arrive one at a time; the state is the merged vector M_{t-1} (M_1 = tau_1). When
tau_t arrives, each linear weight matrix is re-solved from the two "models" A = M_{t-1}
(stability) and B = tau_t (plasticity), without data:

  * per model X in {A, B}: SVD X = U S V^T, keep the top k triplets, k the smallest count whose
    singular values reach a fraction ``svd_epsilon`` of sum(s) (default 0.99999);
  * loss_X(tau) = ||S_k^p U_k^T (tau - X)||_F^2 + ||(tau - X) V_k S_k^p||_F^2 (the "dual"
    projections onto X's left and right principal subspaces; ``proj_space`` "u"/"v" keeps one;
    p = ``sv_power`` = 1 as in the code -- the docs page writes S^{1/2});
  * tau starts at (A + B) / 2 and takes ``steps`` Adam steps (lr 1e-4, 200 steps) on
    w_A loss_A + w_B loss_B. With ``mgda`` (default) the weights come from MGDA each step: the
    gradients are divided by their losses, the minimum-norm point c g_A + (1 - c) g_B of their
    hull is found in closed form (Sener & Koltun 2018; c clipped to 0.999 / 0.001 at the ends),
    and with ``ema`` the weights are an exponential moving average w <- beta w + (1 - beta)(c,
    1 - c) started at (alpha, 1 - alpha) = (0.8, 0.2), beta = 0.999, per matrix. Without
    ``mgda`` the weights are (alpha, 1 - alpha) throughout.
  * every other entry (biases, LayerNorm, embeddings, conv1, class token) is the simple
    average (A + B) / 2.

The data-free loss and the fixed step budget are the method as defined; nothing is random (the
start is fixed, gradients are full-batch), so the result depends only on the inputs; ``seed``
is accepted for a uniform signature. The merged model is theta0 + 1.0 * M_t.

Differences from FusionBench's code, on purpose: k follows the documented rule (cumulative
fraction >= epsilon, "at least"); the code's ``searchsorted`` keeps one triplet fewer (the one
that crosses the threshold), which for a rank-1 matrix keeps none and freezes the layer. The
loss gradients are computed in closed form (2 P P^T D + 2 D Q Q^T), equal to autograd's.
HF's class embedding, which FusionBench's leaf-module loop never visits, is averaged here like
the other non-matrix entries.

Memory: the merged vector (one model size, float32 for half inputs) and a counter -- O(1)
model sizes for any T. ``add`` works one matrix at a time (two SVDs, Adam's two moments).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from pipeline.merging.vectors import TaskVector
from pipeline.merging._matrix_rules import (
    MatrixFilter,
    RunningState,
    check_device,
    check_filter,
    check_fraction,
    check_int,
    check_positive,
    compute_dtype,
    row_blocks,
)

__all__ = ["DOP", "dop_merge_matrix", "dop_rank", "min_norm_2"]

_SPACES = ("uv", "u", "v")


def dop_rank(s: torch.Tensor, epsilon: float) -> int:
    """Smallest k with (s_1 + .. + s_k) / sum(s) >= epsilon (0 for a zero matrix)."""
    total = s.sum()
    if float(total) == 0.0:
        return 0
    ratio = s.cumsum(0) / total
    return min(int((ratio < epsilon).sum()) + 1, s.numel())


def min_norm_2(v11: float, v12: float, v22: float) -> float:
    """c minimising ||c g1 + (1 - c) g2||^2 from the Gram entries (MGDA, two tasks)."""
    if v12 >= v11:
        return 0.999
    if v12 >= v22:
        return 0.001
    return (v22 - v12) / (v11 + v22 - 2.0 * v12)


def _factors(x: torch.Tensor, epsilon: float, power: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(U_k S_k^p, V_k S_k^p) of x."""
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    k = dop_rank(s, epsilon)
    w = s[:k].pow(power)
    return u[:, :k] * w, vh[:k].T * w


def _loss_grad(
    tau: torch.Tensor, target: torch.Tensor, pu: torch.Tensor, qv: torch.Tensor, space: str
) -> tuple[float, torch.Tensor]:
    d = tau - target
    loss = 0.0
    grad = torch.zeros_like(tau)
    if "u" in space:
        y = pu.T @ d
        loss += float(y.double().pow(2).sum())
        grad.addmm_(pu, y, alpha=2.0)
    if "v" in space:
        z = d @ qv
        loss += float(z.double().pow(2).sum())
        grad.addmm_(z, qv.T, alpha=2.0)
    return loss, grad


@torch.no_grad()
def dop_merge_matrix(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    lr: float = 1e-4,
    steps: int = 200,
    alpha: float = 0.8,
    mgda: bool = True,
    ema: bool = True,
    ema_beta: float = 0.999,
    svd_epsilon: float = 0.99999,
    proj_space: str = "uv",
    sv_power: float = 1.0,
) -> torch.Tensor:
    """One DOP step on one weight matrix: merge the merged matrix ``a`` with the new ``b``."""
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(f"dop_merge_matrix needs two matrices of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    factors = [_factors(a, svd_epsilon, sv_power), _factors(b, svd_epsilon, sv_power)]
    param = ((a + b) / 2).requires_grad_(True)
    if steps == 0:
        return param.detach()
    opt = torch.optim.Adam([param], lr=lr)
    weights = (alpha, 1.0 - alpha)
    for _ in range(steps):
        tau = param.detach()
        (loss_a, g_a), (loss_b, g_b) = (
            _loss_grad(tau, target, pu, qv, proj_space) for target, (pu, qv) in zip((a, b), factors)
        )
        if mgda:
            # MGDA on loss-normalised gradients; a zero loss has a zero gradient, left as is
            n_a = g_a / loss_a if loss_a > 0 else g_a
            n_b = g_b / loss_b if loss_b > 0 else g_b
            v11 = float((n_a.double() * n_a.double()).sum())
            v12 = float((n_a.double() * n_b.double()).sum())
            v22 = float((n_b.double() * n_b.double()).sum())
            c = min_norm_2(v11, v12, v22)
            if ema:
                weights = (
                    ema_beta * weights[0] + (1.0 - ema_beta) * c,
                    ema_beta * weights[1] + (1.0 - ema_beta) * (1.0 - c),
                )
            else:
                weights = (c, 1.0 - c)
        param.grad = g_a.mul_(weights[0]).add_(g_b, alpha=weights[1])
        opt.step()
    return param.detach()


class DOP:
    """Running DOP merge: ``add(tv)`` one task vector at a time, ``value()`` the merged one.

    Parameters as in ``dop_merge_matrix`` (FusionBench defaults), plus ``matrices`` ((key,
    tensor) -> bool, default: 2-D entries other than embeddings), ``split_qkv`` (optimise
    open_clip's packed ``in_proj_weight`` as its q, k, v matrices, as HF CLIP's separate
    layers are), ``seed`` (unused: the method is deterministic) and ``device`` (where the
    per-matrix optimisation runs; the state stays on the first vector's device).
    """

    def __init__(
        self,
        *,
        lr: float = 1e-4,
        steps: int = 200,
        alpha: float = 0.8,
        mgda: bool = True,
        ema: bool = True,
        ema_beta: float = 0.999,
        svd_epsilon: float = 0.99999,
        proj_space: str = "uv",
        sv_power: float = 1.0,
        matrices: MatrixFilter | None = None,
        split_qkv: bool = True,
        seed: int = 0,
        device: str | torch.device | None = None,
    ) -> None:
        if proj_space not in _SPACES:
            raise ValueError(f"proj_space must be one of {_SPACES}, got {proj_space!r}")
        check_int("seed", seed, -(2**63))
        self.options = dict(
            lr=check_positive("lr", lr),
            steps=check_int("steps", steps, 0),
            alpha=check_fraction("alpha", alpha),
            mgda=bool(mgda),
            ema=bool(ema),
            ema_beta=check_fraction("ema_beta", ema_beta),
            svd_epsilon=check_fraction("svd_epsilon", svd_epsilon),
            proj_space=proj_space,
            sv_power=check_positive("sv_power", sv_power),
        )
        self._is_matrix = check_filter(matrices)
        self.split_qkv = bool(split_qkv)
        self._device = check_device(device)
        self._state = RunningState()
        self._value: dict[str, torch.Tensor] = {}

    @property
    def count(self) -> int:
        return self._state.count

    @classmethod
    def from_value(cls, value: Mapping[str, torch.Tensor], count: int, **kwargs) -> "DOP":
        """Resume from a persisted merged vector that already merges ``count`` task vectors."""
        if count < 1:
            raise ValueError(f"count must be >= 1 to resume from a value, got {count}")
        obj = cls(**kwargs)
        obj.add(value)
        obj._state.count = int(count)
        return obj

    @torch.no_grad()
    def add(self, tv: Mapping[str, torch.Tensor]) -> None:
        """Merge one more task vector (see the module docstring for the update)."""
        first = self._state.ref is None
        self._state.check(tv)
        if first:
            self._value = {
                k: t.detach().to(compute_dtype(t.dtype), copy=True, memory_format=torch.contiguous_format)
                for k, t in tv.items()
            }
            self._state.count = 1
            return
        for key, prev in self._value.items():
            dev = self._device if self._device is not None else prev.device
            old = prev.to(dev)
            new = tv[key].detach().to(dev, prev.dtype)
            if self._is_matrix(key, prev):
                merged = torch.empty_like(old)
                for rows in row_blocks(key, tuple(prev.shape), self.split_qkv):
                    merged[rows] = dop_merge_matrix(old[rows], new[rows], **self.options)
                if not torch.isfinite(merged).all():
                    raise ValueError(f"DOP produced non-finite values for key {key!r} (non-finite inputs?)")
            else:
                merged = (old + new) / 2
            # a fresh tensor per key: dicts returned by value() earlier keep their contents
            self._value[key] = merged.to(prev.device)
        self._state.count += 1

    def value(self) -> TaskVector:
        """The merged task vector M_t in the input dtype (apply with lambda = 1).

        Tensors may be shared with the state (float32/64 inputs): read them, do not modify
        them in place.
        """
        if self._state.ref is None:
            raise ValueError("DOP is empty: add a task vector first")
        return {k: t.to(self._state.ref[k].dtype) for k, t in self._value.items()}
