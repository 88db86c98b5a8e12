"""Property tests of the merges' fast paths and of task splits.

test_merging.py holds the float32 properties (|magmax| = max |inputs|, RunningMagMax = magmax,
chunk independence) against naive references; test_splits.py that class-incremental splits of the
natural order partition the classes. Here the same laws are checked where the implementation has
separate code: every float dtype (the CPU fold works on integer views of the bits), IEEE special
values (±0, ±inf, subnormals, NaN), block and thread boundaries of the fold (forced small), the
automatic stack chunk, the sampled-bracket TIES threshold, and seeded class orders and domains.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import pipeline.merging as M
import pipeline.merging.baselines as B
import pipeline.merging.max_magnitude as MM
import pipeline.merging.ties_merging as TM
import pipeline.merging.vectors as V
from pipeline.data.splits import class_incremental_splits, class_order, domain_incremental_tasks, task_indices

PROPS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DTYPES = [torch.float16, torch.float32, torch.float64]
BITS = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32, torch.float64: torch.int64}

SPECIAL = [0.0, -0.0, 1.0, -1.0, 0.5, -0.5, math.inf, -math.inf, 1e-40, -1e-40, 5e-324, 6e-8, 65504.0, -3e38]
FINITE = st.one_of(st.sampled_from([v for v in SPECIAL if math.isfinite(v)]),
                   st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False))
ANY = st.one_of(st.sampled_from(SPECIAL + [math.nan]), st.floats(-1e4, 1e4, allow_nan=False))


def bits(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().view(BITS[x.dtype])


def same(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(bits(a[k]), bits(b[k])) for k in a)


@st.composite
def vectors(draw, values=FINITE, dtypes=DTYPES, min_t=1, max_t=5):
    """T task vectors with 1-3 keys of up to 40 entries, all in one drawn dtype."""
    dtype = draw(st.sampled_from(dtypes))
    sizes = draw(st.lists(st.integers(1, 40), min_size=1, max_size=3))
    n_tasks = draw(st.integers(min_t, max_t))
    return [{f"k{i}": torch.tensor(draw(st.lists(values, min_size=n, max_size=n)), dtype=torch.float64).to(dtype)
             for i, n in enumerate(sizes)} for _ in range(n_tasks)]


class small_blocks:
    """Force the fold's blocks, thread split and the stack chunk down to a few entries, with two
    torch threads, so tiny inputs cross every boundary the full-size code has."""

    def __enter__(self):
        self.saved = (MM._FOLD_BLOCK, MM._FOLD_PARALLEL_MIN, MM._TORCH_FOLD_BLOCK, V._STACK_BUDGET,
                      V._STACK_MIN_CHUNK, torch.get_num_threads())
        MM._FOLD_BLOCK, MM._FOLD_PARALLEL_MIN, MM._TORCH_FOLD_BLOCK, V._STACK_BUDGET, V._STACK_MIN_CHUNK = 3, 4, 5, 8, 1
        torch.set_num_threads(2)
        return self

    def __exit__(self, *exc):
        (MM._FOLD_BLOCK, MM._FOLD_PARALLEL_MIN, MM._TORCH_FOLD_BLOCK, V._STACK_BUDGET, V._STACK_MIN_CHUNK,
         threads) = self.saved
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------
# MagMax


def test_the_compiled_fold_is_there():
    # numba is a dependency: without it the fold silently takes the slower numpy path
    assert MM._fold_kernel() is not None


@PROPS
@given(st.lists(ANY, min_size=1, max_size=60), st.data(),
       st.sampled_from(DTYPES + [torch.bfloat16]), st.booleans(), st.booleans())
def test_fold_is_torch_where_bit_for_bit(cur, data, dtype, small, compiled):
    new = data.draw(st.lists(ANY, min_size=len(cur), max_size=len(cur)))
    c = torch.tensor(cur, dtype=torch.float64).to(dtype)
    n = torch.tensor(new, dtype=torch.float64).to(dtype)
    n[: len(cur) // 3] = -c[: len(cur) // 3]  # equal magnitudes of opposite sign: the new one wins
    expected = torch.where(n.abs() >= c.abs(), n, c)  # the definition, NaN semantics included
    saved = list(MM._FOLD_KERNEL)
    kernel = MM._fold_kernel() if compiled else None  # None: the numpy fallback
    MM._FOLD_KERNEL[:] = [kernel]
    try:
        with small_blocks() if small else nullcontext():
            with MM._fold_pool() as pool:
                MM._fold_max(c, n, pool)
    finally:
        MM._FOLD_KERNEL[:] = saved
    assert torch.equal(bits(c), bits(expected))


@PROPS
@given(vectors(), st.booleans(), st.one_of(st.none(), st.integers(1, 9)))
def test_magmax_laws_in_every_dtype(tvs, small, chunk):
    with small_blocks() if small else nullcontext():
        out = M.magmax(tvs, chunk_numel=chunk)
        run = M.RunningMagMax(chunk_numel=chunk)
        for tv in tvs:
            run.add(tv)
        running = run.value
    for k in out:
        stacked = torch.stack([tv[k] for tv in tvs])
        top = stacked.abs().max(0).values
        assert torch.equal(out[k].abs(), top)  # |magmax| is the elementwise max of |inputs|
        # and the value is that of the latest task among those of maximal magnitude
        last = (len(tvs) - 1) - (stacked.abs() == top).to(torch.int8).flip(0).argmax(0)
        assert torch.equal(bits(out[k]), bits(stacked.gather(0, last.unsqueeze(0)).squeeze(0)))
    assert same(running, out)
    assert same(M.magmax(tvs), out)


def test_magmax_picks_the_latest_of_equal_magnitudes():
    for dtype in DTYPES:
        a = {"w": torch.tensor([2.0, -2.0, 0.0, -0.0, 1.0], dtype=dtype)}
        b = {"w": torch.tensor([-2.0, 2.0, -0.0, 0.0, -1.0], dtype=dtype)}
        assert torch.equal(bits(M.magmax([a, b])["w"]), bits(b["w"]))
        assert torch.equal(bits(M.magmax([b, a])["w"]), bits(a["w"]))


# --------------------------------------------------------------------------------------------
# every method: results independent of the chunk and of the automatic stack chunk


def _call(name, tvs, **kw):
    extra = {"random_mix": {"seed": 3}, "ties": {"top_k": 0.3}, "kth_magnitude": {"k": len(tvs)}}.get(name, {})
    return M.MERGE_FUNCTIONS[name](tvs, **extra, **kw)


@PROPS
@given(vectors(max_t=4), st.integers(1, 9),
       st.sampled_from(["magmax", "average", "task_arithmetic", "random_mix", "ties", "kth_magnitude"]))
def test_every_method_is_independent_of_chunking(tvs, chunk, name):
    whole = _call(name, tvs)
    assert same(_call(name, tvs, chunk_numel=chunk), whole)
    with small_blocks():
        assert same(_call(name, tvs), whole)


@PROPS
@given(vectors(max_t=4), st.integers(0, 2**31 - 1))
def test_random_mix_takes_each_entry_from_the_seeded_choice(tvs, seed):
    out = M.random_mix(tvs, seed)
    for key in out:
        gen = torch.Generator().manual_seed(B._key_seed(seed, key))
        n = out[key].numel()
        choice = torch.randint(0, len(tvs), (n,), generator=gen) if len(tvs) > 1 else torch.zeros(n, dtype=torch.long)
        stacked = torch.stack([tv[key].reshape(-1) for tv in tvs])
        expected = stacked.gather(0, choice.unsqueeze(0)).squeeze(0)
        assert torch.equal(bits(out[key].reshape(-1)), bits(expected))


# --------------------------------------------------------------------------------------------
# the sampled-bracket TIES threshold


VALUE_KINDS = {
    "normal": lambda g, d: torch.randn(d, generator=g),
    "ties": lambda g, d: torch.randint(-3, 4, (d,), generator=g).float(),
    "mostly_zero": lambda g, d: torch.randn(d, generator=g) * (torch.rand(d, generator=g) < 0.1),
    "float64": lambda g, d: torch.randn(d, generator=g, dtype=torch.float64),
    "half": lambda g, d: torch.randn(d, generator=g).half(),
}


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(VALUE_KINDS)), st.integers(2, 3000), st.floats(0.001, 0.999),
       st.integers(1, 50), st.integers(1, 500), st.integers(0, 10**6), st.booleans())
def test_bracketed_threshold_is_exact_or_declines(kind, d, top_k, stride, chunk, seed, with_nan):
    g = torch.Generator().manual_seed(seed)
    flat = VALUE_KINDS[kind](g, d)
    if with_nan:
        flat[seed % d] = math.nan
    tv = {"a": flat[: d // 2], "b": flat[d // 2:]}
    n_keep = max(1, int(d * top_k))
    assume(n_keep < d)
    dtype = TM._common_dtype(tv)
    got = TM._nth_largest_abs_bracketed(tv, n_keep, dtype, chunk, stride=stride)
    if with_nan:
        assert got is None  # NaNs go to the exact fallback, which orders them as it always did
        return
    expected = torch.cat([t.abs().to(dtype) for t in tv.values()]).kthvalue(d - n_keep + 1).values
    assert got is None or (got.dtype == expected.dtype and torch.equal(got, expected))


def test_bracketed_threshold_takes_the_fast_path_on_model_like_vectors():
    g = torch.Generator().manual_seed(0)
    tv = {"w": torch.randn(300, 400, generator=g) * 0.01, "b": torch.randn(5000, generator=g)}
    d = 300 * 400 + 5000
    for top_k in (0.01, 0.2, 0.5):
        n_keep = int(d * top_k)
        got = TM._nth_largest_abs_bracketed(tv, n_keep, torch.float32, 1 << 14)
        assert got is not None
        expected = torch.cat([t.abs().reshape(-1) for t in tv.values()]).kthvalue(d - n_keep + 1).values
        assert torch.equal(got, expected)
    # and trim_threshold uses it above _BRACKET_MIN with the same result as below it
    old = TM._BRACKET_MIN
    try:
        TM._BRACKET_MIN = 1
        fast = M.trim_threshold(tv, 0.2)
    finally:
        TM._BRACKET_MIN = old
    assert torch.equal(fast, M.trim_threshold(tv, 0.2))


# --------------------------------------------------------------------------------------------
# splits: partitions, whatever the order


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 400), st.integers(0, 2**32 - 1), st.data())
def test_seeded_class_orders_split_into_a_partition(num_classes, seed, data):
    tasks = data.draw(st.integers(1, num_classes))
    order = class_order("any", num_classes, seed)
    assert sorted(order) == list(range(num_classes))
    splits = class_incremental_splits(order, tasks)
    flat = [c for s in splits for c in s]
    assert sorted(flat) == list(range(num_classes)) and len(flat) == num_classes  # each class once
    assert all(s for s in splits) and max(map(len, splits)) - min(map(len, splits)) <= 1
    # and the samples of the tasks are a partition of the samples
    targets = np.asarray(data.draw(st.lists(st.integers(0, num_classes - 1), max_size=200)), dtype=np.int64)
    idx = np.concatenate([task_indices(targets, s) for s in splits])
    assert np.array_equal(np.sort(idx), np.arange(targets.size))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(["clipart", "sketch", "real", "infograph"]), min_size=1, max_size=100), st.randoms())
def test_domain_tasks_partition_the_samples(domains, rnd):
    present = sorted(set(domains))
    rnd.shuffle(present)
    tasks = domain_incremental_tasks(np.asarray(domains), present)
    idx = np.concatenate(tasks)
    assert np.array_equal(np.sort(idx), np.arange(len(domains)))
    for task, domain in zip(tasks, present):
        assert all(domains[i] == domain for i in task)


@pytest.mark.parametrize("bad", [0, 11])
def test_split_count_outside_the_classes_is_refused(bad):
    with pytest.raises(ValueError, match=f"num_tasks={bad}"):
        class_incremental_splits(class_order("x", 10, 1), bad)
