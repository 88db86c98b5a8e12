"""Analyses of task vectors behind the paper's figures (pure functions, no I/O).

- ``magnitude_prune``: Figure 2 (keep the highest, lowest or a random k% of a task vector).
- ``sign_conflicts``: Figures 3 and 10.
- ``kth_magnitude_merges``: Figure 5 (merges by the k-th highest magnitude, norms equalised).
- ``update_consistency``: Figure 6.
- ``contributions``: Figure 7.
- ``leave_one_out``: Figure 8 (merges with one task vector left out).
- ``mean_magnitude_by_layer``: Figure 12.
- ``histogram_edges`` / ``entry_histogram``: Figure 13 (distributions of task-vector entries).

Each returns plain numbers or task vectors; which results rows carry them is defined once, in
``pipeline.report`` (its "Row vocabulary").
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from pipeline.merging.baselines import _key_seed
from pipeline.merging.max_magnitude import kth_magnitude, magmax
from pipeline.merging.ties_merging import _common_dtype, _kept, trim_threshold
from pipeline.merging.vectors import (
    TaskVector, _as_list, _check_chunk, _check_floating, _flat, _slices, _validate, rescale_to_norm,
)

__all__ = [
    "sign_conflicts",
    "magnitude_prune",
    "contributions",
    "update_consistency",
    "layer_type",
    "block_index",
    "LayerMagnitudes",
    "mean_magnitude_by_layer",
    "kth_magnitude_merges",
    "leave_one_out",
    "Histogram",
    "histogram_edges",
    "entry_histogram",
]


@torch.no_grad()
def sign_conflicts(
    tvs: Sequence[Mapping[str, torch.Tensor]], top_k: float = 0.2, *, chunk_numel: int | None = None,
    extra_zeros: int = 0, entries: str = "exact",
) -> float:
    """Fraction of all parameters where the trimmed task vectors disagree in sign.

    Each vector is trimmed as in TIES (``trim_threshold``: top ``top_k`` fraction by magnitude,
    global over the flattened vector, ties kept). An element is a conflict when the kept non-zero
    entries at that position include both a positive and a negative value. The denominator is the
    number of entries of one flattened vector plus ``extra_zeros``: entries of a larger model
    that are zero in every vector (TIES's ``whole_model`` scope), never in conflict, which also
    count in the trimming threshold as ``trim_threshold`` says (``entries`` likewise).
    """
    tvs = _as_list(tvs)
    keys = _validate(tvs)
    _check_chunk(chunk_numel)
    thresholds = [trim_threshold(tv, top_k, chunk_numel=chunk_numel, extra_zeros=extra_zeros, entries=entries)
                  for tv in tvs]
    dtype = _common_dtype(tvs[0])
    conflicts = 0
    total = extra_zeros
    for key in keys:
        srcs = [_flat(tv[key]) for tv in tvs]
        numel = srcs[0].numel()
        total += numel
        for sl in _slices(numel, chunk_numel):
            kept = _kept(torch.stack([s[sl] for s in srcs]), thresholds, dtype)
            both = (kept > 0).any(0) & (kept < 0).any(0)
            conflicts += int(both.sum().item())
    return conflicts / total


@torch.no_grad()
def magnitude_prune(
    tv: Mapping[str, torch.Tensor], keep: float, mode: str = "highest", seed: int = 0
) -> TaskVector:
    """Zero all but a ``keep`` fraction of the entries of ``tv`` (Figure 2).

    - ``"highest"``: keep the top fraction by magnitude, global over the flattened vector, ties at
      the threshold kept (the TIES trimming rule).
    - ``"lowest"``: keep the entries with |entry| <= the int(d*keep)-th smallest magnitude.
    - ``"random"``: keep each entry independently with probability ``keep`` (so the kept count is
      ``keep * d`` in expectation), drawn per tensor from a generator seeded by ``(seed, key)``.
    """
    if mode not in ("highest", "lowest", "random"):
        raise ValueError(f"mode must be 'highest', 'lowest' or 'random', got {mode!r}")
    keep = float(keep)
    if not 0.0 <= keep <= 1.0:
        raise ValueError(f"keep must be in [0, 1], got {keep!r}")
    keys = _validate([tv])
    if keep == 0.0:
        return {k: torch.zeros_like(tv[k]) for k in keys}
    if keep == 1.0:
        return {k: tv[k].detach().clone() for k in keys}
    dtype = _common_dtype(tv)
    out: TaskVector = {}
    if mode == "highest":
        thr = trim_threshold(tv, keep)
        for k in keys:
            t = tv[k].detach()
            out[k] = t.clone() if thr is None else torch.where(t.abs().to(dtype) >= thr, t, torch.zeros_like(t))
    elif mode == "lowest":
        d = sum(t.numel() for t in tv.values())
        n_keep = int(d * keep)
        if n_keep == 0:
            return {k: torch.zeros_like(tv[k]) for k in keys}
        allabs = torch.cat([_flat(t).abs().to(dtype) for t in tv.values()])
        thr = allabs.kthvalue(n_keep).values
        del allabs
        for k in keys:
            t = tv[k].detach()
            out[k] = torch.where(t.abs().to(dtype) <= thr, t, torch.zeros_like(t))
    else:
        for k in keys:
            t = tv[k].detach()
            gen = torch.Generator(device="cpu")
            gen.manual_seed(_key_seed(seed, k))
            mask = (torch.rand(t.shape, generator=gen, dtype=torch.float64) < keep).to(t.device)
            out[k] = torch.where(mask, t, torch.zeros_like(t))
    return out


@torch.no_grad()
def contributions(
    tvs: Sequence[Mapping[str, torch.Tensor]], *, ignore_all_zero: bool = True
) -> list[float]:
    """Share of parameters each task vector wins under ``magmax`` (Figure 7); sums to 1.

    Ties go to the later task, as in ``magmax``. With ``ignore_all_zero`` (default) elements that
    are 0 in every vector (never updated, e.g. frozen parameters) are not counted: nobody
    contributes them, and the tie rule would otherwise credit them all to the last task.
    """
    tvs = _as_list(tvs)
    keys = _validate(tvs)
    n = len(tvs)
    wins = torch.zeros(n, dtype=torch.int64)
    for key in keys:
        srcs = [_flat(tv[key]) for tv in tvs]
        best = srcs[0].abs()
        winner = torch.zeros(best.shape, dtype=torch.int64, device=best.device)
        for i, s in enumerate(srcs[1:], start=1):
            a = s.abs()
            mask = a >= best
            winner[mask] = i
            best = torch.where(mask, a, best)
        if ignore_all_zero:
            winner = winner[best != 0]
        wins += torch.bincount(winner, minlength=n).cpu()
    total = int(wins.sum())
    if total == 0:
        raise ValueError("all task vectors are zero everywhere: no contributions to count")
    return [int(w) / total for w in wins]


@torch.no_grad()
def update_consistency(
    seq_tvs: Sequence[Mapping[str, torch.Tensor]], *, reference: int = -1
) -> dict[int, float]:
    """Mean |reference task vector| grouped by the number of consistent update directions (Fig. 6).

    For sequential task vectors tau_1..tau_T (cumulative: tau_t = theta_t - theta_0), the update
    of task t is ``tau_t - tau_{t-1}`` with tau_0 = 0. Per parameter, n counts the tasks t in
    1..T whose update sign equals the (non-zero) sign of the reference vector (the final one by
    default); parameters where the reference is 0 get n = 0. Returns ``{n: mean |reference|}``
    for every n that occurs.

    This is the paper's definition (Section 6: the update direction of task t is
    sgn(theta_t - theta_{t-1}); n counts the tasks whose update agrees with the parameter's sign
    in the task vector). With an earlier ``reference`` the count still runs over all T updates,
    the later ones included: Figure 6 relates a vector's magnitudes to "the consistency of the
    update direction in the subsequent tasks".
    """
    seq_tvs = _as_list(seq_tvs)
    keys = _validate(seq_tvs)
    n_tasks = len(seq_tvs)
    if not -n_tasks <= reference < n_tasks:
        raise ValueError(f"reference {reference} out of range for {n_tasks} task vectors")
    ref_tv = seq_tvs[reference]
    sums = torch.zeros(n_tasks + 1, dtype=torch.float64)
    counts = torch.zeros(n_tasks + 1, dtype=torch.int64)
    for key in keys:
        ref = _flat(ref_tv[key])
        ref_sign = torch.sign(ref)
        consistent = torch.zeros(ref.shape, dtype=torch.int64, device=ref.device)
        prev: torch.Tensor | None = None
        for tv in seq_tvs:
            cur = _flat(tv[key])
            step = cur if prev is None else cur - prev
            consistent += ((torch.sign(step) == ref_sign) & (ref_sign != 0)).to(torch.int64)
            prev = cur
        mag = ref.abs().to(torch.float64)
        sums += torch.bincount(consistent, weights=mag, minlength=n_tasks + 1).cpu()
        counts += torch.bincount(consistent, minlength=n_tasks + 1).cpu()
    return {n: float(sums[n] / counts[n]) for n in range(n_tasks + 1) if counts[n] > 0}


# --------------------------------------------------------------------------------------------
# Layer-wise magnitudes (Figure 12)

# Figure 2's pruning grid: the share of each task vector's entries kept
PRUNE_KEEP: tuple[float, ...] = (0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0)

_BLOCK_RE = re.compile(r"(?:^|\.)(?:resblocks|blocks|layers?)\.(\d+)(?:\.|$)")
_LN_RE = re.compile(r"(?:^|\.)(?:ln_\w+|ln\d*|norm\d*|layer_?norm\w*)(?:\.|$)")
_EMBED_NAMES = ("conv1", "class_embedding", "positional_embedding", "patch_embed", "pos_embed", "cls_token", "token_embedding")


def layer_type(name: str) -> str:
    """Layer type of an open_clip ViT parameter name: 'attn', 'mlp', 'ln', 'embed' or 'other'."""
    parts = name.split(".")
    if "attn" in parts:
        return "attn"
    if "mlp" in parts:
        return "mlp"
    if _LN_RE.search(name):
        return "ln"
    if any(p in _EMBED_NAMES for p in parts):
        return "embed"
    return "other"


def block_index(name: str) -> int | None:
    """Index of the transformer block a parameter belongs to, or None outside the blocks."""
    m = _BLOCK_RE.search(name)
    return int(m.group(1)) if m else None


def _is_bias(name: str) -> bool:
    return name.split(".")[-1].endswith("bias")


@dataclass(frozen=True)
class LayerMagnitudes:
    """Mean |entry| per layer type and per block index (entry-weighted means)."""

    by_type: dict[str, float] = field(default_factory=dict)
    by_block: dict[int, float] = field(default_factory=dict)


@torch.no_grad()
def mean_magnitude_by_layer(
    tv: Mapping[str, torch.Tensor], *, include_bias: bool = False
) -> LayerMagnitudes:
    """Mean |entry| of ``tv`` grouped by layer type and by block index (Figure 12).

    Biases are left out by default, as in the paper ("we only analyze weight matrices and
    disregard the biases"); LayerNorm gains count as weights.
    """
    type_acc: dict[str, list[float]] = {}
    block_acc: dict[int, list[float]] = {}
    for name, t in tv.items():
        _check_floating(name, t)
        if not include_bias and _is_bias(name):
            continue
        s = float(t.detach().abs().double().sum())
        n = t.numel()
        if n == 0:
            continue
        acc = type_acc.setdefault(layer_type(name), [0.0, 0])
        acc[0] += s
        acc[1] += n
        b = block_index(name)
        if b is not None:
            bacc = block_acc.setdefault(b, [0.0, 0])
            bacc[0] += s
            bacc[1] += n
    return LayerMagnitudes(
        by_type={k: v[0] / v[1] for k, v in sorted(type_acc.items())},
        by_block={k: v[0] / v[1] for k, v in sorted(block_acc.items())},
    )


# --------------------------------------------------------------------------------------------
# k-th magnitude with equal norms (Figure 5)


def _global_norm(tv: Mapping[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float(t.detach().double().pow(2).sum()) for t in tv.values()))


@torch.no_grad()
def kth_magnitude_merges(
    tvs: Sequence[Mapping[str, torch.Tensor]],
    ks: Sequence[int] | None = None,
    *,
    chunk_numel: int | None = None,
) -> Iterator[tuple[int, TaskVector]]:
    """``(k, merge by the k-th highest magnitude)`` for k in ``ks`` (default 1..N), each rescaled
    to the global L2 norm of the MagMax merge (k = 1), as in Figure 5.

    The paper equalises norms so that the k differ only in which entries they pick: lower-ranked
    entries are smaller, and without it a larger k would also mean a smaller update. k = 1 comes
    unscaled (it is the target norm). Lazy, one merged vector at a time (``dict(...)`` for all):
    N merged copies of a large model would not fit where one does. The inputs and the target
    norm are checked at the call; a k whose merge is zero everywhere raises ValueError when
    reached (nothing to rescale).
    """
    tvs = _as_list(tvs)
    _validate(tvs)
    ks = list(range(1, len(tvs) + 1)) if ks is None else [int(k) for k in ks]
    top = kth_magnitude(tvs, 1, chunk_numel=chunk_numel)
    target = _global_norm(top)

    def merges() -> Iterator[tuple[int, TaskVector]]:
        for k in ks:
            if k == 1:
                yield k, top
                continue
            merged = kth_magnitude(tvs, k, chunk_numel=chunk_numel)
            try:
                yield k, rescale_to_norm(merged, target)
            except ValueError as e:
                raise ValueError(f"k={k}: {e}") from e

    return merges()


# --------------------------------------------------------------------------------------------
# Leave one out (Figure 8)


def leave_one_out(
    tvs: Sequence[Mapping[str, torch.Tensor]],
    merge: Callable[..., TaskVector] = magmax,
    **merge_kwargs,
) -> Iterator[TaskVector]:
    """The merges of ``tvs`` with one task vector left out: item i is
    ``merge(tvs without tvs[i], **merge_kwargs)`` (Figure 8).

    Lazy, one merged vector at a time (``list(...)`` for all of them): at model scale N merged
    copies would not fit where one does. The inputs are validated at the call.
    """
    tvs = _as_list(tvs)
    _validate(tvs)
    if len(tvs) < 2:
        raise ValueError("leave-one-out needs at least two task vectors")
    return (merge(tvs[:i] + tvs[i + 1:], **merge_kwargs) for i in range(len(tvs)))


# --------------------------------------------------------------------------------------------
# Distributions of task-vector entries (Figure 13)


@dataclass(frozen=True)
class Histogram:
    """Counts of entries in ``len(edges) - 1`` bins ``[edges[i], edges[i+1])`` (the last closed)."""

    edges: tuple[float, ...]
    counts: tuple[int, ...]

    @property
    def centres(self) -> tuple[float, ...]:
        return tuple((a + b) / 2 for a, b in zip(self.edges[:-1], self.edges[1:]))


@torch.no_grad()
def histogram_edges(
    tvs: Sequence[Mapping[str, torch.Tensor]], bins: int = 101, limit: float | None = None
) -> tuple[float, ...]:
    """``bins + 1`` equally spaced edges over [-L, L], L = ``limit`` or the largest |entry| of all
    ``tvs``; one set of edges for every vector so that their histograms compare bin by bin.

    An odd ``bins`` (the default) puts 0 in the middle of a bin rather than on an edge.
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive int, got {bins!r}")
    tvs = _as_list(tvs)
    _validate(tvs)
    if limit is None:
        limit = max(float(t.detach().abs().max()) for tv in tvs for t in tv.values() if t.numel())
        if limit == 0.0:
            raise ValueError("every entry is zero: pass limit= to choose the range")
    if not math.isfinite(limit) or limit <= 0:
        raise ValueError(f"limit must be finite and > 0, got {limit!r}")
    return tuple(torch.linspace(-limit, limit, bins + 1, dtype=torch.float64).tolist())


@torch.no_grad()
def entry_histogram(tv: Mapping[str, torch.Tensor], edges: Sequence[float]) -> Histogram:
    """Histogram of all entries of ``tv`` over ``edges`` (increasing).

    Entries outside the edges are counted in the outer bins, so the counts always add up to the
    number of entries (a clipped tail stays visible instead of vanishing).
    """
    edges = tuple(float(e) for e in edges)
    if len(edges) < 2 or any(b <= a for a, b in zip(edges[:-1], edges[1:])):
        raise ValueError("edges must be at least two strictly increasing values")
    keys = _validate([tv])
    n_bins = len(edges) - 1
    counts = torch.zeros(n_bins, dtype=torch.int64)
    for key in keys:
        flat = _flat(tv[key]).to(torch.float64)
        inner = torch.tensor(edges[1:-1], dtype=torch.float64, device=flat.device)
        # right=True: bin i holds edges[i] <= x < edges[i+1]; below/above the range -> 0 / last
        idx = torch.bucketize(flat, inner, right=True)
        counts += torch.bincount(idx, minlength=n_bins).cpu()
    return Histogram(edges=edges, counts=tuple(int(c) for c in counts))
