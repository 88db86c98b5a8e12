"""Tests for pipeline.analysis."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.analysis import (
    Histogram,
    LayerMagnitudes,
    block_index,
    contributions,
    entry_histogram,
    histogram_edges,
    kth_magnitude_merges,
    layer_type,
    leave_one_out,
    magnitude_prune,
    mean_magnitude_by_layer,
    sign_conflicts,
    update_consistency,
)
from pipeline.merging import average, magmax, ties

PROPS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def t(*vals: float) -> torch.Tensor:
    return torch.tensor(vals, dtype=torch.float32)


VALUES = st.one_of(
    st.sampled_from([0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5]),
    st.floats(-10, 10, allow_nan=False, width=32),
)


@st.composite
def task_vector_lists(draw, min_t: int = 1, max_t: int = 5):
    sizes = draw(st.lists(st.integers(1, 6), min_size=1, max_size=3))
    n_tasks = draw(st.integers(min_t, max_t))
    return [
        {f"p{i}": t(*draw(st.lists(VALUES, min_size=n, max_size=n))) for i, n in enumerate(sizes)}
        for _ in range(n_tasks)
    ]


# --------------------------------------------------------------------------------------------
# sign conflicts


def test_sign_conflicts_exact():
    a = {"w": t(1, -0.5, 2, 0)}
    b = {"w": t(-1, -0.5, -0.1, 3)}
    # no trimming: conflicts at e0 (1 vs -1) and e2 (2 vs -0.1); e1 agrees, e3 has one sign
    assert sign_conflicts([a, b], top_k=1.0) == 0.5
    # top 50% (n=2 per task): a keeps 1, 2; b keeps -1, 3 -> only e0 conflicts
    assert sign_conflicts([a, b], top_k=0.5) == 0.25
    # ties at the threshold are kept: top 25% (n=1) of c keeps both |2| entries
    c = {"w": t(2, -2, 0, 0)}
    d = {"w": t(-3, 1, 0, 0)}
    # c keeps 2,-2; d keeps -3 -> conflict at e0 only
    assert sign_conflicts([c, d], top_k=0.25) == 0.25
    assert sign_conflicts([c, d], top_k=0.25, chunk_numel=1) == 0.25


def test_sign_conflicts_counts_all_keys_in_denominator():
    a = {"w": t(1, 1), "z": t(0, 0, 0)}
    b = {"w": t(-1, 1), "z": t(0, 0, 0)}
    assert sign_conflicts([a, b], top_k=1.0) == pytest.approx(1 / 5)


@PROPS
@given(task_vector_lists(), st.sampled_from([0.1, 0.2, 0.5, 1.0]), st.integers(1, 5))
def test_sign_conflicts_properties(tvs, top_k, chunk):
    value = sign_conflicts(tvs, top_k)
    assert 0.0 <= value <= 1.0
    assert sign_conflicts(tvs, top_k, chunk_numel=chunk) == value
    assert sign_conflicts([tvs[0]] * 3, top_k) == 0.0
    assert sign_conflicts([tvs[0]], top_k) == 0.0


def test_sign_conflicts_validation():
    with pytest.raises(ValueError):
        sign_conflicts([])
    with pytest.raises(ValueError, match="'w'"):
        sign_conflicts([{"w": t(1)}, {"w": t(1, 2)}])


# --------------------------------------------------------------------------------------------
# magnitude pruning


def test_magnitude_prune_exact():
    tv = {"a": t(4, -3, 2, -1), "b": t(0.5, 0)}
    assert torch.equal(magnitude_prune(tv, 0.5, "highest")["a"], t(4, -3, 2, 0))
    assert torch.equal(magnitude_prune(tv, 0.5, "highest")["b"], t(0, 0))
    assert torch.equal(magnitude_prune(tv, 0.5, "lowest")["a"], t(0, 0, 0, -1))
    assert torch.equal(magnitude_prune(tv, 0.5, "lowest")["b"], t(0.5, 0))
    for mode in ("highest", "lowest", "random"):
        assert torch.equal(magnitude_prune(tv, 0.0, mode)["a"], torch.zeros(4))
        assert torch.equal(magnitude_prune(tv, 1.0, mode)["a"], tv["a"])
    # ties at the threshold are kept
    tied = {"a": t(2, -2, 1, 0)}
    assert torch.equal(magnitude_prune(tied, 0.25, "highest")["a"], t(2, -2, 0, 0))
    assert torch.equal(magnitude_prune(tied, 0.25, "lowest")["a"], t(0, 0, 0, 0))
    assert torch.equal(magnitude_prune(tied, 0.5, "lowest")["a"], t(0, 0, 1, 0))


def test_magnitude_prune_random_is_seeded():
    tv = {"a": torch.arange(1.0, 10001.0)}
    p1 = magnitude_prune(tv, 0.3, "random", seed=1)
    assert torch.equal(p1["a"], magnitude_prune(tv, 0.3, "random", seed=1)["a"])
    assert not torch.equal(p1["a"], magnitude_prune(tv, 0.3, "random", seed=2)["a"])
    kept = (p1["a"] != 0).float().mean().item()
    assert 0.27 < kept < 0.33
    assert bool(((p1["a"] == 0) | (p1["a"] == tv["a"])).all())


def test_magnitude_prune_validation():
    with pytest.raises(ValueError):
        magnitude_prune({"a": t(1)}, 1.5)
    with pytest.raises(ValueError):
        magnitude_prune({"a": t(1)}, 0.5, "median")


# --------------------------------------------------------------------------------------------
# contributions


def test_contributions_exact():
    a = {"w": t(3, 1, 0, 2)}
    b = {"w": t(-1, -2, 0, -2)}
    c = {"w": t(0, 2, 0, 1)}
    # e0 -> a; e1: |b|=|c| -> c (later); e2 all zero -> ignored; e3: |a|=|b| -> b
    assert contributions([a, b, c]) == pytest.approx([1 / 3, 1 / 3, 1 / 3])
    assert contributions([a, b, c], ignore_all_zero=False) == pytest.approx([1 / 4, 1 / 4, 2 / 4])
    with pytest.raises(ValueError):
        contributions([{"w": t(0, 0)}, {"w": t(0, 0)}])


@PROPS
@given(task_vector_lists())
def test_contributions_properties(tvs):
    shares = contributions(tvs, ignore_all_zero=False)
    assert len(shares) == len(tvs)
    assert sum(shares) == pytest.approx(1.0)
    assert all(0.0 <= s <= 1.0 for s in shares)
    # consistent with magmax: the winner's value is the merged value
    merged = magmax(tvs)
    total = sum(v.numel() for v in merged.values())
    won_by_last = sum(int((merged[k] == tvs[-1][k]).sum()) for k in merged)
    assert shares[-1] * total <= won_by_last + 1e-9


# --------------------------------------------------------------------------------------------
# update consistency


def test_update_consistency_exact():
    # cumulative sequential task vectors for 3 tasks, 4 parameters
    tv1 = {"w": t(1, 1, -1, 0)}
    tv2 = {"w": t(2, 0.5, 1, 0)}
    tv3 = {"w": t(3, 2, 0.5, 0)}
    # steps: s1 = tv1, s2 = tv2 - tv1 = (1,-0.5,2,0), s3 = tv3 - tv2 = (1,1.5,-0.5,0)
    # final signs: + + + 0
    # e0: +,+,+ -> 3; e1: +,-,+ -> 2; e2: -,+,- -> 1; e3: final 0 -> 0
    out = update_consistency([tv1, tv2, tv3])
    assert out == pytest.approx({3: 3.0, 2: 2.0, 1: 0.5, 0: 0.0})
    # reference = task 2's vector (signs + + + 0, magnitudes 2, 0.5, 1, 0): same counts here
    assert update_consistency([tv1, tv2, tv3], reference=1) == pytest.approx({3: 2.0, 2: 0.5, 1: 1.0, 0: 0.0})
    with pytest.raises(ValueError):
        update_consistency([tv1], reference=2)


def test_update_consistency_groups_average():
    tv1 = {"w": t(1, -2, 0.5)}
    tv2 = {"w": t(3, -4, 0.25)}
    # steps s1 = (1,-2,0.5), s2 = (2,-2,-0.25); final signs + - +
    # e0: 2, e1: 2, e2: 1
    assert update_consistency([tv1, tv2]) == pytest.approx({2: 3.5, 1: 0.25})


# --------------------------------------------------------------------------------------------
# layer-wise magnitudes


def test_layer_type_and_block_index():
    cases = {
        "transformer.resblocks.3.attn.in_proj_weight": ("attn", 3),
        "transformer.resblocks.3.attn.out_proj.weight": ("attn", 3),
        "visual.transformer.resblocks.11.mlp.c_fc.weight": ("mlp", 11),
        "transformer.resblocks.0.mlp.c_proj.bias": ("mlp", 0),
        "transformer.resblocks.7.ln_1.weight": ("ln", 7),
        "transformer.resblocks.7.ln_2.bias": ("ln", 7),
        "ln_pre.weight": ("ln", None),
        "ln_post.weight": ("ln", None),
        "conv1.weight": ("embed", None),
        "positional_embedding": ("embed", None),
        "class_embedding": ("embed", None),
        "proj": ("other", None),
    }
    for name, (kind, block) in cases.items():
        assert layer_type(name) == kind, name
        assert block_index(name) == block, name


def test_mean_magnitude_by_layer_exact():
    tv = {
        "conv1.weight": t(1, -1, 1, -1),
        "positional_embedding": t(3, 3),
        "transformer.resblocks.0.ln_1.weight": t(10, -10),
        "transformer.resblocks.0.ln_1.bias": t(100, 100),
        "transformer.resblocks.0.attn.in_proj_weight": t(2, -2, 2, -2, 2, -2),
        "transformer.resblocks.0.attn.in_proj_bias": t(50, 50, 50),
        "transformer.resblocks.1.mlp.c_fc.weight": t(1, 3),
        "transformer.resblocks.1.attn.out_proj.weight": t(4, 4),
        "proj": t(-5),
    }
    out = mean_magnitude_by_layer(tv)
    assert isinstance(out, LayerMagnitudes)
    assert out.by_type == pytest.approx({"attn": (12 + 8) / 8, "embed": 10 / 6, "ln": 10.0, "mlp": 2.0, "other": 5.0})
    assert out.by_block == pytest.approx({0: (20 + 12) / 8, 1: (4 + 8) / 4})
    with_bias = mean_magnitude_by_layer(tv, include_bias=True)
    assert with_bias.by_type["ln"] == pytest.approx((20 + 200) / 4)
    assert with_bias.by_block[0] == pytest.approx((20 + 200 + 12 + 150) / 13)
    assert all(math.isfinite(v) for v in out.by_type.values())


def test_magnitude_prune_modes_keep_the_asked_share():
    # Figure 2's three selections on one vector of distinct magnitudes: highest and lowest keep
    # exactly int(d * k) entries and are complementary; random keeps about k * d.
    tv = {"a": torch.arange(1.0, 101.0) * torch.tensor([1.0, -1.0]).repeat(50), "b": torch.arange(101.0, 201.0)}
    for keep in (0.125, 0.25, 0.5, 0.75):  # exact in binary, so 1 - keep is too
        high = magnitude_prune(tv, keep, "highest")
        low = magnitude_prune(tv, 1 - keep, "lowest")
        n_high = sum(int((v != 0).sum()) for v in high.values())
        assert n_high == int(200 * keep)
        for k in tv:
            assert torch.equal(high[k] + low[k], tv[k])  # disjoint and together everything
    assert torch.equal(magnitude_prune(tv, 0.25, "highest")["b"][-50:], tv["b"][-50:])


# --------------------------------------------------------------------------------------------
# k-th magnitude with equal norms (Figure 5)


def test_kth_magnitude_merges_exact():
    a = {"w": t(3, 0, -1), "v": t(0.0)}
    b = {"w": t(-1, 2, 4), "v": t(2.0)}
    c = {"w": t(2, -1, 0), "v": t(-1.0)}
    out = dict(kth_magnitude_merges([a, b, c]))
    assert sorted(out) == [1, 2, 3]
    # k=1 is MagMax itself: w (3, 2, 4), v 2 -> norm sqrt(9+4+16+4) = sqrt(33)
    assert torch.equal(out[1]["w"], t(3, 2, 4)) and torch.equal(out[1]["v"], t(2.0))
    # second largest: w (2, -1, -1), v -1 -> norm sqrt(7), scaled by sqrt(33/7)
    f = math.sqrt(33 / 7)
    assert torch.allclose(out[2]["w"], t(2, -1, -1) * f) and torch.allclose(out[2]["v"], t(-1.0) * f)
    # smallest: w (-1, 0, 0), v 0 -> norm 1, scaled by sqrt(33)
    assert torch.allclose(out[3]["w"], t(-math.sqrt(33), 0, 0)) and torch.equal(out[3]["v"], t(0.0))
    for k, tv in out.items():
        norm = math.sqrt(sum(float(x.double().pow(2).sum()) for x in tv.values()))
        assert norm == pytest.approx(math.sqrt(33)), k
    assert [k for k, _ in kth_magnitude_merges([a, b, c], ks=[3, 2])] == [3, 2]
    assert torch.equal(dict(kth_magnitude_merges([a, b, c], ks=[2], chunk_numel=1))[2]["w"], out[2]["w"])


def test_kth_magnitude_merges_errors():
    a = {"w": t(1, 0)}
    zero = {"w": t(0, 0)}
    with pytest.raises(ValueError, match="k=2"):
        dict(kth_magnitude_merges([a, zero]))  # the second-largest entries are all zero
    with pytest.raises(ValueError):
        dict(kth_magnitude_merges([a, zero], ks=[3]))
    with pytest.raises(ValueError, match="'w'"):
        kth_magnitude_merges([a, {"w": t(1)}])  # raised at the call


# --------------------------------------------------------------------------------------------
# leave one out (Figure 8)


def test_leave_one_out_exact():
    a = {"w": t(3, -1, 0)}
    b = {"w": t(-2, 4, 1)}
    c = {"w": t(1, 1, -5)}
    merged = list(leave_one_out([a, b, c]))
    assert len(merged) == 3
    assert torch.equal(merged[0]["w"], t(-2, 4, -5))  # magmax(b, c)
    assert torch.equal(merged[1]["w"], t(3, 1, -5))   # magmax(a, c): |-1| = |1| -> later c
    assert torch.equal(merged[2]["w"], t(3, 4, 1))    # magmax(a, b)
    avg = list(leave_one_out([a, b, c], average))
    assert torch.allclose(avg[1]["w"], t(2, 0, -2.5))
    trimmed = list(leave_one_out([a, b, c], ties, top_k=1.0))
    assert torch.equal(trimmed[2]["w"], ties([a, b], top_k=1.0)["w"])


def test_leave_one_out_validates_eagerly():
    with pytest.raises(ValueError, match="two"):
        leave_one_out([{"w": t(1)}])
    with pytest.raises(ValueError, match="'w'"):
        leave_one_out([{"w": t(1)}, {"w": t(1, 2)}])  # raised at the call, not on iteration


# --------------------------------------------------------------------------------------------
# distributions of entries (Figure 13)


def test_histogram_edges_exact():
    a = {"w": t(0.5, -2), "v": t(1)}
    b = {"w": t(1, 1), "v": t(-1.5)}
    assert histogram_edges([a, b], bins=4) == (-2.0, -1.0, 0.0, 1.0, 2.0)
    assert histogram_edges([a], bins=2, limit=4.0) == (-4.0, 0.0, 4.0)
    with pytest.raises(ValueError, match="limit"):
        histogram_edges([{"w": t(0, 0)}])
    with pytest.raises(ValueError):
        histogram_edges([a], bins=0)


def test_entry_histogram_exact():
    tv = {"w": t(-2, -1, 0, 1, 2), "v": t(0.5, -0.25)}
    h = entry_histogram(tv, (-2.0, -1.0, 0.0, 1.0, 2.0))
    assert isinstance(h, Histogram)
    # bins [-2,-1) [-1,0) [0,1) [1,2]: -2 | -1, -0.25 | 0, 0.5 | 1, 2 (the last bin is closed)
    assert h.counts == (1, 2, 2, 2)
    assert h.centres == (-1.5, -0.5, 0.5, 1.5)
    # entries beyond the edges land in the outer bins: the counts always add up to d
    clipped = entry_histogram(tv, (-0.5, 0.0, 0.5))
    assert clipped.counts == (3, 4) and sum(clipped.counts) == 7
    with pytest.raises(ValueError):
        entry_histogram(tv, (1.0, 0.0))


def test_entry_histogram_shared_edges_compare_vectors():
    tvs = [{"w": torch.linspace(-s, s, 101)} for s in (0.5, 2.0, 4.0)]
    edges = histogram_edges(tvs, bins=5)
    hists = [entry_histogram(tv, edges) for tv in tvs]
    assert all(sum(h.counts) == 101 for h in hists)
    # the widest vector spreads into the outer bins, the narrowest stays in the centre one
    assert hists[0].counts[0] == 0 and hists[0].counts[2] == 101
    assert hists[2].counts[0] > 0 and hists[2].counts[4] > 0
