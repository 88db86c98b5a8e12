"""The node-local decoded-image cache: what it stores, how it is keyed and built, and the batched
(GPU) crop, checked on CPU against the per-image path (``SeededCrop``, PIL) bit for bit."""

from __future__ import annotations

import json
import multiprocessing as mp

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from pipeline.data import decoded_cache as dc
from pipeline.data.augment import AugmentedSubset, PreCrop, SeededCrop, _cap
from pipeline.data.image_folder import image_folder_loader

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def _image(h: int, w: int, seed: int) -> torch.Tensor:
    # smooth content plus noise: resampling sums land everywhere, not just on flat areas
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 128 + 100 * np.sin(xx[None] / (3 + seed % 5) + yy[None] / 7 + np.arange(3)[:, None, None])
    return torch.from_numpy(np.clip(base + rng.normal(0, 20, (3, h, w)), 0, 255).astype(np.uint8))


def _levels(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| in uint8 levels (normalised tensors: times std * 255)."""
    return (a - b).abs() * torch.tensor(STD).view(1, 3, 1, 1) * 255


# -- the batched crop equals the per-image one -----------------------------------------------------

@pytest.mark.parametrize("size,shapes", [
    ((224, 224), [(273, 364), (364, 273), (273, 273), (200, 150)]),   # cache-sized, a small one upsampled
    ((32, 32), [(40, 40), (50, 70), (33, 120), (20, 25), (48, 37), (90, 41)]),
])
def test_crop_batch_equals_seeded_crop_per_image(size, shapes):
    crop = SeededCrop(size=size)
    images = [_image(h, w, i) for i, (h, w) in enumerate(shapes)]
    generator = torch.Generator().manual_seed(3)
    boxes = [crop.params(im.shape[1], im.shape[2], generator) for im in images]
    generator = torch.Generator().manual_seed(3)
    want = torch.stack([crop(im, generator) for im in images])  # the CPU path: PIL crop + resize
    padded = dc.pad_batch(images)
    exact = dc.crop_batch(padded, torch.tensor(boxes), crop, dtype=torch.float64, chunk=3)
    assert torch.equal(exact, want)  # float64: PIL's fixed point reproduced bit for bit
    fast = dc.crop_batch(padded, torch.tensor(boxes), crop, dtype=torch.float32)
    assert _levels(fast, want).max() <= 1.0 + 1e-3  # float32: at most one uint8 level off
    assert (_levels(fast, want) > 0.5).float().mean() < 1e-3


def test_device_crop_subset_draws_the_boxes_of_augmented_subset(tmp_path):
    images = [_image(40 + 3 * i, 60 - 2 * i, i) for i in range(6)]
    cache = dc.build_or_open(tmp_path, "k", _Images(images))
    crop = SeededCrop(size=(32, 32))
    cpu = AugmentedSubset(cache, [5, 1, 3], seed=7, crop=crop)
    gpu = dc.DeviceCropSubset(cache, [5, 1, 3], seed=7, crop=crop, device="cpu", dtype=torch.float64)
    for epoch in (0, 2):
        cpu.set_epoch(epoch)
        gpu.set_epoch(epoch)
        padded, labels = gpu.collate([gpu[p] for p in range(3)])
        assert labels.tolist() == [5, 1, 3]
        want = torch.stack([cpu[p][0] for p in range(3)])
        assert torch.equal(gpu.finish(padded), want)


def test_the_batched_crop_refuses_non_bicubic_and_float_input():
    with pytest.raises(ValueError, match="bicubic"):
        dc.crop_batch(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), torch.tensor([[0, 0, 8, 8]]),
                      SeededCrop(size=(4, 4), interpolation=InterpolationMode.BILINEAR))
    with pytest.raises(TypeError, match="uint8"):
        dc.crop_batch(torch.zeros(1, 3, 8, 8), torch.tensor([[0, 0, 8, 8]]), SeededCrop(size=(4, 4)))


# -- the files --------------------------------------------------------------------------------------

class _Images(Dataset):
    """uint8 images with label = index; counts reads in ``log`` (a file: also across processes)."""

    def __init__(self, images, log=None, fail_at=None):
        self.images, self.log, self.fail_at = images, log, fail_at

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        if self.log is not None:
            with open(self.log, "a") as fh:
                fh.write(f"{i}\n")
        if i == self.fail_at:
            raise OSError("unreadable image")
        return self.images[i], i


def test_a_cache_is_built_once_and_read_back_exactly(tmp_path):
    images = [_image(h, w, i) for i, (h, w) in enumerate([(10, 12), (7, 30), (16, 16)])]
    log = tmp_path / "reads"
    cache = dc.build_or_open(tmp_path / "c", "key1", _Images(images, log))
    assert len(cache) == 3 and cache.targets.tolist() == [0, 1, 2]
    for i, im in enumerate(images):
        got, label = cache[i]
        assert torch.equal(got, im) and label == i and cache.shape(i) == tuple(im.shape)
    meta = json.loads((tmp_path / "c" / "key1.json").read_text())
    assert meta["count"] == 3 and meta["bytes"] == sum(im.numel() for im in images)
    again = dc.build_or_open(tmp_path / "c", "key1", _Images(images, log))  # complete: not decoded again
    assert len(log.read_text().split()) == 3 and torch.equal(again[1][0], images[1])
    # pickled to loader workers / Ray without the map (each process maps the file itself)
    import pickle
    clone = pickle.loads(pickle.dumps(again))
    assert clone._data is None and torch.equal(clone[2][0], images[2])
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["key1.idx.npy", "key1.json", "key1.lock", "key1.u8"]


def test_a_failed_build_leaves_nothing_that_reads_as_a_cache(tmp_path):
    images = [_image(8, 8, i) for i in range(3)]
    with pytest.raises(OSError, match="unreadable"):
        dc.build_or_open(tmp_path, "k", _Images(images, fail_at=2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.lock"]
    assert len(dc.build_or_open(tmp_path, "k", _Images(images))) == 3  # the next caller builds it


def test_a_truncated_data_file_is_not_taken_as_complete(tmp_path):
    images = [_image(8, 8, i) for i in range(3)]
    dc.build_or_open(tmp_path, "k", _Images(images))
    data = tmp_path / "k.u8"
    data.write_bytes(data.read_bytes()[:-1])
    assert not dc._complete(tmp_path, "k")
    with pytest.raises(OSError, match="bytes"):
        dc.DecodedImages(tmp_path, "k")
    assert torch.equal(dc.build_or_open(tmp_path, "k", _Images(images))[2][0], images[2])  # rebuilt


def _build_in_child(folder, log, barrier):
    images = [_image(12, 12, i) for i in range(20)]
    barrier.wait()
    cache = dc.build_or_open(folder, "shared", _Images(images, log))
    assert all(torch.equal(cache[i][0], images[i]) for i in range(20))


def test_concurrent_builders_on_one_node_decode_once(tmp_path):
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(3)
    log = tmp_path / "reads"
    procs = [ctx.Process(target=_build_in_child, args=(tmp_path / "c", log, barrier)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert len(log.read_text().split()) == 20  # one of them decoded, the others opened its files


def test_keys_follow_content_split_and_transform():
    base = dc.cache_key("sha256:aa", "train", {"kind": "precrop", "side": 273})
    assert base == dc.cache_key("sha256:aa", "train", {"side": 273, "kind": "precrop"})
    others = [dc.cache_key("sha256:ab", "train", {"kind": "precrop", "side": 273}),
              dc.cache_key("sha256:aa", "test", {"kind": "precrop", "side": 273}),
              dc.cache_key("sha256:aa", "train", {"kind": "precrop", "side": 274})]
    assert len({base, *others}) == 4


def test_mode_and_folder_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(dc.ENV_MODE, raising=False)
    monkeypatch.delenv(dc.ENV_DIR, raising=False)
    assert dc.cache_mode() == "off"  # default: nothing changes
    assert str(dc.cache_dir()).endswith(".cache/magmax/decoded")
    for raw, mode in [("1", "cpu"), ("GPU", "gpu"), ("off", "off"), ("0", "off")]:
        monkeypatch.setenv(dc.ENV_MODE, raw)
        assert dc.cache_mode() == mode
    monkeypatch.setenv(dc.ENV_MODE, "fast")
    with pytest.raises(ValueError, match="MAGMAX_DECODED_CACHE"):
        dc.cache_mode()
    monkeypatch.setenv(dc.ENV_DIR, str(tmp_path))
    assert dc.cache_dir() == tmp_path
    # no GPU here: mode gpu keeps the crops on the loader cores
    assert dc.device_crop_subset(None, [0], 0, SeededCrop(size=(4, 4)), mode="gpu") is None


# -- a dataset bundle -------------------------------------------------------------------------------

def _jpeg_world(root, sizes):
    for split in ("train", "test"):
        for c in ("a", "b"):
            folder = root / "world" / split / c
            folder.mkdir(parents=True)
            for i, (h, w) in enumerate(sizes):
                Image.fromarray(_image(h, w, i + (c == "b")).permute(1, 2, 0).numpy()).save(folder / f"{i}.jpg",
                                                                                           quality=90)


def test_cache_bundle_replaces_on_disk_splits_by_equal_caches(tmp_path):
    _jpeg_world(tmp_path / "data", [(60, 80), (90, 50), (40, 40)])
    eval_tf = T.Compose([T.Resize(32, interpolation=InterpolationMode.BICUBIC), T.CenterCrop(32), T.ToTensor(),
                         T.Normalize(MEAN, STD)])
    crop = SeededCrop(size=(32, 32))

    def bundle():
        return image_folder_loader("world")(tmp_path / "data", PreCrop(), eval_tf)

    plain = bundle()
    cached = dc.cache_bundle(bundle(), crop, eval_tf, folder=tmp_path / "cache")
    assert isinstance(cached.train, dc.DecodedImages) and isinstance(cached.test, dc.Normalised)
    assert cached.train.targets.tolist() == plain.train_targets.tolist()
    for i in range(len(plain.train)):
        # train: the pre-crop image with its short side capped, as the in-memory cache holds it
        assert torch.equal(cached.train[i][0], _cap(plain.train[i][0], crop.cache_side))
        # test: exactly the eval transform's tensor
        assert torch.equal(cached.test[i][0], plain.test[i][0]) and cached.test[i][1] == plain.test[i][1]
    files = sorted(p.name for p in (tmp_path / "cache").iterdir() if p.suffix == ".json")
    assert len(files) == 2
    # the same content again: the same files; another crop size: another key
    dc.cache_bundle(bundle(), crop, eval_tf, folder=tmp_path / "cache")
    dc.cache_bundle(bundle(), SeededCrop(size=(24, 24)), eval_tf, folder=tmp_path / "cache")
    assert len([p for p in (tmp_path / "cache").iterdir() if p.suffix == ".json"]) == 3
    # an eval transform with another step is not cached (its test split stays on disk)
    jitter = T.Compose([T.Resize(32), T.ColorJitter(0.1), T.ToTensor(), T.Normalize(MEAN, STD)])
    assert dc.split_eval_transform(jitter) is None
    kept = dc.cache_bundle(bundle(), crop, jitter, folder=tmp_path / "cache")
    assert isinstance(kept.train, dc.DecodedImages) and not isinstance(kept.test, dc.Normalised)


# -- the scenario's opt-in hook ---------------------------------------------------------------------

def test_the_scenario_reads_on_disk_splits_from_the_cache_when_asked(demo_data_root, tmp_path, monkeypatch):
    """With MAGMAX_DECODED_CACHE=cpu a dataset too big to hold is read from the cache, and its
    batches equal those of the in-memory pre-crop path (same capped images, same seeded crops)."""
    import dataclasses

    from pipeline import scenario as sc
    from pipeline.config import load_config

    cfg = load_config("configs/demo.yaml", [f"data_root={demo_data_root}", "demo_data=false",
                                            f"storage={tmp_path / 'store'}", "finetune.batch_size=40",
                                            "scenarios.0.tasks=5", "finetune.train_transform=train"])
    monkeypatch.delenv(dc.ENV_MODE, raising=False)
    clip = sc.load_clip_from_config(cfg.model)
    plain = sc._load(cfg, "demo_shapes", clip)
    # (no head, no θ0: only the loaders are compared)
    tasks = [np.flatnonzero(plain.train_targets % 5 == t) for t in range(5)]
    held = sc.Scenario(cfg, cfg.scenarios[0], clip, plain, torch.zeros(0), [], tasks,
                       [np.arange(len(plain.test_targets))], {})
    assert held.in_memory  # the default: the demo world is small enough to hold

    monkeypatch.setattr(sc, "IN_MEMORY_BYTES", 0)  # as a real dataset: too big to hold
    assert not isinstance(sc._load(cfg, "demo_shapes", clip).train, dc.DecodedImages)  # off: unchanged
    monkeypatch.setenv(dc.ENV_MODE, "cpu")
    monkeypatch.setenv(dc.ENV_DIR, str(tmp_path / "cache"))
    data = sc._load(cfg, "demo_shapes", clip)
    assert isinstance(data.train, dc.DecodedImages) and isinstance(data.test, dc.Normalised)
    cached = dataclasses.replace(held, data=data)
    assert not cached.in_memory  # read by loader workers, as any on-disk dataset

    for a, b in [(held.train_loader([1], seed=5, batch_size=40), cached.train_loader([1], seed=5, batch_size=40))]:
        a.set_epoch(1)
        b.set_epoch(1)
        for (xa, ya), (xb, yb) in zip(a, b):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    xs = torch.cat([x for x, _ in cached.test_loader(64)])
    assert torch.equal(xs, torch.cat([x for x, _ in held.test_loader(64)]))

    # mode gpu (here on the CPU, float64): GlobalBatches pads, then crops each part in the training
    # process; the batches are the per-image ones bit for bit
    monkeypatch.setattr(sc, "device_crop_subset", lambda ds, idx, seed, crop, mode=None: dc.DeviceCropSubset(
        ds, idx, seed, crop, "cpu", torch.float64))
    on_device = cached.train_loader([1], seed=5, batch_size=40, rank=1, world=2)
    assert isinstance(on_device.dataset, dc.DeviceCropSubset)
    per_image = held.train_loader([1], seed=5, batch_size=40, rank=1, world=2)
    on_device.set_epoch(2)
    per_image.set_epoch(2)
    for (xa, ya), (xb, yb) in zip(per_image, on_device):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_the_config_switches_the_cache_on_in_its_own_folder(tmp_path, demo_data_root, monkeypatch):
    from pipeline import scenario as sc
    from pipeline.config import ConfigError, load_config

    monkeypatch.delenv(dc.ENV_MODE, raising=False)
    monkeypatch.delenv(dc.ENV_DIR, raising=False)
    monkeypatch.setattr(sc, "IN_MEMORY_BYTES", 0)  # as a real dataset: too big to hold
    cfg = load_config("configs/demo.yaml", [f"data_root={demo_data_root}", "demo_data=false",
                                            "finetune.decoded_cache=cpu", f"finetune.decoded_cache_dir={tmp_path / 'c'}"])
    data = sc._load(cfg, "demo_shapes", sc.load_clip_from_config(cfg.model))
    assert isinstance(data.train, (dc.DecodedImages, dc.Normalised)) and any((tmp_path / "c").glob("*.u8"))
    with pytest.raises(ConfigError, match="finetune.decoded_cache: 'fast'"):
        load_config("configs/demo.yaml", ["finetune.decoded_cache=fast"])
