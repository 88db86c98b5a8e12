"""Tests for pipeline.analysis."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.analysis import (
    LayerMagnitudes,
    block_index,
    contributions,
    layer_type,
    magnitude_prune,
    mean_magnitude_by_layer,
    sign_conflicts,
    update_consistency,
)
from pipeline.merging import magmax

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
