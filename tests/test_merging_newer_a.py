"""Tests for pipeline.merging's Breadcrumbs, DARE, Consensus (TALL masks) and LiNeS:
hand-computed cases from each paper's definition, properties, and bad inputs."""

from __future__ import annotations

import pytest
import torch

from pipeline.merging import task_arithmetic, ties
from pipeline.merging.breadcrumbs import breadcrumbs, breadcrumbs_mask
from pipeline.merging.consensus import consensus, tall_mask
from pipeline.merging.dare import dare, dare_drop
from pipeline.merging.lines import block_index, lines, lines_multitask_alpha, lines_scales


def t(*vals: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.tensor(vals, dtype=dtype)


def same(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(
        a[k].shape == b[k].shape and a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a
    )


# --------------------------------------------------------------------------------------------
# Breadcrumbs


def test_breadcrumbs_mask_drops_both_tails_of_the_tensor():
    w = t(0.1, -5, 2, -0.3, 1, 0.05, 3, -0.2, 0.7, 4)
    # n=10: top 0.1 -> the 1 largest (-5) goes; bottom 0.5 -> the 5 smallest (.05 .1 -.2 -.3 .7) go
    m = breadcrumbs_mask(w, top=0.1, bottom=0.5)
    assert m.tolist() == [False, False, True, False, True, False, True, False, False, True]


def test_breadcrumbs_is_the_sum_of_masked_vectors():
    a = {"w": t(0.1, -5, 2, -0.3, 1, 0.05, 3, -0.2, 0.7, 4), "b": t(1, -2)}
    b = {"w": t(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), "b": t(3, 0.5)}
    out = breadcrumbs([a, b], top=0.1, bottom=0.5)
    # a keeps 2, 1, 3, 4; b keeps 5..9 minus the largest (10): ranks 1..4 -> 9, 8, 7, 6
    # "b" (n=2): floor(0.2)=0 dropped on top, floor(1.0)=1 smallest dropped: keeps -2 and 3
    assert same(out, {"w": t(0, 0, 2, 0, 1, 6, 10, 8, 9, 4), "b": t(3, -2)})


def test_breadcrumbs_ties_in_magnitude_go_by_position():
    m = breadcrumbs_mask(t(1, -1, 1, 1), top=0.25, bottom=0.5)
    assert m.tolist() == [False, True, False, False]


def test_breadcrumbs_official_variant_works_per_row_and_keeps_1_minus_bottom():
    w = torch.tensor([[1.0, 2, 3, 4, 5], [-5.0, 4, -3, 2, -1]])
    # per row of 5: the 1 largest goes (top 0.2), then floor(5*0.6)=3 of the rest are kept
    m = breadcrumbs_mask(w, top=0.2, bottom=0.4, variant="official")
    assert m.tolist() == [[False, True, True, True, False], [False, True, True, True, False]]
    # paper variant over the whole tensor of 10: 2 largest and 4 smallest go
    m = breadcrumbs_mask(w, top=0.2, bottom=0.4, variant="paper")
    assert m.tolist() == [[False, False, True, True, False], [False, True, True, False, False]]
    assert breadcrumbs_mask(torch.tensor(2.0), top=0.5, bottom=0.5, variant="official").item()


def _sorted_window(w: torch.Tensor, top: float, bottom: float, official: bool) -> torch.Tensor:
    """The definition through a stable sort: descending |w| ranks, equal values by position."""
    rows = w.reshape(-1, w.shape[-1]) if official else w.reshape(1, -1)
    n = rows.shape[1]
    lo = int(n * top + 1e-9)
    hi = min(n, lo + int(n * (1 - bottom) + 1e-9)) if official else n - int(n * bottom + 1e-9)
    mask = torch.zeros(rows.shape, dtype=torch.bool)
    for r in range(rows.shape[0]):
        order = sorted(range(n), key=lambda i: (-abs(float(rows[r, i])), i))
        for i in order[lo:hi]:
            mask[r, i] = True
    return mask.reshape(w.shape)


@pytest.mark.parametrize("official", [False, True])
def test_breadcrumbs_mask_equals_the_stable_sort_definition(official):
    g = torch.Generator().manual_seed(3)
    for shape, top, bottom in [((7, 9), 0.12, 0.5), ((30,), 0.1, 0.3), ((4, 3, 5), 0.2, 0.2), ((6, 8), 0.0, 0.9)]:
        w = torch.randint(-3, 4, shape, generator=g).float()  # many equal magnitudes
        got = breadcrumbs_mask(w, top=top, bottom=bottom, variant="official" if official else "paper")
        assert torch.equal(got, _sorted_window(w, top, bottom, official)), (shape, top, bottom)


def test_breadcrumbs_properties():
    a = {"w": t(1, -2, 3, 0.5), "v": t(4, -1)}
    b = {"w": t(-2, 2, 0, 1), "v": t(-0.5, 2)}
    c = {"w": t(0.25, 4, -1, 2), "v": t(1, 1)}
    # no tail dropped: Task Arithmetic
    assert same(breadcrumbs([a, b, c], top=0, bottom=0), task_arithmetic([a, b, c]))
    # symmetric in the tasks (exact sums here)
    assert same(breadcrumbs([a, b, c]), breadcrumbs([c, a, b]))
    # T=1: the masked vector itself; everything dropped: zeros
    one = breadcrumbs([a], top=0.25, bottom=0.25)  # "w": 3 and 0.5 go; "v" (n=2): floor(0.5)=0 go
    assert same(one, {"w": t(1, -2, 0, 0), "v": t(4, -1)})
    assert same(breadcrumbs([a, b], top=0.5, bottom=0.5), {"w": t(0, 0, 0, 0), "v": t(0, 0)})
    half = breadcrumbs([{k: v.half() for k, v in a.items()}], top=0, bottom=0.5)
    assert half["w"].dtype == torch.float16 and half["w"].tolist() == [0, -2, 3, 0]


def test_breadcrumbs_bad_input():
    a = {"w": t(1, 2)}
    with pytest.raises(ValueError, match="'w'"):
        breadcrumbs([a, {"w": t(1, 2, 3)}])
    with pytest.raises(ValueError, match="'v'"):
        breadcrumbs([a, {"w": t(1, 2), "v": t(1)}])
    with pytest.raises(ValueError, match="top"):
        breadcrumbs([a], top=0.6, bottom=0.6)
    with pytest.raises(ValueError, match="bottom"):
        breadcrumbs([a], bottom=-0.1)
    with pytest.raises(ValueError, match="variant"):
        breadcrumbs([a], variant="rows")


# --------------------------------------------------------------------------------------------
# DARE


def _big(seed: int, n: int = 20_000) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(n, generator=g) + 3.0, "b": torch.randn(7, generator=g) + 3.0}


def test_dare_drop_zeroes_or_rescales_each_entry():
    tv = _big(0)
    out = dare_drop(tv["w"], p=0.25, seed=3, task=0, key="w")
    kept = out != 0
    # survivors are exactly x / (1 - p); the dropped fraction is about p
    assert torch.equal(out[kept], tv["w"][kept] / 0.75)
    assert abs((~kept).float().mean().item() - 0.25) < 0.015


def test_dare_ta_is_the_sum_of_dropped_vectors_and_seeded():
    a, b = _big(1), _big(2)
    out = dare([a, b], p=0.5, seed=7)
    for k in a:
        ref = dare_drop(a[k], p=0.5, seed=7, task=0, key=k) + dare_drop(b[k], p=0.5, seed=7, task=1, key=k)
        assert torch.equal(out[k], ref)
    assert same(dare([a, b], p=0.5, seed=7), out)
    assert not torch.equal(dare([a, b], p=0.5, seed=8)["w"], out["w"])
    # two tasks never share a mask, and a task's mask depends on (seed, task index, key) only
    twin = dare([a, a], p=0.5, seed=7)["w"]
    assert not torch.equal(twin, 2 * dare([a], p=0.5, seed=7)["w"])
    zeros = {k: torch.zeros_like(v) for k, v in a.items()}
    assert same(dare([a, zeros], p=0.5, seed=7), dare([a], p=0.5, seed=7))
    assert same(dare([{"b": a["b"], "w": a["w"]}], p=0.5, seed=7), {k: dare([a], p=0.5, seed=7)[k] for k in ("b", "w")})


def test_dare_limits_and_dtypes():
    a, b = {"w": t(1, -2, 3)}, {"w": t(0.5, 2, -1)}
    assert same(dare([a, b], p=0.0, seed=0), task_arithmetic([a, b]))
    assert same(dare([a, b], p=1.0, seed=0), {"w": t(0, 0, 0)})
    out = dare([{"w": a["w"].half()}], p=0.5, seed=0)
    assert out["w"].dtype == torch.float16
    assert all(v in (0.0, 2.0 * x) for v, x in zip(out["w"].tolist(), a["w"].tolist()))


def test_dare_ties_calls_ties_on_the_dropped_vectors():
    a, b, c = _big(4, 500), _big(5, 500), _big(6, 500)
    b = {k: -v for k, v in b.items()}  # sign conflicts for TIES to resolve
    dropped = [{k: dare_drop(v, p=0.3, seed=1, task=i, key=k) for k, v in tv.items()} for i, tv in enumerate([a, b, c])]
    assert same(dare([a, b, c], p=0.3, seed=1, base="ties"), ties(dropped))
    kw = {"top_k": 0.5, "resolve_zero": "zero"}
    assert same(dare([a, b, c], p=0.3, seed=1, base="ties", ties_kwargs=kw), ties(dropped, **kw))


def test_dare_bad_input():
    a = {"w": t(1, 2)}
    with pytest.raises(ValueError, match="'w'"):
        dare([a, {"w": t(1.0)}], p=0.5)
    with pytest.raises(ValueError, match="p"):
        dare([a], p=1.5)
    with pytest.raises(ValueError, match="base"):
        dare([a], p=0.5, base="magmax")
    with pytest.raises(ValueError, match="seed"):
        dare([a], p=0.5, seed=True)
    with pytest.raises(ValueError, match="ties_kwargs"):
        dare([a], p=0.5, ties_kwargs={"top_k": 0.5})


# --------------------------------------------------------------------------------------------
# Consensus (TALL masks)

T1 = {"w": t(1, 0, 2, -1)}
T2 = {"w": t(1, 3, -2, 0)}
T3 = {"w": t(0, 0, 0.5, 1)}
# tau_MTL = (2, 3, 0.5, 0); with lam = 1 the TALL masks |tau_t| >= |tau_MTL - tau_t| are
#   t1: 1>=1 T, 0>=3 F, 2>=1.5 T, 1>=1 T
#   t2: 1>=1 T, 3>=0 T, 2>=2.5 F, 0>=0 T
#   t3: 0>=2 F, 0>=3 F, .5>=0 T, 1>=1 T      -> agreement counts (2, 1, 2, 3)


def test_consensus_worked_example():
    assert tall_mask(T1["w"], t(2, 3, 0.5, 0), 1.0).tolist() == [True, False, True, True]
    tvs = [T1, T2, T3]
    assert same(consensus(tvs, k=2, lam_tall=1.0), {"w": t(2, 0, 0.5, 0)})
    assert same(consensus(tvs, k=1, lam_tall=1.0), {"w": t(2, 3, 0.5, 0)})
    assert same(consensus(tvs, k=3, lam_tall=1.0), {"w": t(0, 0, 0, 0)})
    assert same(consensus(tvs, k=0, lam_tall=1.0), task_arithmetic(tvs))
    # per-task lambda: t2 with 0.5 claims entry 2 as well (2 >= 1.25) -> count 3 there
    assert same(consensus(tvs, k=3, lam_tall=[1.0, 0.5, 1.0]), {"w": t(0, 0, 0.5, 0)})


def test_consensus_properties():
    tvs = [T1, T2, T3]
    assert same(consensus(tvs, lam_tall=0.4), consensus([T3, T1, T2], lam_tall=0.4))
    # T=1: tau_MTL = tau, every entry is claimed once
    assert same(consensus([T1], k=1, lam_tall=0.5), T1)
    assert same(consensus([T1], k=2, lam_tall=0.5), {"w": t(0, 0, 0, 0)})
    half = consensus([{"w": v["w"].half()} for v in tvs], lam_tall=1.0)
    assert half["w"].dtype == torch.float16 and half["w"].tolist() == [2, 0, 0.5, 0]


def test_consensus_over_ties_masks_the_ties_merge():
    g = torch.Generator().manual_seed(0)
    tvs = [{"w": torch.randn(6, 5, generator=g), "b": torch.randn(5, generator=g)} for _ in range(4)]
    merged = ties(tvs, top_k=0.5)
    out = consensus(tvs, k=2, lam_tall=0.5, base="ties", ties_kwargs={"top_k": 0.5})
    for k in merged:
        count = sum((tv[k].abs() >= (merged[k] - tv[k]).abs() * 0.5).int() for tv in tvs)
        assert torch.equal(out[k], torch.where(count >= 2, merged[k], torch.zeros(())))


def test_consensus_bad_input():
    with pytest.raises(ValueError, match="'w'"):
        consensus([T1, {"w": t(1, 2)}], lam_tall=0.5)
    with pytest.raises(ValueError, match="lam_tall"):
        consensus([T1, T2], lam_tall=[0.5])
    with pytest.raises(ValueError, match="lam_tall"):
        consensus([T1], lam_tall=-1.0)
    with pytest.raises(ValueError, match="k"):
        consensus([T1], k=-1, lam_tall=0.5)
    with pytest.raises(ValueError, match="base"):
        consensus([T1], lam_tall=0.5, base="magmax")
    with pytest.raises(TypeError):
        consensus([T1])  # lam_tall has no default: the paper tunes it


# --------------------------------------------------------------------------------------------
# LiNeS

# The floating image-tower keys of open_clip 3.3's ViT-B-16 (``model.visual.state_dict()``).
VIT_B16_OUTSIDE = ["class_embedding", "positional_embedding", "proj", "conv1.weight", "ln_pre.weight",
                   "ln_pre.bias", "ln_post.weight", "ln_post.bias"]
BLOCK_SUFFIXES = ["ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
                  "attn.out_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                  "mlp.c_proj.weight", "mlp.c_proj.bias"]
VIT_B16_KEYS = VIT_B16_OUTSIDE + [f"transformer.resblocks.{l}.{s}" for l in range(12) for s in BLOCK_SUFFIXES]


def test_block_index_on_open_clip_names():
    assert block_index("transformer.resblocks.0.ln_1.weight") == 0
    assert block_index("transformer.resblocks.11.mlp.c_proj.weight") == 11
    assert block_index("transformer.resblocks.1.attn.in_proj_weight") == 1
    assert block_index("visual.transformer.resblocks.23.ln_2.bias") == 23
    assert block_index("model.visual.transformer.resblocks.7.attn.out_proj.bias") == 7
    for key in VIT_B16_OUTSIDE:
        assert block_index(key) is None, key
    assert sorted({block_index(k) for k in VIT_B16_KEYS} - {None}) == list(range(12))


def test_block_index_on_an_open_clip_vision_tower():
    transformer = pytest.importorskip("open_clip.transformer")
    with torch.device("meta"):
        tower = transformer.VisionTransformer(image_size=32, patch_size=8, width=16, layers=12, heads=2,
                                              mlp_ratio=2.0, output_dim=8)
    keys = [k for k, v in tower.state_dict().items() if v.is_floating_point()]
    assert sorted(keys) == sorted(VIT_B16_KEYS)
    assert {k: block_index(k) for k in keys} == {k: block_index(k) for k in VIT_B16_KEYS}


def test_lines_scales_linear_in_depth():
    s = lines_scales(VIT_B16_KEYS, alpha=0.2, beta=0.8)  # L inferred: 12
    assert s["transformer.resblocks.0.attn.in_proj_weight"] == pytest.approx(0.2)
    assert s["transformer.resblocks.11.mlp.c_fc.bias"] == pytest.approx(1.0)
    assert s["transformer.resblocks.5.ln_1.weight"] == pytest.approx(0.2 + 0.8 * 5 / 11)
    # official code: everything outside the blocks at alpha
    assert all(s[k] == pytest.approx(0.2) for k in VIT_B16_OUTSIDE)
    p = lines_scales(VIT_B16_KEYS, alpha=0.2, beta=0.8, outside="by_position")
    assert p["proj"] == pytest.approx(1.0) and p["ln_post.bias"] == pytest.approx(1.0)
    assert p["conv1.weight"] == pytest.approx(0.2) and p["positional_embedding"] == pytest.approx(0.2)
    assert lines_scales(["transformer.resblocks.0.x"], alpha=0.5, beta=1.0)["transformer.resblocks.0.x"] == 0.5


def test_lines_scales_a_task_vector():
    tau = {"conv1.weight": t(1, -2), "transformer.resblocks.0.w": t(1, 1), "transformer.resblocks.1.w": t(2, -4),
           "transformer.resblocks.2.w": t(4, 8), "proj": t(1, 1)}
    out = lines(tau, alpha=0.5, beta=1.0)
    assert same(out, {"conv1.weight": t(0.5, -1), "transformer.resblocks.0.w": t(0.5, 0.5),
                      "transformer.resblocks.1.w": t(2, -4), "transformer.resblocks.2.w": t(6, 12),
                      "proj": t(0.5, 0.5)})
    # num_blocks given: block 2 of 5 -> 0.5 + 1.0 * 2/4
    assert lines(tau, alpha=0.5, beta=1.0, num_blocks=5)["transformer.resblocks.2.w"].tolist() == [4, 8]
    half = lines({k: v.half() for k, v in tau.items()}, alpha=0.5, beta=1.0)
    assert half["proj"].dtype == torch.float16 and half["transformer.resblocks.2.w"].tolist() == [6, 12]


def test_lines_multitask_alpha():
    a, b = {"w": t(1, -2), "v": t(3.0)}, {"w": t(-1, 2), "v": t(1.0)}
    assert lines_multitask_alpha([a, b], task_arithmetic([a, b])) == pytest.approx(0.5)
    # ||a + b||_1 = 4, ||merged||_1 = 8: (4 / 8) / 2
    assert lines_multitask_alpha([a, b], {"w": t(2, 2), "v": t(4.0)}) == pytest.approx(0.25)


def test_lines_bad_input():
    tau = {"transformer.resblocks.3.w": t(1.0), "ln_post.weight": t(1.0)}
    with pytest.raises(ValueError, match="'transformer.resblocks.3.w'"):
        lines(tau, alpha=0.1, beta=0.9, num_blocks=3)
    with pytest.raises(ValueError, match="num_blocks"):
        lines({"proj": t(1.0)}, alpha=0.1, beta=0.9)
    with pytest.raises(ValueError, match="'idx'"):
        lines({"idx": torch.tensor([1, 2])}, alpha=0.1, beta=0.9)
    with pytest.raises(ValueError, match="beta"):
        lines(tau, alpha=0.1, beta=float("nan"))
    with pytest.raises(ValueError, match="outside"):
        lines(tau, alpha=0.1, beta=0.9, outside="last")
    with pytest.raises(ValueError, match="'v'"):
        lines_multitask_alpha([{"w": t(1.0)}], {"w": t(1.0), "v": t(1.0)})
