"""Tests for WUDI, OPCM and DOP (pipeline/merging/{wudi,opcm,dop}.py).

Oracles: hand-computed optima and projections on 1x2 .. 4x4 matrices, and independent autograd
transcriptions of each method's published loss/update on 3x2 matrices.
"""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.merging.dop import DOP, dop_merge_matrix, dop_rank, min_norm_2
from pipeline.merging.opcm import OPCM, opcm_project, split_rank
from pipeline.merging.wudi import wudi, wudi_objective

C_FC = "transformer.resblocks.0.mlp.c_fc.weight"
IN_PROJ = "transformer.resblocks.0.attn.in_proj_weight"


def m(*rows, dtype=torch.float64):
    return torch.tensor(rows, dtype=dtype)


def rand(*shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


def orthogonal(n, seed):
    q, _ = torch.linalg.qr(rand(n, n, seed=seed))
    return q


def norm(tv):
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tv.values()))


# --------------------------------------------------------------------------------------------
# WUDI


def ref_wudi(mats, steps, lr):
    """Official loss, autograd, Adam from the sum (transcribed from the paper's definition)."""
    x = torch.nn.Parameter(sum(mats).clone())
    opt = torch.optim.Adam([x], lr=lr, weight_decay=0)
    norms = [float(t.pow(2).sum()) for t in mats]
    for _ in range(steps):
        loss = sum(((x - t) @ t.T).pow(2).sum() / n for t, n in zip(mats, norms))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return x.detach()


def test_wudi_matches_autograd_transcription():
    mats = [rand(3, 2, seed=1), rand(3, 2, seed=2), rand(3, 2, seed=3)]
    out = wudi([{C_FC: t} for t in mats], steps=7, lr=1e-2)
    torch.testing.assert_close(out[C_FC], ref_wudi(mats, 7, 1e-2), rtol=0, atol=1e-12)


def test_wudi_objective_decreases_at_paper_defaults():
    mats = [1e-3 * rand(8, 5, seed=s, dtype=torch.float32) for s in range(4)]
    out = wudi([{C_FC: t} for t in mats])  # steps=300, lr=1e-5
    before, after = wudi_objective(sum(mats), mats), wudi_objective(out[C_FC], mats)
    assert after < 0.5 * before


def test_wudi_hand_optimum():
    # L(x) = (x1 - 1)^2 / 1 + (x1 + x2 - 2)^2 / 2 for tau_1 = [1, 0], tau_2 = [1, 1]:
    # zero at x = [1, 1]; the start (the sum) is [2, 1] with L = 1.5.
    t1, t2 = m([1.0, 0.0]), m([1.0, 1.0])
    assert wudi_objective(t1 + t2, [t1, t2]) == pytest.approx(1.5)
    out = wudi([{C_FC: t1}, {C_FC: t2}], steps=800, lr=3e-2)
    torch.testing.assert_close(out[C_FC], m([1.0, 1.0]), rtol=0, atol=1e-6)


def test_wudi_converges_to_least_squares_solution():
    # With a full-rank H the optimum is B H^-1 (normal equations of the quadratic).
    mats = [rand(3, 2, seed=s) for s in (4, 5)]
    h = sum(t.T @ t / t.pow(2).sum() for t in mats)
    b = sum(t @ t.T @ t / t.pow(2).sum() for t in mats)
    best = b @ torch.linalg.inv(h)
    out = wudi([{C_FC: t} for t in mats], steps=800, lr=3e-2)[C_FC]
    assert wudi_objective(out, mats) <= wudi_objective(best, mats) + 1e-9
    torch.testing.assert_close(out, best, rtol=0, atol=1e-6)


def test_wudi_orthogonal_rows_keep_the_sum_exactly():
    # rows of tau_1 in span(e1), rows of tau_2 in span(e2, e3): tau_i tau_j^T = 0, so the sum
    # has zero interference and is the optimum; Adam must not move.
    t1 = m([1.0, 0.0, 0.0], [3.0, 0.0, 0.0], dtype=torch.float32)
    t2 = m([0.0, 2.0, 1.0], [0.0, 0.0, -2.0], dtype=torch.float32)
    assert wudi_objective(t1 + t2, [t1, t2]) == 0.0
    out = wudi([{C_FC: t1}, {C_FC: t2}], steps=300, lr=1e-2)
    assert torch.equal(out[C_FC], t1 + t2)


def test_wudi_rotated_orthogonal_rows_stay_near_the_sum():
    q = orthogonal(4, seed=7)
    t1 = m([1.0, 2.0, 0.0, 0.0], [0.5, -1.0, 0.0, 0.0]) @ q
    t2 = m([0.0, 0.0, 3.0, 1.0], [0.0, 0.0, 0.0, 2.0]) @ q
    out = wudi([{C_FC: t1}, {C_FC: t2}], steps=300, lr=1e-5)
    torch.testing.assert_close(out[C_FC], t1 + t2, rtol=0, atol=1e-9)


def test_wudi_single_task_is_identity_and_zero_vectors_are_fine():
    t = rand(4, 3, seed=8, dtype=torch.float32)
    assert torch.equal(wudi([{C_FC: t}])[C_FC], t)
    z = torch.zeros(4, 3)
    out = wudi([{C_FC: t}, {C_FC: z}], steps=50, lr=1e-2)[C_FC]
    assert torch.equal(out, t)  # the zero task contributes no term; t alone is optimal
    assert torch.equal(wudi([{C_FC: z}, {C_FC: z}])[C_FC], z)


def test_wudi_entry_rules():
    def tv(seed):
        return {
            C_FC: rand(4, 3, seed=seed),
            "transformer.resblocks.0.mlp.c_fc.bias": rand(4, seed=seed + 10),
            "positional_embedding": rand(5, 3, seed=seed + 20),
            "proj": rand(3, 2, seed=seed + 30),
        }

    tvs = [tv(1), tv(2)]
    official = wudi(tvs, steps=5, lr=1e-3)
    for key in ("transformer.resblocks.0.mlp.c_fc.bias", "positional_embedding", "proj"):
        assert torch.equal(official[key], torch.zeros_like(tvs[0][key]))
    assert not torch.equal(official[C_FC], tvs[0][C_FC] + tvs[1][C_FC])

    fb = wudi(tvs, steps=5, lr=1e-3, matrices="all_2d", other="mean")
    bias = "transformer.resblocks.0.mlp.c_fc.bias"
    torch.testing.assert_close(fb[bias], (tvs[0][bias] + tvs[1][bias]) / 2)
    torch.testing.assert_close(fb[C_FC], official[C_FC])
    summed = wudi(tvs, steps=5, lr=1e-3, other="sum")
    torch.testing.assert_close(summed[bias], tvs[0][bias] + tvs[1][bias])
    # proj is stored (in, out): its objective is that of proj^T
    alone = wudi([{"w": t["proj"].T} for t in tvs], steps=5, lr=1e-3, matrices="all_2d")
    torch.testing.assert_close(fb["proj"], alone["w"].T)


def test_wudi_deterministic_symmetric_and_dtype():
    tvs = [{C_FC: rand(5, 3, seed=s, dtype=torch.float16)} for s in range(3)]
    a = wudi(tvs, steps=20, lr=1e-3, seed=0)
    b = wudi(tvs, steps=20, lr=1e-3, seed=123)
    assert a[C_FC].dtype == torch.float16 and torch.equal(a[C_FC], b[C_FC])
    c = wudi(tvs[::-1], steps=20, lr=1e-3)
    torch.testing.assert_close(a[C_FC], c[C_FC], rtol=0, atol=2e-3)


def test_wudi_bad_input():
    good = {C_FC: torch.zeros(2, 2)}
    with pytest.raises(ValueError, match="c_fc"):
        wudi([good, {C_FC: torch.zeros(3, 2)}])
    with pytest.raises(ValueError, match="steps"):
        wudi([good], steps=-1)
    with pytest.raises(ValueError, match="lr"):
        wudi([good], lr=0.0)
    with pytest.raises(ValueError, match="other"):
        wudi([good], other="median")
    with pytest.raises(ValueError, match="matrices"):
        wudi([good], matrices="linear")
    with pytest.raises(ValueError, match="'bias'"):
        wudi([{"bias": torch.zeros(3)}], matrices=lambda k, t: True)


# --------------------------------------------------------------------------------------------
# OPCM


def test_opcm_split_rank_by_hand():
    assert split_rank(torch.tensor([3.0, 1.0]), 0.5) == 0  # 0.75 > 0.5 already
    assert split_rank(torch.tensor([4.0, 3.0, 2.0, 1.0]), 0.75) == 2  # ratios .4 .7 .9 1
    assert split_rank(torch.tensor([4.0, 3.0, 2.0, 1.0]), 1.0) == 4
    assert split_rank(torch.zeros(3), 0.5) == 0


def test_opcm_project_by_hand():
    prev = torch.diag(m(4.0, 3.0, 2.0, 1.0))
    tau = torch.arange(1.0, 17.0, dtype=torch.float64).reshape(4, 4)
    expect = tau.clone()
    expect[0, 1] = expect[1, 0] = 0.0  # the [:2, :2] block
    expect.diagonal().zero_()
    torch.testing.assert_close(opcm_project(prev, tau, 0.75), expect)
    block_only = tau.clone()
    block_only[:2, :2] = 0.0
    torch.testing.assert_close(opcm_project(prev, tau, 0.75, drop_diagonal=False), block_only)
    # a zero merged matrix reserves nothing
    torch.testing.assert_close(opcm_project(torch.zeros(4, 4, dtype=torch.float64), tau, 0.75), tau)


def test_opcm_project_rotation_equivariant_and_orthogonal():
    q, r = orthogonal(5, seed=1), orthogonal(3, seed=2)
    prev = q[:, :3] @ torch.diag(m(5.0, 2.0, 1.0)) @ r.T
    tau = rand(5, 3, seed=3)
    p = opcm_project(prev, tau, 0.5)
    # <P(tau), prev>_F = 0: the diagonal components along prev's rank-one terms are gone
    assert abs(float((p * prev).sum())) < 1e-12
    # in prev's singular basis only the expected coefficients are zero
    coef = q[:, :3].T @ p @ r
    assert torch.allclose(coef.diagonal(), torch.zeros(3, dtype=torch.float64), atol=1e-12)
    full = opcm_project(prev, tau, 1.0)  # every u_i v_j^T reserved
    assert torch.allclose(q[:, :3].T @ full @ r, torch.zeros(3, 3, dtype=torch.float64), atol=1e-12)


def test_opcm_hand_example_two_tasks():
    bias = "ln.bias"
    t1 = {"w": torch.diag(m(3.0, 1.0)), bias: m(1.0, 0.0)}
    t2 = {"w": m([1.0, 2.0], [3.0, 4.0]), bias: m(0.0, 2.0)}
    o = OPCM(alpha=0.5)
    o.add(t1)
    assert o.count == 1 and o.lambda_t == 1.0
    torch.testing.assert_close(o.value()["w"], t1["w"])
    o.add(t2)
    # r = 0 (3/4 > 1/2): only the diagonal is removed: P = [[0, 2], [3, 0]]
    n_w, n_b = m([3.0, 2.0], [3.0, 1.0]), m(1.0, 2.0)
    total = math.sqrt(23 + 5)
    avg = (math.sqrt(10 + 1) + math.sqrt(30 + 4)) / 2
    lam = total / avg
    assert o.lambda_t == pytest.approx(lam)
    torch.testing.assert_close(o.value()["w"], n_w / lam)
    torch.testing.assert_close(o.value()[bias], n_b / lam)
    assert norm(o.value()) == pytest.approx(avg)


def test_opcm_keeps_average_norm_and_snapshots():
    tvs = [{C_FC: rand(6, 4, seed=s), "b": rand(4, seed=s + 9), "positional_embedding": rand(3, 4, seed=s + 5)}
           for s in range(5)]
    o = OPCM()
    snaps = []
    for t, tv in enumerate(tvs, start=1):
        o.add(tv)
        avg = sum(norm(x) for x in tvs[:t]) / t
        assert norm(o.value()) == pytest.approx(avg, rel=1e-12)
        snaps.append({k: v.clone() for k, v in o.value().items()})
        first = o.value() if t == 1 else first
    assert torch.equal(first[C_FC], tvs[0][C_FC])  # not modified by later adds
    # state: one tensor per key, one model size, whatever T is
    assert sum(v.numel() for v in o._value.values()) == sum(v.numel() for v in tvs[0].values())
    # resuming from the persisted state continues the same sequence
    r = OPCM.from_state(snaps[2], count=3, lambda_t=_lam_after(tvs[:3]), norm_sum=sum(norm(x) for x in tvs[:3]))
    for tv in tvs[3:]:
        r.add(tv)
    for k in o.value():
        torch.testing.assert_close(r.value()[k], o.value()[k])


def _lam_after(tvs):
    o = OPCM()
    for tv in tvs:
        o.add(tv)
    return o.lambda_t


def test_opcm_splits_packed_qkv():
    prev = rand(6, 2, seed=1)
    tau = rand(6, 2, seed=2)
    o = OPCM(alpha=0.5)
    o.add({IN_PROJ: prev})
    o.add({IN_PROJ: tau})
    blocks = [opcm_project(prev[i:i + 2], tau[i:i + 2], 0.5) for i in (0, 2, 4)]
    n = prev + torch.cat(blocks)
    avg = (prev.norm() + tau.norm()) / 2
    torch.testing.assert_close(o.value()[IN_PROJ], n * (avg / n.norm()))
    whole = OPCM(alpha=0.5, split_qkv=False)
    whole.add({IN_PROJ: prev})
    whole.add({IN_PROJ: tau})
    assert not torch.allclose(whole.value()[IN_PROJ], o.value()[IN_PROJ])


def test_opcm_half_precision_and_errors():
    o = OPCM()
    o.add({C_FC: rand(4, 3, seed=1, dtype=torch.float16)})
    o.add({C_FC: rand(4, 3, seed=2, dtype=torch.float16)})
    assert o.value()[C_FC].dtype == torch.float16
    with pytest.raises(ValueError, match="c_fc"):
        o.add({C_FC: torch.zeros(4, 4, dtype=torch.float16)})
    with pytest.raises(ValueError, match="alpha"):
        OPCM(alpha=1.5)
    with pytest.raises(ValueError, match="empty"):
        OPCM().value()


# --------------------------------------------------------------------------------------------
# DOP


def test_dop_rank_and_min_norm_by_hand():
    s = torch.tensor([3.0, 2.0, 1.0])  # ratios 1/2, 5/6, 1
    assert dop_rank(s, 0.99999) == 3
    assert dop_rank(s, 0.5) == 1
    assert dop_rank(s, 0.6) == 2
    assert dop_rank(torch.zeros(2), 0.5) == 0
    assert min_norm_2(1.0, 0.0, 1.0) == pytest.approx(0.5)  # g1 = e1, g2 = e2
    assert min_norm_2(1.0, 0.0, 4.0) == pytest.approx(0.8)  # |c e1 + (1 - c) 2 e2| least at 0.8
    assert min_norm_2(1.0, 1.0, 4.0) == 0.999  # g1 . g2 >= |g1|^2: g1 alone
    assert min_norm_2(4.0, 1.0, 1.0) == 0.001


def test_dop_fixed_weights_hand_optimum():
    # For diagonal A, B the loss separates per entry: entry (i, i) of loss_A is
    # 2 a_i^2 (x - a_i)^2, so with weights (w, 1 - w) the optimum is
    # x_i = (w a_i^3 + (1 - w) b_i^3) / (w a_i^2 + (1 - w) b_i^2); off-diagonals stay 0.
    a, b, w = m(1.0, 2.0), m(3.0, 1.0), 0.8
    expect = (w * a**3 + (1 - w) * b**3) / (w * a**2 + (1 - w) * b**2)
    out = dop_merge_matrix(torch.diag(a), torch.diag(b), lr=3e-2, steps=800, alpha=w, mgda=False)
    torch.testing.assert_close(out, torch.diag(expect), rtol=0, atol=1e-6)


def ref_dop_matrix(a, b, lr, steps, alpha, beta, eps):
    """FusionBench-style DOP with MGDA + EMA, written from the definition with autograd."""
    bases = []
    for x in (a, b):
        u, s, vh = torch.linalg.svd(x, full_matrices=False)
        ratio = s.cumsum(0) / s.sum()
        k = next(i + 1 for i in range(len(s)) if ratio[i] >= eps or i == len(s) - 1)
        bases.append((u[:, :k], s[:k], vh[:k].T))

    def loss(x, target, basis):
        u, s, v = basis
        d = x - target
        return (torch.diag(s) @ u.T @ d).pow(2).sum() + (d @ v @ torch.diag(s)).pow(2).sum()

    x = torch.nn.Parameter((a + b) / 2)
    opt = torch.optim.Adam([x], lr=lr)
    ema = [alpha, 1 - alpha]
    for _ in range(steps):
        grads, losses = [], []
        for target, basis in zip((a, b), bases):
            value = loss(x, target, basis)
            (g,) = torch.autograd.grad(value, x)
            grads.append(g / value.detach())
            losses.append(value)
        g1, g2 = grads
        v11, v12, v22 = float((g1 * g1).sum()), float((g1 * g2).sum()), float((g2 * g2).sum())
        c = 0.999 if v12 >= v11 else 0.001 if v12 >= v22 else (v22 - v12) / (v11 + v22 - 2 * v12)
        ema = [beta * ema[0] + (1 - beta) * c, beta * ema[1] + (1 - beta) * (1 - c)]
        total = ema[0] * loss(x, a, bases[0]) + ema[1] * loss(x, b, bases[1])
        opt.zero_grad()
        total.backward()
        opt.step()
    return x.detach()


def test_dop_matches_autograd_transcription_with_mgda_ema():
    a, b = rand(3, 2, seed=11), rand(3, 2, seed=12)
    out = dop_merge_matrix(a, b, lr=1e-2, steps=6, alpha=0.8, ema_beta=0.9)
    torch.testing.assert_close(out, ref_dop_matrix(a, b, 1e-2, 6, 0.8, 0.9, 0.99999), rtol=0, atol=1e-12)


def test_dop_running_merge_rules():
    bias = "transformer.resblocks.0.mlp.c_fc.bias"
    tvs = [{C_FC: rand(4, 3, seed=s), bias: rand(4, seed=s + 7)} for s in range(3)]
    d = DOP(steps=10, lr=1e-3)
    d.add(tvs[0])
    assert d.count == 1 and torch.equal(d.value()[C_FC], tvs[0][C_FC])
    first = d.value()
    d.add(tvs[1])
    d.add(tvs[2])
    assert d.count == 3 and torch.equal(first[C_FC], tvs[0][C_FC])
    torch.testing.assert_close(d.value()[bias], ((tvs[0][bias] + tvs[1][bias]) / 2 + tvs[2][bias]) / 2)
    # the matrix is the per-matrix DOP step applied in sequence
    step2 = dop_merge_matrix(tvs[0][C_FC], tvs[1][C_FC], steps=10, lr=1e-3)
    torch.testing.assert_close(d.value()[C_FC], dop_merge_matrix(step2, tvs[2][C_FC], steps=10, lr=1e-3))
    assert sum(v.numel() for v in d._value.values()) == sum(v.numel() for v in tvs[0].values())
    # resume
    r = DOP.from_value({C_FC: step2, bias: (tvs[0][bias] + tvs[1][bias]) / 2}, 2, steps=10, lr=1e-3)
    r.add(tvs[2])
    for k in d.value():
        torch.testing.assert_close(r.value()[k], d.value()[k])


def test_dop_same_vector_is_a_fixed_point_and_loss_decreases():
    t = rand(4, 3, seed=3)
    d = DOP()
    d.add({C_FC: t})
    d.add({C_FC: t})
    assert torch.equal(d.value()[C_FC], t)
    a, b = rand(5, 4, seed=4), rand(5, 4, seed=5)

    def weighted(x):
        total = 0.0
        for target, w in ((a, 0.8), (b, 0.2)):
            u, s, vh = torch.linalg.svd(target, full_matrices=False)
            dlt = x - target
            total += w * float((s[:, None] * (u.T @ dlt)).pow(2).sum() + ((dlt @ vh.T) * s).pow(2).sum())
        return total

    out = dop_merge_matrix(a, b, lr=1e-2, steps=50, mgda=False)
    assert weighted(out) < weighted((a + b) / 2)


def test_dop_splits_packed_qkv_deterministic_and_dtype():
    prev, tau = rand(6, 2, seed=1, dtype=torch.float16), rand(6, 2, seed=2, dtype=torch.float16)
    runs = []
    for _ in range(2):
        d = DOP(steps=5, lr=1e-3, seed=_)
        d.add({IN_PROJ: prev})
        d.add({IN_PROJ: tau})
        runs.append(d.value()[IN_PROJ])
    assert runs[0].dtype == torch.float16 and torch.equal(runs[0], runs[1])
    blocks = [dop_merge_matrix(prev[i:i + 2].float(), tau[i:i + 2].float(), steps=5, lr=1e-3) for i in (0, 2, 4)]
    torch.testing.assert_close(runs[0], torch.cat(blocks).half())


def test_dop_bad_input():
    with pytest.raises(ValueError, match="proj_space"):
        DOP(proj_space="w")
    with pytest.raises(ValueError, match="svd_epsilon"):
        DOP(svd_epsilon=2.0)
    with pytest.raises(ValueError, match="steps"):
        DOP(steps=-3)
    d = DOP()
    d.add({C_FC: torch.zeros(2, 2)})
    with pytest.raises(ValueError, match="lacks key 'transformer"):
        d.add({"other": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match="empty"):
        DOP().value()
