"""MagMax and its family: per element, the entry of largest (or k-th largest) magnitude.

``magmax`` (``maxabs`` is the same function applied to independently fine-tuned vectors, the
paper's MaxAbs baseline), ``RunningMagMax`` (the same merge folded in one vector at a time, in
constant memory) and ``kth_magnitude``. On equal magnitude the later task vector wins.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import torch

from pipeline.merging.vectors import (
    TaskVector, _as_list, _check_chunk, _check_compatible, _check_floating, _flat, _slices, _stack_chunk, _validate,
)

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
        # imported on the first CPU fold, not with the package: numba is optional and slow to import
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
