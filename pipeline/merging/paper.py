"""Merging of task vectors: pure tensor functions and a registry.

A task vector is ``dict[str, torch.Tensor]`` keyed by parameter name (floating entries only).
Every function here works key by key, and the ones that combine T vectors element-wise accept
``chunk_numel``: the flattened tensors are processed in slices of that many entries, so the
temporaries grow with the slice, not with T x model size. Methods that stack the T tensors pick a
slice of about 2M stacked entries themselves when ``chunk_numel`` is None. Results never depend on
the chunk size. Task vectors may be memory-mapped (e.g. ``safetensors.safe_open``): inputs are
only read, one slice at a time.

Methods (``MERGE_FUNCTIONS``): ``magmax`` (``maxabs`` is the same function applied to independently
fine-tuned vectors, the paper's MaxAbs baseline), ``average``, ``task_arithmetic``,
``random_mix``, ``ties``, ``kth_magnitude``. A config runs a merge through the method table
(``pipeline.methods.register_method``).

No Ray, no open_clip, no file I/O in this module.
"""

from __future__ import annotations


import hashlib
import math
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import torch

__all__ = [
    "TaskVector",
    "magmax",
    "maxabs",
    "RunningMagMax",
    "average",
    "task_arithmetic",
    "random_mix",
    "ties",
    "kth_magnitude",
    "trim_threshold",
    "trim_count",
    "trim_options",
    "rescale_to_norm",
    "apply_task_vector",
    "MERGE_FUNCTIONS",
]

TaskVector = dict[str, torch.Tensor]


# --------------------------------------------------------------------------------------------
# validation and iteration helpers


def _check_chunk(chunk_numel: int | None) -> None:
    if chunk_numel is not None and (not isinstance(chunk_numel, int) or chunk_numel < 1):
        raise ValueError(f"chunk_numel must be a positive int or None, got {chunk_numel!r}")


def _slices(numel: int, chunk_numel: int | None) -> Iterator[slice]:
    if chunk_numel is None or chunk_numel >= numel:
        yield slice(0, numel)
        return
    for start in range(0, numel, chunk_numel):
        yield slice(start, min(start + chunk_numel, numel))


def _flat(t: torch.Tensor) -> torch.Tensor:
    # A view when contiguous; a copy only for non-contiguous inputs.
    return t.detach().reshape(-1)


def _check_floating(key: str, t: object) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"task vector entry {key!r} is not a torch.Tensor (got {type(t).__name__})")
    if not t.is_floating_point():
        raise ValueError(f"task vector entry {key!r} has non-floating dtype {t.dtype}")


def _check_compatible(ref: Mapping[str, torch.Tensor], tv: Mapping[str, torch.Tensor], idx: int) -> None:
    missing = [k for k in ref if k not in tv]
    if missing:
        raise ValueError(f"task vector {idx} lacks key {missing[0]!r}")
    extra = [k for k in tv if k not in ref]
    if extra:
        raise ValueError(f"task vector {idx} has unexpected key {extra[0]!r}")
    for key, t in tv.items():
        _check_floating(key, t)
        r = ref[key]
        if tuple(t.shape) != tuple(r.shape):
            raise ValueError(
                f"shape mismatch for key {key!r}: task vector {idx} has {tuple(t.shape)}, "
                f"expected {tuple(r.shape)}"
            )
        if t.dtype != r.dtype:
            raise ValueError(
                f"dtype mismatch for key {key!r}: task vector {idx} has {t.dtype}, expected {r.dtype}"
            )


def _validate(tvs: Sequence[Mapping[str, torch.Tensor]]) -> list[str]:
    """Check that tvs is a non-empty list of compatible task vectors; return the key order."""
    if isinstance(tvs, Mapping):
        raise ValueError("expected a sequence of task vectors, got a single mapping")
    if len(tvs) == 0:
        raise ValueError("need at least one task vector")
    ref = tvs[0]
    if not isinstance(ref, Mapping):
        raise ValueError(f"task vector 0 is not a mapping (got {type(ref).__name__})")
    for key, t in ref.items():
        _check_floating(key, t)
    for i, tv in enumerate(tvs[1:], start=1):
        if not isinstance(tv, Mapping):
            raise ValueError(f"task vector {i} is not a mapping (got {type(tv).__name__})")
        _check_compatible(ref, tv, i)
    return list(ref.keys())


def _as_list(tvs: Sequence[Mapping[str, torch.Tensor]]) -> list[Mapping[str, torch.Tensor]]:
    if isinstance(tvs, Mapping):
        raise ValueError("expected a sequence of task vectors, got a single mapping")
    return list(tvs)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half-precision inputs are accumulated in float32; float32/64 stay as they are.
    return torch.promote_types(dtype, torch.float32)


# Methods that stack T tensors (T x chunk temporaries) use this many stacked entries per step when
# no chunk_numel is given: 8 MiB of float32, so their memory does not grow with T x tensor size
# and the stack stays cache-sized.
_STACK_BUDGET = 1 << 21
_STACK_MIN_CHUNK = 1 << 12  # below this, per-op overhead dominates


def _stack_chunk(chunk_numel: int | None, n_tasks: int) -> int:
    if chunk_numel is not None:
        return chunk_numel
    return max(_STACK_MIN_CHUNK, _STACK_BUDGET // max(1, n_tasks))


# --------------------------------------------------------------------------------------------
# MagMax


# On CPU the fold runs on numpy views of the same memory: torch's CPU kernels that produce or
# consume boolean masks (>=, where) run at ~0.2 Gelem/s here, a tenth of memory speed. A compiled
# one-pass loop (numba) moves the bytes at ~85 % of copy bandwidth; without numba, numpy's SIMD
# compare and integer bit operations go block by block so the temporaries stay in L2 cache
# (~30 %). Either way memory traffic is one read of cur and of new and one write of cur.
# Elsewhere (GPU) torch's own kernels are memory-bound and are used as they are.
_FOLD_BLOCK = 1 << 15  # entries per block: ~0.5 MiB of working set per thread
_FOLD_PARALLEL_MIN = 1 << 20  # tensors smaller than this are not worth splitting over threads
_NP_BITS = {torch.float16: np.int16, torch.float32: np.int32, torch.float64: np.int64}
_TORCH_FOLD_BLOCK = 1 << 22  # 16 MiB of float32 per temporary


def _compile_fold_kernel() -> Callable[[np.ndarray, np.ndarray], None] | None:
    """The fold as one compiled loop (numba), or None where numba is missing.

    One pass: each entry of cur and new is read once and cur written once, and LLVM turns the
    select into SIMD blends, so the fold runs at memory speed where five numpy passes over cached
    blocks cannot (bench/merge.py). ``nogil`` lets the fold's thread pool split a tensor;
    ``cache`` keeps the compiled code on disk (beside this file, or numba's per-user cache where
    that is read-only), so only the first process on a machine pays the ~1 s compile.
    """
    try:
        import numba
    except ImportError:  # the numpy path below gives the same bits, slower
        return None

    @numba.njit(nogil=True, cache=True, error_model="numpy")
    def fold(cur, new):  # pragma: no cover - compiled
        for i in range(cur.shape[0]):
            c = cur[i]
            n = new[i]
            # False where either side is NaN, as torch.where(|new| >= |cur|) is
            cur[i] = n if abs(n) >= abs(c) else c

    return fold


_FOLD_KERNEL: list = []  # [kernel or None], compiled on first use


def _fold_kernel() -> Callable[[np.ndarray, np.ndarray], None] | None:
    if not _FOLD_KERNEL:
        _FOLD_KERNEL.append(_compile_fold_kernel())
    return _FOLD_KERNEL[0]


def _fold_range(cur: np.ndarray, new: np.ndarray, lo: int, hi: int, bits: type) -> None:
    """cur[lo:hi] <- new where |new| >= |cur|: torch.where's result bit for bit, NaN included.

    ``bits`` is the integer type as wide as the float type of cur and new.
    """
    if hi <= lo:
        return
    kernel = _fold_kernel() if cur.dtype != np.float16 else None  # numba has no float16 arithmetic
    if kernel is not None:
        kernel(cur[lo:hi], new[lo:hi])
        return
    width = min(_FOLD_BLOCK, hi - lo)
    mag_new, mag_cur = np.empty(width, cur.dtype), np.empty(width, cur.dtype)
    take_buf = np.empty(width, dtype=bool)
    cur_bits, new_bits = cur.view(bits), new.view(bits)
    for start in range(lo, hi, _FOLD_BLOCK):
        stop = min(start + _FOLD_BLOCK, hi)
        k = stop - start
        a, b, take = mag_new[:k], mag_cur[:k], take_buf[:k]
        np.abs(new[start:stop], out=a)
        np.abs(cur[start:stop], out=b)
        np.greater_equal(a, b, out=take)  # False where either side is NaN, as in torch
        # branch-free select on the bit patterns (a random mask defeats branch prediction):
        # cur ^= (cur ^ new) * take
        diff = a.view(bits)
        c = cur_bits[start:stop]
        np.bitwise_xor(c, new_bits[start:stop], out=diff)
        np.multiply(diff, take, out=diff)
        np.bitwise_xor(c, diff, out=c)


@contextmanager
def _fold_pool() -> Iterator[ThreadPoolExecutor | None]:
    """Threads for one merge call, as many as torch may use (numpy releases the GIL)."""
    threads = torch.get_num_threads()
    if threads <= 1:
        yield None
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="magmax-fold") as pool:
        yield pool


@torch.no_grad()
def _fold_max(cur: torch.Tensor, new: torch.Tensor, pool: ThreadPoolExecutor | None = None) -> None:
    """cur <- new where |new| >= |cur| (the later vector wins ties), in place."""
    if (cur.device.type != "cpu" or new.device.type != "cpu" or cur.dtype not in _NP_BITS
            or new.dtype != cur.dtype or not cur.is_contiguous() or not new.is_contiguous()
            or cur.is_conj() or new.is_conj() or cur.is_neg() or new.is_neg()):
        # blocks small enough for a GPU's L2 cache, so the four kernels' temporaries do not
        # travel to device memory and back
        if not cur.is_contiguous() or new.shape != cur.shape:
            torch.where(new.abs() >= cur.abs(), new, cur, out=cur)
            return
        cur_flat, new_flat = cur.view(-1), new.reshape(-1)
        for lo in range(0, cur_flat.numel(), _TORCH_FOLD_BLOCK):
            c, n = cur_flat[lo:lo + _TORCH_FOLD_BLOCK], new_flat[lo:lo + _TORCH_FOLD_BLOCK]
            torch.where(n.abs() >= c.abs(), n, c, out=c)
        return
    c, n = cur.detach().view(-1).numpy(), new.detach().view(-1).numpy()
    bits = _NP_BITS[cur.dtype]
    size = c.size
    parts = 1 if pool is None else min(torch.get_num_threads(), size // _FOLD_PARALLEL_MIN)
    if parts <= 1:
        _fold_range(c, n, 0, size, bits)
        return
    # contiguous shares rounded to whole blocks, one per thread
    step = -(-size // parts // _FOLD_BLOCK) * _FOLD_BLOCK
    futures = [pool.submit(_fold_range, c, n, lo, min(lo + step, size), bits) for lo in range(0, size, step)]
    for f in futures:
        f.result()


@torch.no_grad()
def magmax(tvs: Sequence[Mapping[str, torch.Tensor]], *, chunk_numel: int | None = None) -> TaskVector:
    """Per element, the entry of largest magnitude across ``tvs``.

    On equal magnitude the later task vector wins, so equal magnitude with opposite signs gives
    the later sign. Applied to independently fine-tuned vectors this is the MaxAbs baseline.
    """
    tvs = _as_list(tvs)
    keys = _validate(tvs)
    _check_chunk(chunk_numel)
    out: TaskVector = {}
    with _fold_pool() as pool:
        # key-major: one merged tensor (at most a few MiB) stays in cache while T sources stream
        for key in keys:
            merged = tvs[0][key].detach().clone(memory_format=torch.contiguous_format)
            flat = merged.view(-1)
            for tv in tvs[1:]:
                src = _flat(tv[key])
                for sl in _slices(flat.numel(), chunk_numel):
                    _fold_max(flat[sl], src[sl], pool)
            out[key] = merged
    return out


maxabs = magmax


class RunningMagMax:
    """Constant-memory MagMax: fold task vectors in one at a time.

    Holds one merged vector; ``add`` updates it in place in one pass over memory (temporaries are
    at most one chunk of ``chunk_numel`` entries per parameter). Adding t1..tn gives exactly
    ``magmax([t1..tn])``. The first ``add`` copies, so inputs may be read-only or shared.
    """

    def __init__(self, *, chunk_numel: int | None = None) -> None:
        _check_chunk(chunk_numel)
        self._chunk_numel = chunk_numel
        self._value: TaskVector | None = None
        self.count = 0

    @classmethod
    def from_value(
        cls, value: Mapping[str, torch.Tensor], count: int, *, chunk_numel: int | None = None
    ) -> "RunningMagMax":
        """Resume from a persisted merged vector that already folds ``count`` task vectors."""
        if count < 1:
            raise ValueError(f"count must be >= 1 to resume from a value, got {count}")
        obj = cls(chunk_numel=chunk_numel)
        obj.add(value)
        obj.count = int(count)
        return obj

    @torch.no_grad()
    def add(self, tv: Mapping[str, torch.Tensor]) -> None:
        """Fold one more task vector into the running maximum-magnitude merge."""
        if not isinstance(tv, Mapping):
            raise ValueError(f"task vector is not a mapping (got {type(tv).__name__})")
        if self._value is None:
            for key, t in tv.items():
                _check_floating(key, t)
            self._value = {
                k: t.detach().clone(memory_format=torch.contiguous_format) for k, t in tv.items()
            }
        else:
            _check_compatible(self._value, tv, self.count)
            with _fold_pool() as pool:
                for key, cur in self._value.items():
                    flat = cur.view(-1)
                    src = _flat(tv[key])
                    for sl in _slices(flat.numel(), self._chunk_numel):
                        _fold_max(flat[sl], src[sl], pool)
        self.count += 1

    @property
    def value(self) -> TaskVector:
        """The merged vector. Its tensors are live: later ``add`` calls update them in place."""
        if self._value is None:
            raise ValueError("RunningMagMax is empty: add a task vector first")
        return dict(self._value)


# --------------------------------------------------------------------------------------------
# Averaging-type merges


@torch.no_grad()
def _sum(tvs: list[Mapping[str, torch.Tensor]], keys: list[str], chunk_numel: int | None) -> TaskVector:
    out: TaskVector = {}
    for key in keys:
        t0 = tvs[0][key].detach()
        acc = t0.to(_acc_dtype(t0.dtype), memory_format=torch.contiguous_format, copy=True)
        flat = acc.view(-1)
        for tv in tvs[1:]:
            src = _flat(tv[key])
            for sl in _slices(flat.numel(), chunk_numel):
                flat[sl].add_(src[sl])
        out[key] = acc
    return out


@torch.no_grad()
def task_arithmetic(
    tvs: Sequence[Mapping[str, torch.Tensor]], *, chunk_numel: int | None = None
) -> TaskVector:
    """The sum of the task vectors (Task Arithmetic); λ scales it when applied."""
    tvs = _as_list(tvs)
    keys = _validate(tvs)
    _check_chunk(chunk_numel)
    acc = _sum(tvs, keys, chunk_numel)
    return {k: acc[k].to(tvs[0][k].dtype) for k in keys}


@torch.no_grad()
def average(tvs: Sequence[Mapping[str, torch.Tensor]], *, chunk_numel: int | None = None) -> TaskVector:
    """Mean of the task vectors (Model Soup / Avg): ``task_arithmetic(tvs) / len(tvs)``."""
    tvs = _as_list(tvs)
    keys = _validate(tvs)
    _check_chunk(chunk_numel)
    acc = _sum(tvs, keys, chunk_numel)
    n = len(tvs)
    return {k: acc[k].div_(n).to(tvs[0][k].dtype) for k in keys}


def _key_seed(seed: int, key: str) -> int:
    # Stable across processes and Python versions (unlike hash()).
    digest = hashlib.sha256(f"{int(seed)}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@torch.no_grad()
def random_mix(
    tvs: Sequence[Mapping[str, torch.Tensor]], seed: int = 0, *, chunk_numel: int | None = None
) -> TaskVector:
    """RandMix: each element is taken from one task vector chosen uniformly at random.

    The choice is generated per tensor by a CPU ``torch.Generator`` seeded from ``(seed, key)``,
    so the result for one key depends only on the seed and that key (not on key order, device or
    chunk size) and is deterministic.
    """
    tvs = _as_list(tvs)
    keys = _validate(tvs)
    _check_chunk(chunk_numel)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    n = len(tvs)
    chunk = _stack_chunk(chunk_numel, n)
    out: TaskVector = {}
    for key in keys:
        merged = tvs[0][key].detach().clone(memory_format=torch.contiguous_format)
        flat = merged.view(-1)
        if n > 1:
            gen = torch.Generator(device="cpu")
            gen.manual_seed(_key_seed(seed, key))
            choice = torch.randint(0, n, (flat.numel(),), generator=gen).to(flat.device)
            srcs = [_flat(tv[key]) for tv in tvs]
            # one gather from a chunk-sized stack instead of T masked passes over the tensor
            for sl in _slices(flat.numel(), chunk):
                stack = torch.stack([s[sl] for s in srcs])
                flat[sl] = stack.gather(0, choice[sl].unsqueeze(0)).squeeze(0)
        out[key] = merged
    return out


# --------------------------------------------------------------------------------------------
# TIES


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


# --------------------------------------------------------------------------------------------
# k-th magnitude


@torch.no_grad()
def kth_magnitude(
    tvs: Sequence[Mapping[str, torch.Tensor]], k: int, *, chunk_numel: int | None = None
) -> TaskVector:
    """Per element, the entry with the k-th largest magnitude across ``tvs`` (k=1 is ``magmax``).

    Ranks by magnitude; among equal magnitudes the later task ranks higher (MagMax's tie rule).
    Norm equalisation, where wanted, is done by the caller with ``rescale_to_norm``.
    """
    tvs = _as_list(tvs)
    keys = _validate(tvs)
    _check_chunk(chunk_numel)
    n = len(tvs)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k must be an int in [1, {n}], got {k!r}")
    chunk_numel = _stack_chunk(chunk_numel, n)
    out: TaskVector = {}
    for key in keys:
        ref = tvs[0][key]
        merged = torch.empty(ref.shape, dtype=ref.dtype, device=ref.device)
        flat_out = merged.view(-1)
        # Later tasks first, so a stable descending sort puts the later one first on ties.
        srcs = [_flat(tv[key]) for tv in reversed(tvs)]
        for sl in _slices(flat_out.numel(), chunk_numel):
            stack = torch.stack([s[sl] for s in srcs])
            order = torch.sort(stack.abs(), dim=0, descending=True, stable=True).indices
            flat_out[sl] = stack.gather(0, order[k - 1 : k]).squeeze(0)
        out[key] = merged
    return out


# --------------------------------------------------------------------------------------------
# Utilities


@torch.no_grad()
def rescale_to_norm(tv: Mapping[str, torch.Tensor], norm: float) -> TaskVector:
    """Scale ``tv`` so that its global L2 norm (over all entries) equals ``norm``."""
    if not math.isfinite(norm) or norm < 0:
        raise ValueError(f"norm must be finite and >= 0, got {norm!r}")
    for key, t in tv.items():
        _check_floating(key, t)
    sq = sum(float(t.detach().double().pow(2).sum()) for t in tv.values())
    current = math.sqrt(sq)
    if current == 0.0:
        raise ValueError("cannot rescale a zero task vector")
    factor = norm / current
    return {k: t.detach() * factor for k, t in tv.items()}


@torch.no_grad()
def apply_task_vector(
    theta0: Mapping[str, torch.Tensor], tau: Mapping[str, torch.Tensor], lam: float
) -> dict[str, torch.Tensor]:
    """New state dict ``theta0 + lam * tau`` for keys in ``tau``; theta0's own tensors elsewhere.

    Results keep theta0's dtype. Raises ValueError naming the key if a tau key is missing from
    theta0 or shapes differ.
    """
    lam = float(lam)
    if not math.isfinite(lam):
        raise ValueError(f"lam must be finite, got {lam!r}")
    for key, t in tau.items():
        if key not in theta0:
            raise ValueError(f"task vector key {key!r} is not in theta0")
        _check_floating(key, t)
        base = theta0[key]
        if not isinstance(base, torch.Tensor) or not base.is_floating_point():
            raise ValueError(f"theta0 entry {key!r} is not a floating tensor")
        if tuple(base.shape) != tuple(t.shape):
            raise ValueError(
                f"shape mismatch for key {key!r}: theta0 {tuple(base.shape)} vs tau {tuple(t.shape)}"
            )
    out: dict[str, torch.Tensor] = {}
    for key, base in theta0.items():
        if key in tau:
            b = base.detach()
            acc = _acc_dtype(torch.promote_types(b.dtype, tau[key].dtype))
            out[key] = b.to(acc).add(tau[key].detach().to(acc), alpha=lam).to(b.dtype)
        else:
            out[key] = base
    return out


# --------------------------------------------------------------------------------------------
# The functions by their own names, for benchmarks and tests that iterate them. The methods a
# config can run (names, λ, which fine-tuning they merge) are the method table, pipeline.methods.

MERGE_FUNCTIONS: Mapping[str, Callable[..., TaskVector]] = types.MappingProxyType({
    "magmax": magmax,
    "average": average,
    "task_arithmetic": task_arithmetic,
    "random_mix": random_mix,
    "ties": ties,
    "kth_magnitude": kth_magnitude,
})
