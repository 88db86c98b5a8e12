"""TIES's trimming scope: ``whole_model`` against a hand-written transcription of the official
MagMax code (danielm1405/magmax src/merging/ties.py: state_dict_to_vector, topk_values_mask,
resolve_sign "mass" with the majority rule for zeros, disjoint_merge "dis-mean"), run on small
state dicts whose untouched entries (a "text tower") are zero in every task vector."""

from __future__ import annotations

import pytest
import torch

from pipeline.analysis import sign_conflicts
from pipeline.merging import ties, trim_count, trim_options, trim_threshold

# ---- the oracle ------------------------------------------------------------------------------


def to_vector(sd: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([sd[k].reshape(-1) for k in sorted(sd)])


def to_state_dict(vec: torch.Tensor, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, i = {}, 0
    for k in sorted(like):
        n = like[k].numel()
        out[k] = vec[i:i + n].view_as(like[k])
        i += n
    return out


def official_topk(M: torch.Tensor, K: float) -> torch.Tensor:
    if K > 1:
        K /= 100
    n, d = M.shape
    k = int(d * K)
    k = d - k
    kth_values, _ = M.abs().kthvalue(k, dim=1, keepdim=True)
    return M * (M.abs() >= kth_values)


def official_sign(T: torch.Tensor) -> torch.Tensor:
    sign_to_mult = torch.sign(T.sum(dim=0))
    majority_sign = torch.sign(sign_to_mult.sum())
    sign_to_mult[sign_to_mult == 0] = majority_sign
    return sign_to_mult


def official_ties(full_tvs: list[dict[str, torch.Tensor]], reset_thresh: float = 20) -> dict[str, torch.Tensor]:
    checks = torch.vstack([to_vector(tv) for tv in full_tvs])
    updated = official_topk(checks.clone(), reset_thresh)
    signs = official_sign(updated)
    rows_to_keep = torch.where(signs.unsqueeze(0) > 0, updated > 0, updated < 0)
    selected = updated * rows_to_keep
    counts = (selected != 0).sum(dim=0).float()
    merged = torch.sum(selected, dim=0) / torch.clamp(counts, min=1)
    return to_state_dict(merged, full_tvs[0])


def official_conflicts(full_tvs, reset_thresh: float = 20) -> float:
    """Figure 3's measure on the official trimming: share of whole-model entries whose kept values
    hold both signs."""
    updated = official_topk(torch.vstack([to_vector(tv) for tv in full_tvs]), reset_thresh)
    both = (updated > 0).any(0) & (updated < 0).any(0)
    return int(both.sum()) / updated.shape[1]


# ---- small state dicts -----------------------------------------------------------------------

IMAGE = {"visual.conv.weight": (4, 3, 2, 2), "visual.ln.bias": (7,), "visual.proj": (5, 6)}
TEXT = {"transformer.w": (9, 5), "token_embedding.weight": (11, 3), "logit_scale": ()}


def task_vectors(n_tasks: int, seed: int, quantized: bool = False, text=TEXT):
    """(image-tower vectors, whole-state-dict vectors with the text entries at zero)."""
    g = torch.Generator().manual_seed(seed)
    images = []
    for _ in range(n_tasks):
        tv = {}
        for k, shape in IMAGE.items():
            x = torch.randn(shape, generator=g)
            # quantized: many exact ties at the threshold, exact zeros and zero-sum columns
            tv[k] = (x * 2).round() / 4 if quantized else x
        images.append(tv)
    wholes = [{**tv, **{k: torch.zeros(s) for k, s in text.items()}} for tv in images]
    return images, wholes


def untouched(text=TEXT) -> int:
    return sum(torch.zeros(s).numel() for s in text.values())


# ---- tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed, n_tasks, quantized", [(0, 2, False), (1, 3, False), (2, 5, False),
                                                      (3, 3, True), (4, 4, True), (5, 6, True)])
def test_whole_model_ties_equals_the_official_ties(seed, n_tasks, quantized):
    images, wholes = task_vectors(n_tasks, seed, quantized)
    ref = official_ties(wholes)
    for chunk in (None, 5):
        ours = ties(images, top_k=0.2, chunk_numel=chunk, **trim_options("whole_model", "auto", untouched()))
        assert ours.keys() == IMAGE.keys()
        for k in IMAGE:
            assert torch.equal(ours[k] != 0, ref[k] != 0), k
            torch.testing.assert_close(ours[k], ref[k], rtol=1e-6, atol=0)
    for k in TEXT:  # what the official merge gives the text tower: nothing
        assert not ref[k].any()


def test_whole_model_keeps_more_than_the_image_tower_scope():
    images, wholes = task_vectors(1, seed=6)
    d = sum(t.numel() for t in images[0].values())
    whole = ties(images, top_k=0.2, **trim_options("whole_model", "auto", untouched()))
    tower = ties(images, top_k=0.2, **trim_options("image_tower", "auto", untouched()))
    kept_whole = sum(int((t != 0).sum()) for t in whole.values())
    kept_tower = sum(int((t != 0).sum()) for t in tower.values())
    dw = d + untouched()
    assert kept_tower == max(1, int(d * 0.2))            # exact: the fraction asked for, of the tower
    assert kept_whole == int(dw * 0.2) + 1               # official: int(d*k)+1 of the whole model
    assert kept_whole > kept_tower


def test_threshold_with_extra_zeros_equals_kthvalue_over_the_materialised_zeros():
    g = torch.Generator().manual_seed(7)
    tv = {"a": torch.randn(300, generator=g), "b": torch.randn(17, 3, generator=g)}
    d = 300 + 51
    for extra in (0, 1, 50, 400, 1200, 5000):
        full = torch.cat([tv["a"], tv["b"].reshape(-1), torch.zeros(extra)]).abs()
        for top_k in (0.05, 0.2, 0.5):
            for entries in ("exact", "official"):
                n = trim_count(d + extra, top_k, entries)
                want = None if n >= d else full.kthvalue(d + extra - n + 1).values
                for chunk in (None, 7):
                    got = trim_threshold(tv, top_k, chunk_numel=chunk, extra_zeros=extra, entries=entries)
                    if want is None:
                        assert got is None
                    else:
                        assert torch.equal(got, want), (extra, top_k, entries, chunk)
    assert trim_count(1000, 0.2, "official") == 201 and trim_count(1000, 0.2, "exact") == 200
    assert trim_count(3, 0.2, "official") == 1 and trim_count(3, 0.2, "exact") == 1


def test_threshold_paths_agree_above_the_bracket_size():
    # d >= 2^20 takes the sampled-bracket path; the radix path (chunked) and kthvalue must agree
    g = torch.Generator().manual_seed(8)
    tv = {"w": torch.randn(1 << 20, generator=g), "b": torch.randn(1000, generator=g)}
    d = (1 << 20) + 1000
    extra = 700_000
    want = torch.cat([tv["w"], tv["b"]]).abs().kthvalue(d - trim_count(d + extra, 0.2, "official") + 1).values
    for chunk in (None, 1 << 18):
        assert torch.equal(trim_threshold(tv, 0.2, chunk_numel=chunk, extra_zeros=extra, entries="official"), want)


@pytest.mark.parametrize("seed, quantized", [(9, False), (10, True)])
def test_sign_conflicts_whole_model_denominator(seed, quantized):
    images, wholes = task_vectors(4, seed, quantized)
    want = official_conflicts(wholes)
    got = sign_conflicts(images, top_k=0.2, **trim_options("whole_model", "auto", untouched()))
    assert got == pytest.approx(want, abs=1e-12)
    assert got > 0
    # image_tower scope: the denominator is the tower alone, the threshold its own
    d = sum(t.numel() for t in images[0].values())
    tower = sign_conflicts(images, top_k=0.2)
    assert tower == sign_conflicts(images, top_k=0.2, **trim_options("image_tower", "auto", untouched()))
    assert tower * d == pytest.approx(round(tower * d))  # a count over the tower's d entries


def test_trim_options():
    assert trim_options("whole_model", "auto", 10) == {"extra_zeros": 10, "entries": "official"}
    assert trim_options("whole_model", "exact", 10) == {"extra_zeros": 10, "entries": "exact"}
    assert trim_options("image_tower", "auto", 10) == {"extra_zeros": 0, "entries": "exact"}
    assert trim_options("image_tower", "official", 10) == {"extra_zeros": 0, "entries": "official"}
    with pytest.raises(ValueError, match="scope"):
        trim_options("text_tower", "auto", 10)
    with pytest.raises(ValueError, match="entries"):
        trim_options("whole_model", "most", 10)
    with pytest.raises(ValueError, match="extra_zeros"):
        trim_threshold({"a": torch.ones(3)}, 0.2, extra_zeros=-1)


def test_default_is_todays_trimming():
    images, _ = task_vectors(3, seed=11)
    plain = ties(images, top_k=0.2)
    explicit = ties(images, top_k=0.2, extra_zeros=0, entries="exact")
    assert all(torch.equal(plain[k], explicit[k]) for k in plain)


def test_tiny_clip_whole_model_keeps_the_whole_image_tower(tiny_clip_dir):
    # the demo's tiny CLIP has a text tower ~7x its image tower: under whole_model the official
    # top-20 % count exceeds the image tower, so TIES trims nothing there
    from pipeline.models import load_clip

    clip = load_clip(f"local-dir:{tiny_clip_dir}")
    whole = sum(v.numel() for v in clip.model.state_dict().values() if v.is_floating_point())
    tower = {k: v for k, v in clip.visual.state_dict().items() if v.is_floating_point()}
    d = sum(v.numel() for v in tower.values())
    assert trim_count(whole, 0.2, "official") > d
    assert trim_threshold(tower, 0.2, **trim_options("whole_model", "auto", whole - d)) is None
