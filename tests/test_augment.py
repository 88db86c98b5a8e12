"""The backbone's train augmentation, drawn per (seed, task, epoch, index): open_clip's distribution,
reproducible across loaders, worker counts and resumes, and cached before the crop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from pipeline.data.augment import (
    AugmentedSubset,
    PreCrop,
    SeededCrop,
    hold_precrop,
    sample_seed,
    seeded_crop_from,
)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _images(n: int, h: int = 40, w: int = 40, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 3, h, w), dtype=np.uint8))


def _crops(subset: AugmentedSubset, workers: int, order: list[int] | None = None) -> dict[int, torch.Tensor]:
    """Crop per dataset index, read through a DataLoader in ``order`` (positions)."""
    positions = order if order is not None else list(range(len(subset)))
    loader = DataLoader(subset, batch_size=3, sampler=positions, num_workers=workers)
    images = torch.cat([x for x, _ in loader])
    return {subset.indices[p]: img for p, img in zip(positions, images)}


# -- the backbone's own train transform ---------------------------------------------------------

@pytest.mark.parametrize("backbone,side", [("ViT-B-16", 224), ("local-dir", 32)])
def test_the_backbones_train_transform_is_open_clips_crop_and_clip_normalisation(backbone, side, tiny_clip_dir,
                                                                                   monkeypatch):
    from pipeline.models import load_clip

    clip = load_clip(f"local-dir:{tiny_clip_dir}" if backbone == "local-dir" else backbone, None)
    crop = seeded_crop_from(clip.train_transform)
    assert crop.size == (side, side) == (clip.image_size, clip.image_size)  # from the backbone, not fixed
    assert crop.scale == (0.9, 1.0) and crop.ratio == pytest.approx((3 / 4, 4 / 3))
    assert crop.interpolation == InterpolationMode.BICUBIC
    assert crop.mean == pytest.approx(OPENAI_MEAN) and crop.std == pytest.approx(OPENAI_STD)

    # given the same crop box, ours equals open_clip's own train transform on the PIL image
    pil = Image.fromarray(_images(1, 50, 70)[0].permute(1, 2, 0).numpy())
    generator = torch.Generator().manual_seed(3)
    box = crop.params(50, 70, torch.Generator().manual_seed(3))
    monkeypatch.setattr(T.RandomResizedCrop, "get_params", staticmethod(lambda img, scale, ratio: box))
    want = clip.train_transform(pil)
    got = crop(PreCrop()(pil), generator)
    assert got.shape == (3, side, side)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_a_train_transform_with_other_random_steps_is_refused():
    tf = T.Compose([T.RandomResizedCrop(32), T.ColorJitter(0.4), T.ToTensor(), T.Normalize(OPENAI_MEAN, OPENAI_STD)])
    with pytest.raises(ValueError, match="ColorJitter"):
        seeded_crop_from(tf)


@pytest.mark.parametrize("height,width", [(1000, 800), (64, 64), (33, 120)])
def test_crop_boxes_respect_the_scale_and_ratio_bounds(height, width):
    crop = SeededCrop(size=(32, 32))
    generator = torch.Generator().manual_seed(0)
    for _ in range(300):
        top, left, h, w = crop.params(height, width, generator)
        assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
        if (height, width) == (33, 120):  # too wide for the ratio range: the centred fallback
            assert (h, w) == (33, 44) and left == (120 - 44) // 2
            continue
        # w and h are rounded to pixels: the area fraction may leave [0.9, 1] by that rounding only
        slack = (h + w + 1) / (2 * height * width)
        assert 0.9 - slack <= h * w / (height * width) <= 1.0
        assert 3 / 4 - 1 / h <= w / h <= 4 / 3 + 1 / h


def test_cache_side_keeps_every_crop_at_the_model_size_or_more():
    crop = SeededCrop(size=(224, 224))
    side = crop.cache_side
    assert side == math.ceil(224 / math.sqrt(0.9 * 0.75))  # 273
    generator = torch.Generator().manual_seed(1)
    assert min(min(crop.params(side, side, generator)[2:]) for _ in range(500)) >= 224


# -- reproducible crops --------------------------------------------------------------------------

def test_a_samples_crop_depends_on_seed_epoch_and_index_only():
    base = TensorDataset(_images(12), torch.arange(12))
    crop = SeededCrop(size=(32, 32))
    a = AugmentedSubset(base, [3, 5, 7, 9, 11], seed=11, crop=crop)
    b = AugmentedSubset(base, [11, 9, 7, 5, 3], seed=11, crop=crop)  # other positions, same indices

    first = _crops(a, workers=0)
    assert set(first) == {3, 5, 7, 9, 11}
    for other in (_crops(a, workers=0), _crops(a, workers=2, order=[4, 2, 0, 3, 1]), _crops(b, workers=2)):
        for index, image in first.items():
            assert torch.equal(other[index], image), index

    for subset in (a, b):
        subset.set_epoch(1)  # set before the iterator starts: the workers get it
    second = _crops(a, workers=2)
    assert all(torch.equal(_crops(b, workers=0)[i], second[i]) for i in second)
    assert all(not torch.equal(second[i], first[i]) for i in first)
    a.set_epoch(0)
    assert all(torch.equal(_crops(a, workers=0)[i], first[i]) for i in first)
    other_seed = AugmentedSubset(base, [3, 5, 7, 9, 11], seed=12, crop=crop)
    assert all(not torch.equal(_crops(other_seed, workers=0)[i], first[i]) for i in first)


def test_sample_seeds_are_distinct_across_seed_epoch_and_index():
    seeds = {sample_seed(s, e, i) for s in (0, 1, 1000, 5001) for e in range(4) for i in range(50)}
    assert len(seeds) == 4 * 4 * 50
    assert sample_seed(-3, 0, 0) >= 0


# -- the in-memory cache holds uncropped images ----------------------------------------------------

def test_the_cache_holds_uncropped_images_and_counts_their_bytes():
    images = _images(5, 40, 40)
    stream = TensorDataset(images, torch.arange(5))
    held = hold_precrop(stream, side=48, budget=5 * 3 * 40 * 40)
    assert held is not None and held.tensors[0].dtype == torch.uint8
    assert torch.equal(held.tensors[0], images)  # kept as they are: not cropped, not resized
    assert hold_precrop(stream, side=48, budget=5 * 3 * 40 * 40 - 1) is None  # over the budget

    big = hold_precrop(TensorDataset(_images(2, 100, 60), torch.arange(2)), side=30, budget=1 << 20)
    assert tuple(big.tensors[0].shape) == (2, 3, 50, 30)  # short side scaled down to the cache side

    class Mixed(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return (_images(1, 40, 40)[0], 0) if i == 0 else (_images(1, 30, 50)[0], 1)

    mixed = hold_precrop(Mixed(), side=36, budget=1 << 20)
    assert tuple(mixed.tensors[0].shape) == (2, 3, 36, 36)
    assert hold_precrop(Mixed(), side=36, budget=2 * 3 * 36 * 36 - 1) is None


def _cfg(root, tmp_path, transform: str):
    from pipeline.config import load_config

    return load_config("configs/demo.yaml", [f"data_root={root}", "demo_data=false", f"storage={tmp_path}",
                                             "finetune.epochs=3", "finetune.batch_size=40", "scenarios.0.tasks=5",
                                             f"finetune.train_transform={transform}"])


@pytest.fixture(scope="module")
def train_scn(demo_data_root, tmp_path_factory):
    from pipeline.scenario import build_scenario

    cfg = _cfg(demo_data_root, tmp_path_factory.mktemp("aug_store"), "train")
    return build_scenario(cfg, cfg.scenarios[0])


def test_a_scenario_holds_uncropped_train_images_and_eval_test_images(train_scn, demo_data_root):
    from pipeline.data import load_dataset

    scn = train_scn
    assert scn.in_memory
    raw = load_dataset("demo_shapes", demo_data_root, PreCrop(), PreCrop())
    held = scn.data.train.tensors[0]
    assert held.dtype == torch.uint8 and len(held) == len(raw.train)
    for i in (0, 7, len(held) - 1):
        assert torch.equal(held[i], raw.train[i][0])
    test = scn.data.test.tensors[0]
    assert test.dtype == torch.float32 and torch.equal(test[0], scn.clip.eval_transform(
        Image.fromarray(raw.test[0][0].permute(1, 2, 0).numpy())))

    loader = scn.train_loader([1], seed=5001, batch_size=40)
    assert isinstance(loader.dataset, AugmentedSubset) and loader.dataset.seed == 5001
    images, _ = next(iter(loader))
    assert images.dtype == torch.float32 and tuple(images.shape[1:]) == (3, scn.clip.image_size, scn.clip.image_size)

    # the epoch reaches the crops through the loader's set_epoch, also in loader worker processes
    batches = []
    for workers in (0, 2):
        loader = scn.train_loader([1], seed=5001, batch_size=40, workers=workers)
        loader.set_epoch(2)
        batches.append([x for x, _ in loader])
    assert all(torch.equal(x, y) for x, y in zip(*batches)) and len(batches[0]) == len(batches[1])
    first = scn.train_loader([1], seed=5001, batch_size=40)
    first.set_epoch(2)
    first.dataset.set_epoch(0)  # same order as epoch 2, crops of epoch 0
    assert not torch.equal(next(iter(first))[0], batches[0][0])


def test_eval_transform_training_keeps_the_eval_images(demo_data_root, tmp_path):
    from torch.utils.data import Subset

    from pipeline.scenario import build_scenario

    cfg = _cfg(demo_data_root, tmp_path, "eval")
    scn = build_scenario(cfg, cfg.scenarios[0])
    assert scn.data.train.tensors[0].dtype == torch.float32
    assert isinstance(scn.train_loader([0], seed=1, batch_size=8).dataset, Subset)


def test_a_chain_killed_mid_task_resumes_to_the_same_augmented_weights(train_scn, tmp_path):
    from pipeline.storage import CheckpointStore, read_tensors
    from pipeline.chain import run_chain
    from pipeline.units import ChainUnit

    unit = ChainUnit(train_scn.scenario, "seq", (0,))
    clean = run_chain(train_scn, unit, tmp_path / "clean")

    class Crash(RuntimeError):
        pass

    def crash(task: int, epoch: int, loss: float) -> None:
        if epoch == 1:
            raise Crash("worker lost in the second epoch")

    store = CheckpointStore(tmp_path / "faulty")
    with pytest.raises(Crash):
        run_chain(train_scn, unit, store.folder, on_epoch_done=crash)
    epochs_run = []
    resumed = run_chain(train_scn, unit, store.folder, on_epoch_done=lambda t, e, loss: epochs_run.append(e))
    assert epochs_run == [1, 2]  # resumed after the first epoch: its crops came from (seed, epoch, index)
    want, got = read_tensors(clean[0]), read_tensors(resumed[0])
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-6, atol=1e-7, msg=key)


def test_the_official_full_resolution_crop_is_an_option(tmp_path, demo_data_root):
    """finetune.precrop_downscale=false: train images are not held downscaled before the random
    crop (the official code crops the full image), and such checkpoints get keys of their own."""
    from torch.utils.data import TensorDataset

    from pipeline import scenario as sc
    from pipeline.config import ConfigError, load_config
    from pipeline.units import checkpoint_key

    base = [f"data_root={demo_data_root}", "demo_data=false", "finetune.train_transform=train"]
    held, official = (load_config("configs/demo.yaml", [*base, f"finetune.precrop_downscale={v}"])
                      for v in ("true", "false"))
    clip = sc.load_clip_from_config(held.model)
    assert isinstance(sc._load(held, "demo_shapes", clip).train, TensorDataset)
    data = sc._load(official, "demo_shapes", clip)
    assert not isinstance(data.train, TensorDataset) and isinstance(data.test, TensorDataset)
    s = held.scenarios[0]
    assert checkpoint_key(held, s, "seq") != checkpoint_key(official, s, "seq")
    # the default leaves every existing key as it was
    assert checkpoint_key(held, s, "seq") == checkpoint_key(load_config("configs/demo.yaml", base), s, "seq")
    with pytest.raises(ConfigError, match="needs finetune.precrop_downscale=true"):
        load_config("configs/demo.yaml", ["finetune.precrop_downscale=false", "finetune.decoded_cache=cpu"])
