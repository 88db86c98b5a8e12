"""TIES-merging (trim, elect sign, disjoint mean) and its trimming threshold.

``trim_threshold`` is exact at any size with chunk-sized memory (a sampled bracket, a radix
select, or ``kthvalue`` on small vectors); ``trim_options``/``trim_count`` turn the config's
``merge.ties_scope`` and ``merge.ties_entries`` into its keywords (the official code's
whole-model task vectors and its ``kthvalue`` count).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from pipeline.merging.vectors import TaskVector, _as_list, _check_chunk, _flat, _slices, _stack_chunk, _validate


def _common_dtype(tv: Mapping[str, torch.Tensor]) -> torch.dtype:
    dt = torch.float32
    for t in tv.values():
        dt = torch.promote_types(dt, t.dtype)
    return dt


_INT_VIEW = {torch.float32: torch.int32, torch.float64: torch.int64}


@torch.no_grad()
def _kth_smallest_abs_radix(
    tv: Mapping[str, torch.Tensor], k: int, dtype: torch.dtype, chunk_numel: int
) -> torch.Tensor:
    """Exact k-th smallest |entry| (1-based) with chunk-sized memory.

    Radix select on the integer bit patterns of the non-negative floats (which order like the
    floats), 11 bits per pass: 3 passes over float32 data, 6 over float64.
    """
    int_dtype = _INT_VIEW[dtype]
    width = 32 if dtype == torch.float32 else 64
    device = next(iter(tv.values())).device
    digits_plan = []  # (shift, n_bits), most significant first
    left = width
    while left > 0:
        n_bits = min(11, left)
        left -= n_bits
        digits_plan.append((left, n_bits))
    prefix = 0
    remaining = k
    for shift, n_bits in digits_plan:
        high = shift + n_bits
        hist = torch.zeros(1 << n_bits, dtype=torch.int64, device=device)
        for t in tv.values():
            flat = _flat(t)
            for sl in _slices(flat.numel(), chunk_numel):
                bits = flat[sl].abs().to(dtype).view(int_dtype)
                if high < width:
                    bits = bits[(bits >> high) == prefix]
                digits = ((bits >> shift) & ((1 << n_bits) - 1)).to(torch.int64)
                hist += torch.bincount(digits, minlength=1 << n_bits)
        cum = hist.cumsum(0)
        digit = int(torch.searchsorted(cum, torch.tensor([remaining], device=device)).item())
        if digit > 0:
            remaining -= int(cum[digit - 1].item())
        prefix = (prefix << n_bits) | digit
    return torch.tensor([prefix], dtype=int_dtype).view(dtype)[0].to(device)


TRIM_ENTRIES = ("exact", "official")


def _check_trim(extra_zeros: int, entries: str) -> None:
    if isinstance(extra_zeros, bool) or not isinstance(extra_zeros, int) or extra_zeros < 0:
        raise ValueError(f"extra_zeros must be a non-negative int, got {extra_zeros!r}")
    if entries not in TRIM_ENTRIES:
        raise ValueError(f"entries must be 'exact' or 'official', got {entries!r}")


def trim_options(scope: str, entries: str, untouched: int) -> dict[str, int | str]:
    """``extra_zeros``/``entries`` keywords of ``ties``, ``trim_threshold`` and ``sign_conflicts``
    for the config's ``merge.ties_scope`` and ``merge.ties_entries``.

    ``untouched``: entries of the whole model outside the task vectors (for CLIP, the floating
    entries of its state dict minus the image tower's). ``scope="whole_model"`` counts them as
    zeros, as the official MagMax code's whole-state-dict task vectors hold them;
    ``entries="auto"`` is ``"official"`` under ``whole_model`` and ``"exact"`` otherwise.
    """
    if scope not in ("image_tower", "whole_model"):
        raise ValueError(f"ties scope must be 'image_tower' or 'whole_model', got {scope!r}")
    if entries == "auto":
        entries = "official" if scope == "whole_model" else "exact"
    extra = int(untouched) if scope == "whole_model" else 0
    _check_trim(extra, entries)
    return {"extra_zeros": extra, "entries": entries}


def trim_count(d: int, top_k: float, entries: str = "exact") -> int:
    """Entries TIES trimming keeps out of ``d`` (before ties at the threshold): ``"exact"``
    max(1, int(d*top_k)), the fraction asked for; ``"official"`` int(d*top_k) + 1, what the
    TIES/MagMax reference code's ``kthvalue(d - int(d*top_k))`` threshold keeps."""
    return int(d * top_k) + 1 if entries == "official" else max(1, int(d * top_k))


@torch.no_grad()
def trim_threshold(
    tv: Mapping[str, torch.Tensor], top_k: float, *, chunk_numel: int | None = None,
    extra_zeros: int = 0, entries: str = "exact",
) -> torch.Tensor | None:
    """Magnitude threshold of TIES trimming over the whole flattened task vector.

    Keeps the ``top_k`` fraction of entries by magnitude: with d entries and
    n = ``trim_count(d, top_k, entries)``, the threshold is the n-th largest |entry| and every
    entry with |entry| >= threshold is kept, so exactly n entries survive unless several are tied
    at the threshold (then all of those are kept). ``entries="exact"`` (n = max(1, int(d*top_k)))
    keeps the fraction that was asked for; ``"official"`` (n = int(d*top_k) + 1) is the TIES
    reference code, which thresholds at the (d - int(d*top_k))-th smallest value.

    ``extra_zeros``: entries outside ``tv`` that count as zeros (the official code's task vectors
    span the whole CLIP state dict, whose text tower never changes). They join d and rank below
    every entry of ``tv``, so the threshold is the n-th largest |entry| of ``tv`` while
    n <= numel(tv), and everything of ``tv`` is kept otherwise; they are never materialised.
    Returns a 0-dim tensor (float32, or float64 for float64 vectors), or None when everything
    (of ``tv``) is kept.
    """
    if not (0.0 < float(top_k) <= 1.0):
        raise ValueError(f"top_k must be in (0, 1], got {top_k!r}")
    _check_chunk(chunk_numel)
    _check_trim(extra_zeros, entries)
    d = sum(t.numel() for t in tv.values())
    if d == 0:
        raise ValueError("task vector has no entries")
    n_keep = trim_count(d + extra_zeros, top_k, entries)
    if n_keep >= d:
        # the n-th largest is one of the extra zeros or tv's smallest |entry|: all of tv is kept
        return None
    k = d - n_keep + 1  # n-th largest == k-th smallest
    dtype = _common_dtype(tv)
    if d >= _BRACKET_MIN:
        found = _nth_largest_abs_bracketed(tv, n_keep, dtype, chunk_numel or _BRACKET_CHUNK)
        if found is not None:
            return found
        if chunk_numel is None:
            chunk_numel = _BRACKET_CHUNK  # a whole-vector copy would cost two model sizes
    if chunk_numel is None:
        allabs = torch.cat([_flat(t).abs().to(dtype) for t in tv.values()])
        return allabs.kthvalue(k).values
    return _kth_smallest_abs_radix(tv, k, dtype, chunk_numel)


# Above this many entries the threshold comes from a sampled bracket: a strided sample brackets
# the n-th largest |entry|, one pass counts the entries above the bracket and collects those in
# it, and the answer is an order statistic of that small set -- exact, in one pass instead of the
# radix select's three, and without copying the whole vector.
_BRACKET_MIN = 1 << 20
_BRACKET_CHUNK = 1 << 20
_SAMPLE_STRIDE = 241  # prime, so the sample does not lock onto a row length


def _abs_band(x: torch.Tensor, lo: float, hi: float, dtype: torch.dtype) -> tuple[int, int, torch.Tensor]:
    """(#|x| > hi, #|x| < lo, the |x| inside [lo, hi]); a NaN is in none of the three."""
    a = x.abs().to(dtype)
    if a.device.type == "cpu":
        # numpy's comparisons are SIMD; torch's bool-producing CPU kernels are ~10x slower here
        v = a.numpy()
        above, below = int(np.count_nonzero(v > hi)), int(np.count_nonzero(v < lo))
        return above, below, torch.from_numpy(v[(v >= lo) & (v <= hi)])
    above, below = int((a > hi).sum()), int((a < lo).sum())
    return above, below, a[(a >= lo) & (a <= hi)]


@torch.no_grad()
def _nth_largest_abs_bracketed(
    tv: Mapping[str, torch.Tensor], n_keep: int, dtype: torch.dtype, chunk_numel: int,
    stride: int = _SAMPLE_STRIDE,
) -> torch.Tensor | None:
    """The exact n_keep-th largest |entry|, or None when the sampled bracket misses it (or there
    are NaNs, or the bracket holds too many entries); the caller then falls back to an exact
    method that always works."""
    d = sum(t.numel() for t in tv.values())
    sample = torch.cat([_flat(t)[::stride].abs().to(dtype) for t in tv.values()])
    m = sample.numel()
    if m < 16:
        return None
    desc = torch.sort(sample, descending=True).values
    rank = n_keep / d * m
    margin = 6.0 * math.sqrt(rank * (1.0 - n_keep / d)) + 8.0
    hi = float(desc[max(0, int(math.floor(rank - margin)))])
    lo = float(desc[min(m - 1, int(math.ceil(rank + margin)))])
    cap = max(1 << 16, d // 8)
    above = below = held = 0
    band: list[torch.Tensor] = []
    for t in tv.values():
        flat = _flat(t)
        for sl in _slices(flat.numel(), chunk_numel):
            a, b, inside = _abs_band(flat[sl], lo, hi, dtype)
            above, below, held = above + a, below + b, held + inside.numel()
            if held > cap:
                return None
            band.append(inside)
    if above + below + held != d or not above < n_keep <= above + held:
        return None
    values = torch.cat(band)
    return values.kthvalue(held - (n_keep - above) + 1).values


def _kept(stack: torch.Tensor, thresholds: list[torch.Tensor | None], dtype: torch.dtype) -> torch.Tensor:
    """Trimmed copy of a T x c slice in ``dtype``: entries below their task's threshold -> 0."""
    vals = stack.to(dtype)
    thr = torch.stack(
        [
            torch.tensor(-math.inf, dtype=dtype, device=vals.device) if t is None else t.to(vals.device, dtype)
            for t in thresholds
        ]
    ).unsqueeze(1)
    return torch.where(vals.abs() >= thr, vals, torch.zeros((), dtype=dtype, device=vals.device))


def _seq_sum(x: torch.Tensor) -> torch.Tensor:
    # Sum over tasks in a fixed order: torch's .sum(0) may reorder the additions depending on
    # the slice width, which would make results depend on chunk_numel in the last bit.
    acc = x[0].clone()
    for row in x[1:]:
        acc += row
    return acc


def _signed_mean(kept: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    agree = (kept * sign) > 0
    total = _seq_sum(torch.where(agree, kept, torch.zeros((), dtype=kept.dtype, device=kept.device)))
    return total / agree.sum(0).clamp(min=1).to(kept.dtype)


@torch.no_grad()
def ties(
    tvs: Sequence[Mapping[str, torch.Tensor]],
    top_k: float = 0.2,
    *,
    resolve_zero: str = "majority",
    chunk_numel: int | None = None,
    extra_zeros: int = 0,
    entries: str = "exact",
) -> TaskVector:
    """TIES-merging: trim, elect sign, disjoint mean.

    1. Trim: per task, keep entries with |entry| >= that task's global threshold
       (``trim_threshold``: top ``top_k`` fraction over the whole flattened vector, ties kept;
       ``extra_zeros`` and ``entries`` as there: with ``extra_zeros`` the vectors are taken to
       span a larger model whose other entries are 0 in every task -- they elect no sign and
       merge to 0, so only the threshold changes).
    2. Elect: per element, the sign of the sum of kept values. Where that sum is exactly zero,
       ``resolve_zero="majority"`` (the TIES/MagMax reference code) uses the sign held by most
       elected elements of the whole vector; ``"zero"`` leaves the element at 0. If that
       majority is itself a tie the element stays 0 (the reference code would then keep the
       negative entries, an artefact of ``where(sign > 0, x > 0, x < 0)``).
    3. Merge: mean over kept entries whose sign equals the elected sign; 0 where there are none.
    Thresholds are computed per task; the rest runs tensor by tensor (and chunk by chunk).
    """
    tvs = _as_list(tvs)
    keys = _validate(tvs)
    _check_chunk(chunk_numel)
    if resolve_zero not in ("majority", "zero"):
        raise ValueError(f"resolve_zero must be 'majority' or 'zero', got {resolve_zero!r}")
    thresholds = [trim_threshold(tv, top_k, chunk_numel=chunk_numel, extra_zeros=extra_zeros, entries=entries)
                  for tv in tvs]
    chunk_numel = _stack_chunk(chunk_numel, len(tvs))
    dtype = _common_dtype(tvs[0])
    out: TaskVector = {}
    balance = 0  # (#elements elected +) - (#elected -), for the majority rule
    # Elements whose kept values sum to exactly 0 but are not all 0: their sign is known only
    # after the full pass, so keep both candidate means for them (rare: exact cancellation).
    pending: list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for key in keys:
        ref = tvs[0][key]
        merged = torch.empty(ref.shape, dtype=ref.dtype, device=ref.device)
        flat_out = merged.view(-1)
        srcs = [_flat(tv[key]) for tv in tvs]
        for sl in _slices(flat_out.numel(), chunk_numel):
            kept = _kept(torch.stack([s[sl] for s in srcs]), thresholds, dtype)
            sign = torch.sign(_seq_sum(kept))
            balance += int((sign > 0).sum().item()) - int((sign < 0).sum().item())
            flat_out[sl] = _signed_mean(kept, sign).to(ref.dtype)
            if resolve_zero == "majority":
                # look for kept entries only in the zero-sum columns (few once T is large)
                zero = (sign == 0).nonzero().squeeze(1)
                idx = zero[(kept[:, zero] != 0).any(0)] if zero.numel() else zero
                if idx.numel():
                    sub = kept[:, idx]
                    pos = _signed_mean(sub, torch.ones((), dtype=dtype, device=sub.device))
                    neg = _signed_mean(sub, -torch.ones((), dtype=dtype, device=sub.device))
                    pending.append((key, idx + sl.start, pos, neg))
        out[key] = merged
    if balance != 0:
        for key, idx, pos, neg in pending:
            flat_out = out[key].view(-1)
            flat_out[idx] = (pos if balance > 0 else neg).to(flat_out.dtype)
    return out
