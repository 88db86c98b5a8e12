"""Tests for pipeline.merging: exact hand-computed cases, a reference TIES, and properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.merging import (
    MERGE_FUNCTIONS,
    RunningMagMax,
    apply_task_vector,
    average,
    kth_magnitude,
    magmax,
    maxabs,
    random_mix,
    rescale_to_norm,
    task_arithmetic,
    ties,
    trim_threshold,
)

PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def t(*vals: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.tensor(vals, dtype=dtype)


def bits(x: torch.Tensor) -> torch.Tensor:
    """Bit pattern, so -0.0 and 0.0 are told apart."""
    return x.contiguous().view({torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16}[x.dtype])


def same(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(
        a[k].shape == b[k].shape and a[k].dtype == b[k].dtype and torch.equal(bits(a[k]), bits(b[k])) for k in a
    )


# --------------------------------------------------------------------------------------------
# strategies

VALUES = st.one_of(
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5]),
    st.floats(-10, 10, allow_nan=False, allow_infinity=False, width=32),
)


@st.composite
def task_vector_lists(draw, min_t: int = 1, max_t: int = 5):
    n_keys = draw(st.integers(1, 3))
    shapes = [tuple(draw(st.lists(st.integers(1, 4), max_size=2))) for _ in range(n_keys)]
    n_tasks = draw(st.integers(min_t, max_t))
    tvs = []
    for _ in range(n_tasks):
        tv = {}
        for i, shape in enumerate(shapes):
            n = math.prod(shape)
            tv[f"layer{i}.weight"] = t(*draw(st.lists(VALUES, min_size=n, max_size=n))).reshape(shape)
        tvs.append(tv)
    return tvs


# --------------------------------------------------------------------------------------------
# reference implementations (naive, flattened)


def ref_magmax(tvs):
    out = {}
    for k in tvs[0]:
        cur = tvs[0][k].clone()
        for tv in tvs[1:]:
            for i in range(cur.numel()):
                if abs(tv[k].reshape(-1)[i]) >= abs(cur.reshape(-1)[i]):
                    cur.view(-1)[i] = tv[k].reshape(-1)[i]
        out[k] = cur
    return out


def ref_ties(tvs, top_k):
    """Mirror of the TIES reference code (vstack, top-k mask, mass sign + majority, dis-mean),
    except that it keeps n = max(1, int(d*top_k)) entries, not the reference's n + 1, and leaves
    elements with no elected sign at all at 0."""
    keys = list(tvs[0])
    flat = torch.vstack([torch.cat([tv[k].reshape(-1) for k in keys]) for tv in tvs])
    n, d = flat.shape
    n_keep = max(1, int(d * top_k))
    kk = d - n_keep + 1
    if n_keep < d:
        kth = flat.abs().kthvalue(kk, dim=1, keepdim=True).values
        flat = flat * (flat.abs() >= kth)
    def rowsum(x):  # fixed summation order, as in pipeline.merging
        return sum(x[1:], x[0].clone())

    sign = torch.sign(rowsum(flat))
    sign[sign == 0] = torch.sign(sign.sum())
    # (the reference's where(sign > 0, flat > 0, flat < 0) would pick the negative entries where
    # even the majority is undecided; we leave those elements at 0)
    keep = torch.where(sign > 0, flat > 0, (sign < 0) & (flat < 0))
    sel = flat * keep
    merged = rowsum(sel) / (sel != 0).sum(0).clamp(min=1)
    out, pos = {}, 0
    for k in keys:
        numel = tvs[0][k].numel()
        out[k] = merged[pos : pos + numel].reshape(tvs[0][k].shape)
        pos += numel
    return out


def ref_kth(tvs, k):
    out = {}
    for key in tvs[0]:
        flat = [tv[key].reshape(-1) for tv in tvs]
        res = torch.empty_like(flat[0])
        for i in range(res.numel()):
            # rank by (magnitude, task index), both descending: later wins ties
            ranked = sorted(range(len(tvs)), key=lambda j: (abs(float(flat[j][i])), j), reverse=True)
            res[i] = flat[ranked[k - 1]][i]
        out[key] = res.reshape(tvs[0][key].shape)
    return out


# --------------------------------------------------------------------------------------------
# magmax


def test_magmax_exact_with_ties_and_zeros():
    a = {"w": t(1, -2, 3, 0, -0.0, 5), "s": torch.tensor(2.0)}
    b = {"w": t(-1, 2, -1, -0.0, 0, -4), "s": torch.tensor(-2.0)}
    c = {"w": t(0.5, -2, 1, 0, 0, 4), "s": torch.tensor(1.0)}
    out = magmax([a, b, c])
    # equal magnitude: the later task wins (sign included); zeros: later zero (with its sign)
    assert same(out, {"w": t(-1, -2, 3, 0, 0, 5), "s": torch.tensor(-2.0)})
    assert same(magmax([a, b]), {"w": t(-1, 2, 3, -0.0, 0, 5), "s": torch.tensor(-2.0)})
    assert maxabs is magmax


def test_magmax_single_vector_is_copy():
    a = {"w": t(1, -2)}
    out = magmax([a])
    assert same(out, a)
    out["w"][0] = 9.0
    assert a["w"][0] == 1.0


def test_magmax_does_not_modify_inputs_and_accepts_noncontiguous():
    base = torch.arange(12.0).reshape(3, 4) - 6
    a = {"w": base.t()}  # non-contiguous
    b = {"w": (-base.t()).contiguous() * 0.5}
    before = a["w"].clone()
    out = magmax([a, b], chunk_numel=5)
    assert torch.equal(a["w"], before)
    assert torch.equal(out["w"], a["w"])  # |a| > |b| everywhere except the zero entry
    assert out["w"].is_contiguous()


@PROPS
@given(task_vector_lists(), st.integers(1, 7))
def test_magmax_properties(tvs, chunk):
    out = magmax(tvs)
    ref = ref_magmax(tvs)
    assert same(out, ref)
    for k in out:
        stacked = torch.stack([tv[k] for tv in tvs]).abs()
        assert torch.equal(out[k].abs(), stacked.max(0).values)
    assert same(magmax(tvs, chunk_numel=chunk), out)


@PROPS
@given(task_vector_lists(), st.one_of(st.none(), st.integers(1, 7)))
def test_running_magmax_equals_magmax(tvs, chunk):
    run = RunningMagMax(chunk_numel=chunk)
    for i, tv in enumerate(tvs, start=1):
        run.add(tv)
        assert run.count == i
        assert same(run.value, magmax(tvs[:i]))


def test_running_magmax_copies_first_and_keeps_inputs():
    a = {"w": t(1, -2, 3)}
    b = {"w": t(-4, 1, 3)}
    a_before, b_before = a["w"].clone(), b["w"].clone()
    run = RunningMagMax()
    run.add(a)
    run.add(b)
    assert torch.equal(a["w"], a_before) and torch.equal(b["w"], b_before)
    assert torch.equal(run.value["w"], t(-4, -2, 3))
    # resume from a persisted value
    resumed = RunningMagMax.from_value(run.value, run.count)
    c = {"w": t(0, 5, -3)}
    resumed.add(c)
    assert resumed.count == 3
    assert same(resumed.value, magmax([a, b, c]))


def test_running_magmax_errors():
    run = RunningMagMax()
    with pytest.raises(ValueError, match="empty"):
        _ = run.value
    run.add({"w": t(1, 2)})
    with pytest.raises(ValueError, match="'w'"):
        run.add({"w": t(1, 2, 3)})
    with pytest.raises(ValueError, match="'v'"):
        run.add({"w": t(1, 2), "v": t(1)})
    with pytest.raises(ValueError, match="'w'"):
        run.add({"w": t(1, 2, dtype=torch.float64)})
    with pytest.raises(ValueError):
        RunningMagMax(chunk_numel=0)


# --------------------------------------------------------------------------------------------
# average, task arithmetic, random mix


def test_average_and_task_arithmetic_exact():
    a = {"w": t(1, -2, 0), "b": t(4)}
    b = {"w": t(3, 2, 0), "b": t(-1)}
    c = {"w": t(2, 3, 0), "b": t(0)}
    assert same(task_arithmetic([a, b, c]), {"w": t(6, 3, 0), "b": t(3)})
    assert same(average([a, b, c]), {"w": t(2, 1, 0), "b": t(1)})


def test_average_half_precision_keeps_dtype():
    a = {"w": t(1, 2, dtype=torch.float16)}
    b = {"w": t(3, 4, dtype=torch.float16)}
    out = average([a, b])
    assert out["w"].dtype == torch.float16
    assert torch.equal(out["w"], t(2, 3, dtype=torch.float16))


@PROPS
@given(task_vector_lists(), st.integers(1, 7))
def test_average_is_task_arithmetic_over_t(tvs, chunk):
    ta = task_arithmetic(tvs)
    avg = average(tvs, chunk_numel=chunk)
    assert same(avg, {k: v / len(tvs) for k, v in ta.items()})
    assert same(task_arithmetic(tvs, chunk_numel=chunk), ta)


def test_random_mix_exact_and_deterministic():
    a = {"w": torch.zeros(1000), "v": torch.zeros(3, 3)}
    b = {"w": torch.ones(1000), "v": torch.ones(3, 3)}
    m1 = random_mix([a, b], seed=3)
    m2 = random_mix([a, b], seed=3)
    assert same(m1, m2)
    frac = m1["w"].mean().item()
    assert 0.4 < frac < 0.6  # about half from each
    assert not torch.equal(random_mix([a, b], seed=4)["w"], m1["w"])
    # the draw for a key depends on (seed, key) only, not on the other keys
    assert torch.equal(random_mix([{"w": a["w"]}, {"w": b["w"]}], seed=3)["w"], m1["w"])
    with pytest.raises(ValueError):
        random_mix([a, b], seed=1.5)


@PROPS
@given(task_vector_lists(), st.integers(0, 2**31), st.integers(1, 7))
def test_random_mix_picks_from_inputs(tvs, seed, chunk):
    out = random_mix(tvs, seed)
    assert same(random_mix(tvs, seed, chunk_numel=chunk), out)
    for k in out:
        stacked = bits(torch.stack([tv[k] for tv in tvs]))
        assert bool((stacked == bits(out[k]).unsqueeze(0)).any(0).all())


# --------------------------------------------------------------------------------------------
# TIES


def test_trim_threshold_exact_and_ties_at_threshold():
    tv = {"a": t(3, -3, 1), "b": t(0, 0)}
    # d=5, top 20% -> keep n=1 entry: threshold is the largest |.| = 3 -> both 3s kept (tie)
    assert trim_threshold(tv, 0.2).item() == 3.0
    assert trim_threshold(tv, 0.2, chunk_numel=2).item() == 3.0
    assert trim_threshold(tv, 0.1).item() == 3.0  # n = max(1, int(0.5))
    assert trim_threshold(tv, 0.4).item() == 3.0  # n=2 -> 2nd largest
    assert trim_threshold(tv, 0.6).item() == 1.0  # n=3
    assert trim_threshold(tv, 0.8).item() == 0.0  # n=4 -> the zeros are tied and kept
    assert trim_threshold(tv, 1.0) is None
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            trim_threshold(tv, bad)


def test_ties_exact_trim_elect_mean():
    a = {"w": t(3, -3, 1, 0, 0.5), "z": t(0, 0)}
    b = {"w": t(-1, -2, 4, 0, 0.1), "z": t(0, 0)}
    c = {"w": t(2, 1, 0.2, 0, -1), "z": t(0, 0)}
    # d=7, top_k=0.3 keeps n=int(2.1)=2 per task: threshold = 2nd largest |.|
    # a: 3,3,...   -> thr 3 -> kept w = 3,-3,0,0,0
    # b: 4,2,...   -> thr 2 -> kept w = 0,-2,4,0,0
    # c: 2,1,1,... -> thr 1 -> kept w = 2,1,0,0,-1 (the two 1s tie at the threshold: both kept)
    # sums: 5, -4, 4, 0 (nothing kept), -1 -> signs + - + 0 -
    # mean of the agreeing kept entries: (3+2)/2, (-3-2)/2, 4, 0, -1
    out = ties([a, b, c], top_k=0.3)
    assert same(out, {"w": t(2.5, -2.5, 4, 0, -1), "z": t(0, 0)})
    assert same(ties([a, b, c], top_k=0.3, chunk_numel=2), out)
    for k, v in ref_ties([a, b, c], 0.3).items():
        torch.testing.assert_close(out[k], v, rtol=0, atol=0)


def test_ties_zero_sum_resolved_by_majority_across_keys():
    # keep everything (top_k=1); element x0 sums to 0, the elected majority (over all keys) is +
    a = {"x": t(1), "y": t(1, 2)}
    b = {"x": t(-1), "y": t(1, 3)}
    assert same(ties([a, b], top_k=1.0), {"x": t(1), "y": t(1, 2.5)})
    assert same(ties([a, b], top_k=1.0, resolve_zero="zero"), {"x": t(0), "y": t(1, 2.5)})
    a = {"x": t(1), "y": t(-1, -2)}
    b = {"x": t(-1), "y": t(-1, -3)}
    assert same(ties([a, b], top_k=1.0), {"x": t(-1), "y": t(-1, -2.5)})
    # balanced majority: stays 0
    a = {"x": t(1), "y": t(1, -2)}
    b = {"x": t(-1), "y": t(1, -3)}
    assert same(ties([a, b], top_k=1.0), {"x": t(0), "y": t(1, -2.5)})
    with pytest.raises(ValueError):
        ties([a, b], resolve_zero="minority")


@PROPS
@given(task_vector_lists(), st.sampled_from([0.1, 0.2, 0.5, 0.8, 1.0]), st.integers(1, 7))
def test_ties_matches_reference_and_chunking(tvs, top_k, chunk):
    out = ties(tvs, top_k)
    ref = ref_ties(tvs, top_k)
    for k in out:
        torch.testing.assert_close(out[k], ref[k], rtol=1e-6, atol=1e-6)
    assert same(ties(tvs, top_k, chunk_numel=chunk), out)


@PROPS
@given(
    st.lists(VALUES, min_size=1, max_size=40),
    st.sampled_from([torch.float16, torch.float32, torch.float64]),
    st.sampled_from([0.05, 0.2, 0.5, 0.9]),
    st.integers(1, 9),
)
def test_trim_threshold_radix_equals_kthvalue(vals, dtype, top_k, chunk):
    n = len(vals)
    tv = {"a": t(*vals[: n // 2], dtype=dtype), "b": t(*vals[n // 2 :], dtype=dtype)}
    full = trim_threshold(tv, top_k)
    chunked = trim_threshold(tv, top_k, chunk_numel=chunk)
    if full is None:
        assert chunked is None
    else:
        assert full.dtype == chunked.dtype
        assert torch.equal(full, chunked)


def test_trim_threshold_radix_large_random():
    g = torch.Generator().manual_seed(0)
    tv = {"a": torch.randn(5000, generator=g), "b": torch.randn(70, 30, generator=g).double().float()}
    for top_k in (0.01, 0.2, 0.77):
        assert torch.equal(trim_threshold(tv, top_k), trim_threshold(tv, top_k, chunk_numel=333))


# --------------------------------------------------------------------------------------------
# k-th magnitude


def test_kth_magnitude_exact():
    a = {"w": t(1, -2, 3, 0)}
    b = {"w": t(-1, 2, -1, -0.0)}
    c = {"w": t(5, 2, 0, 0)}
    # ranking per element, later first on ties:
    # e0: 5(c), -1(b), 1(a); e1: 2(c), 2(b), -2(a); e2: 3(a), -1(b), 0(c); e3: 0(c), -0(b), 0(a)
    assert same(kth_magnitude([a, b, c], 1), {"w": t(5, 2, 3, 0)})
    assert same(kth_magnitude([a, b, c], 2), {"w": t(-1, 2, -1, -0.0)})
    assert same(kth_magnitude([a, b, c], 3), {"w": t(1, -2, 0, 0)})
    for bad in (0, 4, 1.0, True):
        with pytest.raises(ValueError):
            kth_magnitude([a, b, c], bad)


@PROPS
@given(task_vector_lists(), st.data(), st.integers(1, 7))
def test_kth_magnitude_properties(tvs, data, chunk):
    assert same(kth_magnitude(tvs, 1), magmax(tvs))
    k = data.draw(st.integers(1, len(tvs)))
    out = kth_magnitude(tvs, k)
    assert same(out, ref_kth(tvs, k))
    assert same(kth_magnitude(tvs, k, chunk_numel=chunk), out)


# --------------------------------------------------------------------------------------------
# utilities and validation


def test_rescale_to_norm():
    tv = {"a": t(3, 0), "b": t(4)}
    out = rescale_to_norm(tv, 10.0)
    assert same(out, {"a": t(6, 0), "b": t(8)})
    with pytest.raises(ValueError):
        rescale_to_norm({"a": t(0, 0)}, 1.0)
    with pytest.raises(ValueError):
        rescale_to_norm(tv, -1.0)


def test_apply_task_vector():
    theta0 = {"w": t(1, 2), "b": t(0.5), "idx": torch.tensor([1, 2]), "h": t(1, 1, dtype=torch.float16)}
    tau = {"w": t(2, -2), "h": t(1, 3, dtype=torch.float16)}
    out = apply_task_vector(theta0, tau, 0.5)
    assert torch.equal(out["w"], t(2, 1))
    assert out["b"] is theta0["b"] and out["idx"] is theta0["idx"]
    assert out["h"].dtype == torch.float16 and torch.equal(out["h"], t(1.5, 2.5, dtype=torch.float16))
    assert list(out) == list(theta0)
    assert torch.equal(theta0["w"], t(1, 2))  # not modified
    with pytest.raises(ValueError, match="'x'"):
        apply_task_vector(theta0, {"x": t(1)}, 1.0)
    with pytest.raises(ValueError, match="'w'"):
        apply_task_vector(theta0, {"w": t(1, 2, 3)}, 1.0)
    with pytest.raises(ValueError, match="'idx'"):
        apply_task_vector(theta0, {"idx": t(1, 2)}, 1.0)
    with pytest.raises(ValueError):
        apply_task_vector(theta0, tau, float("nan"))


def _call(name, tvs):
    kwargs = {"random_mix": {"seed": 0}, "kth_magnitude": {"k": 1}}.get(name, {})
    return MERGE_FUNCTIONS[name](tvs, **kwargs)


@pytest.mark.parametrize("name", ["magmax", "average", "task_arithmetic", "random_mix", "ties", "kth_magnitude"])
def test_methods_validate_inputs(name):
    a = {"w": t(1, 2), "b": t(1)}
    with pytest.raises(ValueError):
        _call(name, [])
    with pytest.raises(ValueError, match="'b'"):
        _call(name, [a, {"w": t(1, 2)}])
    with pytest.raises(ValueError, match="'c'"):
        _call(name, [a, {"w": t(1, 2), "b": t(1), "c": t(1)}])
    with pytest.raises(ValueError, match="'w'"):
        _call(name, [a, {"w": t(1, 2, 3), "b": t(1)}])
    with pytest.raises(ValueError, match="'i'"):
        _call(name, [{"i": torch.tensor([1, 2])}])
    with pytest.raises(ValueError, match="'i'"):
        _call(name, [a | {"i": t(1)}, a | {"i": torch.tensor([1])}])
    with pytest.raises(ValueError):
        _call(name, a)  # a single mapping, not a list
    out = _call(name, [a, a])
    assert list(out) == ["w", "b"]
    assert all(out[k].shape == a[k].shape and out[k].dtype == a[k].dtype for k in out)


def test_merge_functions_by_name_are_read_only():
    assert set(MERGE_FUNCTIONS) == {"magmax", "average", "task_arithmetic", "random_mix", "ties", "kth_magnitude"}
    with pytest.raises(TypeError):
        MERGE_FUNCTIONS["first"] = magmax  # type: ignore[index]


def test_gradient_tensors_are_detached():
    p = torch.nn.Parameter(t(1, -3))
    out = magmax([{"w": p}, {"w": t(2, 2)}])
    assert not out["w"].requires_grad
    assert torch.equal(out["w"], t(2, -3))


def test_chunking_is_exact_on_larger_random_vectors():
    g = torch.Generator().manual_seed(1)
    tvs = [{"a": torch.randn(40, 75, generator=g), "b": torch.randn(333, generator=g)} for _ in range(4)]
    for name, kwargs in [
        ("magmax", {}),
        ("average", {}),
        ("task_arithmetic", {}),
        ("random_mix", {"seed": 5}),
        ("ties", {"top_k": 0.2}),
        ("kth_magnitude", {"k": 2}),
    ]:
        assert same(MERGE_FUNCTIONS[name](tvs, chunk_numel=257, **kwargs), MERGE_FUNCTIONS[name](tvs, **kwargs)), name
    ref = ref_ties(tvs, 0.2)
    for k, v in ties(tvs).items():
        torch.testing.assert_close(v, ref[k], rtol=1e-6, atol=1e-7)
