"""Tests for TSV-M (pipeline.merging.tsv) and Iso-C / Iso-CTS (pipeline.merging.iso).

Oracles: hand-computed 2x2 / 3x3 cases (diagonal matrices, rank-1 tasks at known angles whose
nearest orthonormal frame is known in closed form) and an independent transcription of the
definitions in which the "orthogonalise" step is written as A (A^T A)^{-1/2} via an
eigendecomposition instead of the SVD the implementation uses.
"""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.merging.iso import iso_c, iso_cts, iso_cts_split
from pipeline.merging.tsv import tsv_merge, tsv_rank

D = torch.float64


def m(*rows: list[float], dtype: torch.dtype = D) -> torch.Tensor:
    return torch.tensor(rows, dtype=dtype)


def diag(*vals: float) -> torch.Tensor:
    return torch.diag(torch.tensor(vals, dtype=D))


def unit(angle: float) -> torch.Tensor:
    return torch.tensor([math.cos(angle), math.sin(angle)], dtype=D)


def rot(angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, -s], [s, c]], dtype=D)


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-10) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, atol=tol, rtol=0)


def rand_tvs(n_tasks: int, shape=(6, 5), seed: int = 0, dtype: torch.dtype = D) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "w": torch.randn(shape, generator=g, dtype=D).to(dtype),
            "b": torch.randn(shape[0], generator=g, dtype=D).to(dtype),
        }
        for _ in range(n_tasks)
    ]


# --------------------------------------------------------------------------------------------
# independent transcriptions of the definitions (eigh-based orthogonalisation)


def polar_cols(a: torch.Tensor) -> torch.Tensor:
    """Nearest matrix with orthonormal columns to a tall full-rank a: a (a^T a)^{-1/2}."""
    lam, q = torch.linalg.eigh(a.T @ a)
    return a @ (q @ torch.diag(lam.rsqrt()) @ q.T)


def ref_tsv(ws: list[torch.Tensor]) -> torch.Tensor:
    t = len(ws)
    k = min(ws[0].shape) // t
    us, ss, vs = [], [], []
    for w in ws:
        u, s, vh = torch.linalg.svd(w)
        us.append(u[:, :k])
        ss.append(s[:k])
        vs.append(vh[:k].T)
    u, v = polar_cols(torch.cat(us, 1)), polar_cols(torch.cat(vs, 1))
    return u @ torch.diag(torch.cat(ss)) @ v.T


def ref_iso_c(ws: list[torch.Tensor]) -> torch.Tensor:
    total = sum(ws)
    s = torch.linalg.svdvals(total)
    return s.mean() * polar_cols(total) if total.shape[0] >= total.shape[1] else s.mean() * polar_cols(total.T).T


def ref_iso_cts(ws: list[torch.Tensor], kc: int, k: int) -> torch.Tensor:
    total = sum(ws)
    u, s, vh = torch.linalg.svd(total)
    uc = u[:, :kc]
    us, ss, vs = [uc], [s[:kc]], [vh[:kc].T]
    proj = torch.eye(total.shape[0], dtype=total.dtype) - uc @ uc.T
    for w in ws:
        ut, st, vht = torch.linalg.svd(proj @ w)
        us.append(ut[:, :k])
        ss.append(st[:k])
        vs.append(vht[:k].T)
    return torch.cat(ss).mean() * polar_cols(torch.cat(us, 1)) @ polar_cols(torch.cat(vs, 1)).T


# --------------------------------------------------------------------------------------------
# TSV-M


def test_tsv_keeps_each_tasks_top_component_of_diagonal_matrices():
    # T=2, r=2 -> k=1: task 1 keeps 3 e1 e1^T, task 2 keeps 2 e2 e2^T; U=[e1 e2] is orthonormal
    tvs = [{"w": diag(3, 1), "b": m(1, 2)[0]}, {"w": diag(1, 2), "b": m(3, 4)[0]}]
    out = tsv_merge(tvs)
    assert close(out["w"], diag(3, 2))
    assert torch.equal(out["b"], m(2.0, 3.0)[0])  # non-matrix entries: mean


def test_tsv_rank1_tasks_at_an_angle_are_decorrelated():
    # task 1 = 2 e1 e1^T, task 2 = a(60deg) b(100deg)^T. The nearest orthonormal pair to two unit
    # vectors at angles 0 and t is the symmetric one at t/2 -/+ 45deg.
    t, p = math.radians(60), math.radians(100)
    tvs = [{"w": 2 * torch.outer(unit(0), unit(0))}, {"w": torch.outer(unit(t), unit(p))}]
    u1, u2 = unit(t / 2 - math.pi / 4), unit(t / 2 + math.pi / 4)
    v1, v2 = unit(p / 2 - math.pi / 4), unit(p / 2 + math.pi / 4)
    expected = 2 * torch.outer(u1, v1) + torch.outer(u2, v2)
    assert close(tsv_merge(tvs)["w"], expected)


def test_tsv_of_orthogonal_tasks_is_their_sum():
    g = torch.Generator().manual_seed(1)
    qm = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=D)).Q
    qn = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=D)).Q
    t1 = qm[:, :2] @ diag(5, 1) @ qn[:, :2].T  # rank 2 = k for T=2, r=4
    t2 = qm[:, 2:4] @ diag(3, 0.5) @ qn[:, 2:4].T
    out = tsv_merge([{"w": t1}, {"w": t2}])
    assert close(out["w"], t1 + t2)


def test_tsv_single_task_is_identity():
    tvs = rand_tvs(1, (5, 3))
    out = tsv_merge(tvs)
    assert close(out["w"], tvs[0]["w"]) and torch.equal(out["b"], tvs[0]["b"])


@pytest.mark.parametrize("n_tasks,shape", [(2, (6, 5)), (3, (5, 7)), (2, (4, 4))])
def test_tsv_matches_independent_transcription(n_tasks, shape):
    tvs = rand_tvs(n_tasks, shape, seed=n_tasks)
    out = tsv_merge(tvs)
    assert close(out["w"], ref_tsv([tv["w"] for tv in tvs]))
    assert close(out["b"], sum(tv["b"] for tv in tvs) / n_tasks)


def test_tsv_rank():
    assert tsv_rank(768, 8) == 96
    assert tsv_rank(49, 49) == 1  # int(49 * (1 / 49)) would give 0
    assert tsv_rank(2, 3) == 0
    assert tsv_rank(90, 2, 0.7) == 63
    assert tsv_rank(4, 2, 0.25) == 1


def test_tsv_rank_fraction_and_more_tasks_than_rank():
    # rank_fraction 0.25 of r=2 -> k=0 -> the matrix merges to zero (as the official code); 0.5 -> k=1
    tvs = [{"w": diag(3, 1)}, {"w": diag(1, 2)}]
    assert torch.equal(tsv_merge(tvs, rank_fraction=0.25)["w"], torch.zeros(2, 2, dtype=D))
    assert close(tsv_merge(tvs, rank_fraction=0.5)["w"], diag(3, 2))
    three = tvs + [{"w": diag(1, 1)}]
    assert torch.equal(tsv_merge(three)["w"], torch.zeros(2, 2, dtype=D))


def test_tsv_task_permutation_invariant():
    tvs = rand_tvs(3, (7, 6), seed=3, dtype=torch.float32)
    a, b = tsv_merge(tvs), tsv_merge([tvs[2], tvs[0], tvs[1]])
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


# --------------------------------------------------------------------------------------------
# Iso-C


def test_iso_c_single_task_spectrum_3_1_becomes_2_2():
    assert close(iso_c([{"w": diag(3, 1)}])["w"], diag(2, 2))
    # rotated: R(a) diag(3,1) R(b)^T -> 2 R(a) R(b)^T = 2 R(a - b)
    a, b = 0.3, -1.1
    out = iso_c([{"w": rot(a) @ diag(3, 1) @ rot(b).T}])["w"]
    assert close(out, 2 * rot(a - b))
    # tall 3x2 with singular values (3, 1)
    assert close(iso_c([{"w": m([3, 0], [0, 1], [0, 0])}])["w"], m([2, 0], [0, 2], [0, 0]))


def test_iso_c_sums_matrices_and_averages_the_rest():
    tvs = [{"w": diag(3, 0), "b": m(2, 4)[0]}, {"w": diag(0, 1), "b": m(0, 0)[0]}]
    out = iso_c(tvs)
    assert close(out["w"], diag(2, 2))  # sum diag(3, 1): mean singular value 2
    assert torch.equal(out["b"], m(1.0, 2.0)[0])


@pytest.mark.parametrize("shape", [(6, 4), (3, 5)])
def test_iso_c_matches_independent_transcription(shape):
    tvs = rand_tvs(3, shape, seed=7)
    out = iso_c(tvs)
    ws = [tv["w"] for tv in tvs]
    assert close(out["w"], ref_iso_c(ws))
    s = torch.linalg.svdvals(out["w"])  # isotropic spectrum: all equal to the sum's mean
    assert close(s, torch.full_like(s, float(torch.linalg.svdvals(sum(ws)).mean())))


def test_iso_c_task_permutation_invariant():
    tvs = rand_tvs(3, (5, 6), seed=4, dtype=torch.float32)
    a, b = iso_c(tvs), iso_c(tvs[::-1])
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


# --------------------------------------------------------------------------------------------
# Iso-CTS


@pytest.mark.parametrize(
    "r,n_tasks,frac,expected",
    [
        (768, 8, 0.8, (616, 19)),  # int(614.4)=614, round(154/8=19.25)=19
        (768, 3, 0.8, (615, 51)),
        (197, 8, 0.8, (157, 5)),
        (512, 8, 0.8, (408, 13)),  # round(103/8=12.875)=13
        (3, 2, 1 / 3, (1, 1)),
        (2, 2, 0.5, (2, 0)),  # round(0.5) = 0: half to even, as Python's round in the official code
        (11, 3, 0.0, (2, 3)),  # round(11/3)=4 would need 12 > 11 columns: capped at 11 // 3
        (5, 1, 0.8, (4, 1)),
        (4, 2, 1.0, (4, 0)),
    ],
)
def test_iso_cts_split(r, n_tasks, frac, expected):
    kc, k = iso_cts_split(r, n_tasks, frac)
    assert (kc, k) == expected and kc + n_tasks * k == r


def test_iso_cts_hand_case_differs_from_iso_c():
    # r=3, T=2, fraction 1/3 -> k_common=1, k=1. Sum diag(8,4,3): common e1 (8). Residuals
    # diag(0,3,1) and diag(0,1,2) contribute e2 (3) and e3 (2). Spectrum (3,2,8) -> mean 13/3.
    tvs = [{"w": diag(4, 3, 1)}, {"w": diag(4, 1, 2)}]
    assert close(iso_cts(tvs, common_space_fraction=1 / 3)["w"], 13 / 3 * torch.eye(3, dtype=D))
    assert close(iso_c(tvs)["w"], 5 * torch.eye(3, dtype=D))  # sum's spectrum (8,4,3) -> 5


def test_iso_cts_no_common_space_rank1_tasks_at_an_angle():
    # fraction 0 on 2x2, T=2 -> k_common=0, k=1: U=[e1, a(t)] and V=[e1, b(p)] are orthogonalised
    # to the frames at t/2 -/+ 45deg and p/2 -/+ 45deg, i.e. R(t/2-45) and R(p/2-45); mean(2, 1)=1.5
    t, p = math.radians(60), math.radians(100)
    tvs = [{"w": 2 * torch.outer(unit(0), unit(0))}, {"w": torch.outer(unit(t), unit(p))}]
    out = iso_cts(tvs, common_space_fraction=0.0)["w"]
    assert close(out, 1.5 * rot((t - p) / 2))


def test_iso_cts_single_task_equals_iso_c():
    tvs = rand_tvs(1, (6, 4), seed=5)
    a, b = iso_cts(tvs), iso_c(tvs)
    assert close(a["w"], b["w"]) and torch.equal(a["b"], b["b"])


def test_iso_cts_full_common_space_equals_iso_c():
    tvs = rand_tvs(3, (5, 6), seed=6)
    assert close(iso_cts(tvs, common_space_fraction=1.0)["w"], iso_c(tvs)["w"])


@pytest.mark.parametrize("n_tasks,shape,frac", [(2, (6, 5), 0.5), (3, (7, 6), 0.2), (2, (5, 8), 0.6)])
def test_iso_cts_matches_independent_transcription(n_tasks, shape, frac):
    tvs = rand_tvs(n_tasks, shape, seed=10 + n_tasks)
    kc, k = iso_cts_split(min(shape), n_tasks, frac)
    assert k > 0
    out = iso_cts(tvs, common_space_fraction=frac)
    assert close(out["w"], ref_iso_cts([tv["w"] for tv in tvs], kc, k))
    assert close(out["b"], sum(tv["b"] for tv in tvs) / n_tasks)


def test_iso_cts_task_permutation_invariant():
    tvs = rand_tvs(3, (8, 7), seed=8, dtype=torch.float32)
    a = iso_cts(tvs, common_space_fraction=0.3)
    b = iso_cts([tvs[1], tvs[2], tvs[0]], common_space_fraction=0.3)
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


# --------------------------------------------------------------------------------------------
# shared behaviour: dtypes, shapes, zeros, non-matrix rule, errors

MERGES = [tsv_merge, iso_c, iso_cts]


@pytest.mark.parametrize("merge", MERGES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtypes_and_shapes_kept(merge, dtype):
    g = torch.Generator().manual_seed(0)
    shapes = {"attn.w": (6, 4), "conv1.weight": (3, 2, 2, 2), "class_embedding": (4,), "text_projection": (4, 3)}
    tvs = [{k: torch.randn(s, generator=g).to(dtype) for k, s in shapes.items()} for _ in range(2)]
    out = merge(tvs)
    assert list(out) == list(shapes)
    for k, s in shapes.items():
        assert out[k].shape == s and out[k].dtype == dtype
    # computed in float32 at least: the half result is the float32 result rounded
    ref = merge([{k: t.to(torch.promote_types(dtype, torch.float32)) for k, t in tv.items()} for tv in tvs])
    for k in shapes:
        assert torch.equal(out[k], ref[k].to(dtype))
    # every entry that is not a matrix (text_projection included) is the mean
    for k in ("conv1.weight", "class_embedding", "text_projection"):
        mean = (tvs[0][k].to(torch.float64) + tvs[1][k].to(torch.float64)) / 2
        assert torch.allclose(out[k].to(torch.float64), mean, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("merge", MERGES)
def test_zero_task_vectors_merge_to_zero(merge):
    tvs = [{"w": torch.zeros(5, 3), "b": torch.zeros(3)} for _ in range(3)]
    out = merge(tvs)
    assert all(torch.equal(t, torch.zeros_like(t)) for t in out.values())


@pytest.mark.parametrize("merge", MERGES)
def test_bad_inputs_name_the_key(merge):
    good = {"blocks.0.w": torch.ones(3, 2), "b": torch.ones(2)}
    with pytest.raises(ValueError, match="need at least one"):
        merge([])
    with pytest.raises(ValueError, match="blocks.0.w"):
        merge([good, {"blocks.0.w": torch.ones(2, 3), "b": torch.ones(2)}])
    bad = {"blocks.0.w": torch.tensor([[1.0, float("nan")], [0, 1], [1, 1]]), "b": torch.ones(2)}
    with pytest.raises(ValueError, match=r"task vector 1 entry 'blocks.0.w' has non-finite"):
        merge([good, bad])
    with pytest.raises(ValueError, match="blocks.0.w"):
        merge([good, {"blocks.0.w": torch.ones(3, 2, dtype=torch.int64), "b": torch.ones(2)}])


@pytest.mark.parametrize("value", [0.0, 1.5, -0.1, float("nan"), True, "0.5"])
def test_tsv_rejects_bad_rank_fraction(value):
    with pytest.raises(ValueError, match="rank_fraction"):
        tsv_merge([{"w": torch.ones(2, 2)}], rank_fraction=value)


@pytest.mark.parametrize("value", [1.01, -0.1, float("inf"), None, False])
def test_iso_cts_rejects_bad_fraction(value):
    with pytest.raises(ValueError, match="common_space_fraction"):
        iso_cts([{"w": torch.ones(2, 2)}], common_space_fraction=value)


def test_svd_falls_back_when_the_transposed_decomposition_does_not_converge(monkeypatch):
    """LAPACK may fail on a wide matrix's transpose (Iso-CTS's rank-deficient residual at ViT-B/16
    size): the decomposition is then taken of the matrix as it is."""
    import torch

    from pipeline.merging import tsv

    real = torch.linalg.svd
    calls = []

    def flaky(a, full_matrices=True):
        calls.append(tuple(a.shape))
        if len(calls) == 1:
            raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")
        return real(a, full_matrices=full_matrices)

    a = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0]])  # wide: first tried through its transpose
    monkeypatch.setattr(torch.linalg, "svd", flaky)
    u, s, vh = tsv.svd(a, "w")
    assert calls == [(3, 2), (2, 3)]
    assert torch.allclose(s, torch.tensor([3.0, 2.0])) and torch.allclose(u @ torch.diag(s) @ vh, a)
