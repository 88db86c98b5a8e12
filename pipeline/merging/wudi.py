"""WUDI-Merging (Cheng et al., ICML 2025, "Whoever Started the Interference Should End It:
Guiding Data-Free Model Merging via Task Vectors", arXiv 2503.08099).

Per linear layer, with task matrices tau_1..tau_T (rows = output neurons, so that ``W x``
applies the layer), the merged matrix minimises

    L(tau_m) = sum_i ||(tau_m - tau_i) tau_i^T||_F^2 / ||tau_i||_F^2

(the rows of tau_i stand in for task i's inputs: the interference tau_m - tau_i causes on them,
weighted by 1/||tau_i||_F^2). It starts from the task-arithmetic sum and takes a fixed number of
Adam steps (lr 1e-5, 300 steps, betas (0.9, 0.999), eps 1e-8, no weight decay: the official
code, nathanielyvo/WUDI-Merging vit/wudi_main.py and vit/args.py; FusionBench's config uses 400
steps). The merged model is theta0 + 1.0 * tau: the paper applies no scaling coefficient.

Which entries are optimised and what the others get (``matrices`` / ``other``):
  * "official" / "zero" (default): the official ViT code optimises only the four linear
    weights of each residual block (``attn.in_proj_weight``, ``attn.out_proj.weight``,
    ``mlp.c_fc.weight``, ``mlp.c_proj.weight``, packed q/k/v as one matrix, as open_clip holds
    it) and leaves every other entry at the pre-trained value (tau = 0).
  * "all_2d" / "mean": FusionBench's ``wudi_merging`` optimises every 2-D entry and averages
    the rest. open_clip's ``proj`` is stored (in, out) and is transposed for the objective.
  ``other="sum"`` (task arithmetic) is offered too.

The gradient is computed in closed form, dL/dtau_m = 2 sum_i (tau_m - tau_i) G_i / s_i with
G_i = tau_i^T tau_i and s_i = ||tau_i||_F^2, i.e. 2 (tau_m H - B) with H = sum_i G_i / s_i
(n x n) and B = sum_i tau_i G_i / s_i: the value autograd gives on the official loss, but one
(m x n)(n x n) product per step and O(1) layer-sized buffers instead of a T-stack of (m x m)
products. A zero task matrix contributes nothing (its term, ||(tau_m - 0) 0||^2 / 0, is taken
as 0; the official code would give NaN).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence

import torch

from pipeline.merging.vectors import TaskVector, _as_list, _validate
from pipeline.merging._matrix_rules import (
    check_device,
    check_int,
    check_positive,
    compute_dtype,
)

__all__ = ["wudi", "wudi_objective", "official_vit_matrix", "OFFICIAL_VIT_SUFFIXES"]

# The keys the official ViT code optimises (vit/wudi_main.py, decompose_task_vectors).
OFFICIAL_VIT_SUFFIXES = ("attn.in_proj_weight", "attn.out_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

_OTHER_RULES = ("zero", "mean", "sum")


def official_vit_matrix(key: str, t: torch.Tensor) -> bool:
    """The official code's rule: the four linear weights of a residual block."""
    return t.dim() == 2 and key.endswith(OFFICIAL_VIT_SUFFIXES)


def _all_2d(key: str, t: torch.Tensor) -> bool:
    return t.dim() == 2


def _matrix_rule(matrices: str | Callable[[str, torch.Tensor], bool]) -> Callable[[str, torch.Tensor], bool]:
    if matrices == "official":
        return official_vit_matrix
    if matrices == "all_2d":
        return _all_2d
    if callable(matrices):
        return matrices
    raise ValueError(f"matrices must be 'official', 'all_2d' or a callable (key, tensor) -> bool, got {matrices!r}")


def _is_input_major(key: str, input_major: Collection[str]) -> bool:
    return any(key == name or key.endswith("." + name) for name in input_major)


@torch.no_grad()
def wudi_objective(tau_m: torch.Tensor, mats: Sequence[torch.Tensor]) -> float:
    """sum_i ||(tau_m - tau_i) tau_i^T||_F^2 / ||tau_i||_F^2 over non-zero tau_i, in float64.

    Written directly from the definition (one T-term sum), for diagnostics and tests.
    """
    total = 0.0
    m = tau_m.detach().double()
    for x in mats:
        x = x.detach().double()
        s = float(x.pow(2).sum())
        if s == 0.0:
            continue
        total += float(((m - x) @ x.T).pow(2).sum()) / s
    return total


@torch.no_grad()
def _optimise(mats: list[torch.Tensor], steps: int, lr: float) -> torch.Tensor:
    """Adam on L from the sum of ``mats`` (all m x n, same dtype/device).

    Adam runs on delta = tau_m - sum (its updates depend only on the gradient, so this is the
    same trajectory), with dL/dtau_m = 2 (delta H + R) and R = sum_i (sum - tau_i) G_i / s_i the
    interference at the start, computed term by term. At a start that is already optimal
    (T = 1, exactly orthogonal rows) R is exactly 0, so Adam, which rescales even rounding noise
    to steps of size ~lr, does not move.
    """
    init = torch.zeros_like(mats[0])
    for x in mats:
        init += x
    n = mats[0].shape[1]
    h = torch.zeros((n, n), dtype=init.dtype, device=init.device)
    r = torch.zeros_like(init)
    for x in mats:
        s = x.pow(2).sum()
        if float(s) == 0.0:
            continue
        g = (x.T @ x).div_(s)
        h.add_(g)
        r.add_((init - x) @ g)
    if steps == 0:
        return init
    delta = torch.zeros_like(init).requires_grad_(True)
    opt = torch.optim.Adam([delta], lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    for _ in range(steps):
        grad = torch.addmm(r, delta.detach(), h)
        delta.grad = grad.mul_(2.0)
        opt.step()
    return init.add_(delta.detach())


@torch.no_grad()
def wudi(
    tvs: Sequence[Mapping[str, torch.Tensor]],
    *,
    steps: int = 300,
    lr: float = 1e-5,
    seed: int = 0,
    matrices: str | Callable[[str, torch.Tensor], bool] = "official",
    other: str = "zero",
    input_major: Collection[str] = ("proj",),
    device: str | torch.device | None = None,
) -> TaskVector:
    """WUDI-merged task vector (apply as ``theta0 + 1.0 * tau``; see the module docstring).

    ``steps``/``lr``: the fixed Adam budget per matrix (paper/official code: 300, 1e-5).
    ``seed``: accepted for a uniform merge signature; the procedure has no randomness (a fixed
    start, full-batch gradients), so the result depends only on the inputs.
    ``matrices``: "official" (default), "all_2d" or a callable (key, tensor) -> bool choosing
    the entries that are optimised; ``other``: "zero" (default, official), "mean"
    (FusionBench) or "sum" for all remaining entries.
    ``input_major``: names of 2-D entries stored (in_features, out_features) (open_clip's
    ``proj``, applied as x @ proj): they are transposed for the objective and back.
    ``device``: where the optimisation runs (default: where each tensor is); results are
    returned on the input's device in the input's dtype (half inputs are computed in float32).
    Memory: T copies of one layer's matrix plus O(1) layer-sized buffers at a time.
    """
    tvs = _as_list(tvs)
    keys = _validate(tvs)
    check_int("steps", steps, 0)
    lr = check_positive("lr", lr)
    check_int("seed", seed, -(2**63))
    rule = _matrix_rule(matrices)
    if other not in _OTHER_RULES:
        raise ValueError(f"other must be one of {_OTHER_RULES}, got {other!r}")
    if isinstance(input_major, str):
        input_major = (input_major,)
    dev = check_device(device)
    out: TaskVector = {}
    for key in keys:
        ref = tvs[0][key]
        work_dtype = compute_dtype(ref.dtype)
        work_dev = dev if dev is not None else ref.device
        if rule(key, ref):
            if ref.dim() != 2:
                raise ValueError(f"WUDI needs a 2-D matrix, but key {key!r} has shape {tuple(ref.shape)}")
            flip = _is_input_major(key, input_major)
            mats = [tv[key].detach().to(work_dev, work_dtype) for tv in tvs]
            if flip:
                mats = [x.T.contiguous() for x in mats]
            merged = _optimise(mats, steps, lr)
            if flip:
                merged = merged.T
            if not torch.isfinite(merged).all():
                raise ValueError(f"WUDI produced non-finite values for key {key!r} (non-finite inputs?)")
            out[key] = merged.to(ref.device, ref.dtype).contiguous()
        elif other == "zero":
            out[key] = torch.zeros_like(ref, memory_format=torch.contiguous_format)
        else:
            acc = ref.detach().to(work_dtype, copy=True)
            for tv in tvs[1:]:
                acc.add_(tv[key].detach().to(acc.device, work_dtype))
            if other == "mean":
                acc.div_(len(tvs))
            out[key] = acc.to(ref.dtype).contiguous()
    return out
