"""A scenario made concrete: backbone, dataset, zero-shot head, task splits and data loaders.

Built once per process (a Train worker, an evaluator) from plain config values, so Ray ships
only the config and every worker loads the same things the same way.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, RandomSampler, Sampler, Subset, TensorDataset

from pipeline.config import BenchmarkConfig, ModelConfig, ScenarioConfig
from pipeline.data import RECORDS, DatasetBundle, load_dataset
from pipeline.data.augment import PreCrop, SeededCrop, augmented_subset, hold_precrop, precrop_bytes, seeded_crop_from
from pipeline.data.decoded_cache import cache_bundle, cache_mode, device_crop_subset
from pipeline.data.splits import (
    class_incremental_splits,
    class_order,
    domain_incremental_tasks,
    task_indices,
)
from pipeline.models import Clip, ImageClassifier, image_encoder_state, load_clip, zero_shot_head
from pipeline import storage
from pipeline.models import load_image_encoder_state
from pipeline.finetune import task_label_map
from pipeline.units import task_epochs

# The domain-incremental task orders: a read-only view of the dataset records (pipeline.data.records).
DOMAIN_ORDERS = MappingProxyType({n: r.domains for n, r in RECORDS.items() if r.domains})
# Epochs of a task on a dataset without a record (registered or declared) and finetune.epochs 0.
# Datasets whose decoded train and test images fit in this many bytes (as held: float test images
# at the model's input size, uint8 uncropped train images, or float ones under train_transform=eval)
# are decoded once and kept as tensors: the demo world and profile=tiny. Real datasets at 224 px
# stay on disk and are read by loader workers (CIFAR100's train set alone is 30 GB decoded).
IN_MEMORY_BYTES = 2 << 30


def _materialize(dataset: Dataset, batch_size: int = 512) -> TensorDataset:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    xs, ys = zip(*loader)
    return TensorDataset(torch.cat(xs), torch.cat([torch.as_tensor(y) for y in ys]))


class EpochShuffle(RandomSampler):
    """A shuffle whose order in epoch e depends only on (seed, e), like DistributedSampler's.

    A worker that resumes a task at epoch e then sees the batches an uninterrupted run would
    have seen; ``GlobalBatches`` cuts this one order into the global batches of every worker count.
    """

    def __init__(self, data_source: Dataset, seed: int) -> None:
        super().__init__(data_source, generator=torch.Generator())
        self.seed = int(seed)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed * 100_003 + int(epoch))


def batch_part(size: int, rank: int, world: int) -> tuple[int, int]:
    """[start, stop) of worker ``rank``'s part of a global batch of ``size`` samples.

    Contiguous parts whose sizes differ by at most one (the first ``size % world`` are longer);
    a part is empty only when the batch has fewer samples than there are workers.
    """
    base, extra = divmod(int(size), int(world))
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class Part(tuple):
    """``(images, labels)`` of one worker's part of a global batch of ``global_size`` samples.

    Unpacks like any batch; ``images`` and ``labels`` are None when the part is empty (the
    worker still takes part in the step's gradient reduction).
    """

    global_size: int

    def __new__(cls, images, labels, global_size: int) -> "Part":
        part = super().__new__(cls, (images, labels))
        part.global_size = int(global_size)
        return part


class _PartSampler(Sampler):
    """The DataLoader's batch sampler: the non-empty parts of the epoch being iterated."""

    def __init__(self, owner: "GlobalBatches") -> None:
        self.owner = owner

    def __iter__(self):
        return iter(self.owner._parts)

    def __len__(self) -> int:
        return len(self.owner._parts)


class GlobalBatches:
    """One worker's share of a task's training batches, the same steps for any worker count.

    Epoch e's order is ``EpochShuffle(seed)`` at e, a function of (seed, e) only; it is cut into
    global batches of ``batch_size`` (the last one smaller), ⌈n/batch_size⌉ steps, and worker
    ``rank`` of ``world`` gets ``batch_part`` of each. So a unit trains on the same global
    batches in the same order on 1 or 8 workers, and the loop (``train_task``) averages the loss
    over the global batch (``Part.global_size``), not over the worker's part.
    """

    def __init__(self, dataset: Dataset, seed: int, batch_size: int, rank: int = 0, world: int = 1,
                 workers: int = 0) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"train loader: rank {rank} is outside a world of {world} workers")
        self.dataset = dataset
        self.order = EpochShuffle(dataset, seed)
        self.batch_size, self.rank, self.world = int(batch_size), int(rank), int(world)
        self._parts: list[list[int]] = []
        # decoded cache, GPU crops (pipeline/data/decoded_cache.py): the dataset pads its uint8
        # batches itself and ``finish`` crops them on the device; other datasets: None, unchanged
        self._finish = getattr(dataset, "finish", None)
        self.loader = DataLoader(dataset, batch_sampler=_PartSampler(self), num_workers=workers,
                                 persistent_workers=False, collate_fn=getattr(dataset, "collate", None))

    def set_epoch(self, epoch: int) -> None:
        self.order.set_epoch(epoch)
        if hasattr(self.dataset, "set_epoch"):  # e.g. random augmentation drawn per (seed, epoch)
            self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def __iter__(self):
        order = list(self.order)
        sizes, parts = [], []
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            lo, hi = batch_part(len(batch), self.rank, self.world)
            sizes.append(len(batch))
            parts.append(batch[lo:hi])
        self._parts = [p for p in parts if p]
        loaded = iter(self.loader) if self._parts else iter(())
        for size, part in zip(sizes, parts):
            if part:
                images, labels = next(loaded)
                if self._finish is not None:  # decoded cache: crop + normalise on the device
                    images = self._finish(images)
                yield Part(images, torch.as_tensor(labels), size)
            else:
                yield Part(None, None, size)


def _held(d: Dataset) -> bool:
    if isinstance(d, ConcatDataset):
        return all(_held(p) for p in d.datasets)
    return isinstance(d, TensorDataset)


@dataclass
class Scenario:
    cfg: BenchmarkConfig
    scenario: ScenarioConfig
    clip: Clip
    data: DatasetBundle
    head: torch.Tensor                       # [C, D] over all classes, frozen
    task_classes: list[list[int]]            # classes per task (all classes for domain-incremental)
    train_task_idx: list[np.ndarray]         # train sample indices per task
    test_task_idx: list[np.ndarray]          # test sample indices grouped per task (eval rows)
    theta0: dict[str, torch.Tensor]

    @property
    def num_tasks(self) -> int:
        return len(self.train_task_idx)

    @property
    def domain_incremental(self) -> bool:
        return self.scenario.kind == "domain_incremental"

    @property
    def in_memory(self) -> bool:
        """Whether the images are decoded tensors (else they are read from disk on every pass)."""
        return _held(self.data.train) and _held(self.data.test)

    @property
    def test_in_memory(self) -> bool:
        """Whether the test images are decoded tensors (what an evaluator reads), whatever the train set's."""
        return _held(self.data.test)

    @property
    def multi_dataset(self) -> bool:
        return self.scenario.kind == "multi_dataset"

    def epochs_for(self, task: int | None) -> int:
        """Epochs of ``task`` (None: the joint run): finetune.epochs, else its dataset's default."""
        return task_epochs(self.cfg, self.scenario, task)

    @property
    def chance(self) -> float:
        """Accuracy (%) of guessing: over all classes, or the datasets' mean with their own heads."""
        return float(np.mean([100.0 / len(c) for c in self.task_classes])) if self.multi_dataset \
            else 100.0 / len(self.data.classnames)

    def classifier(self, state: dict[str, torch.Tensor] | None = None) -> ImageClassifier:
        """A fresh image classifier over θ0 (or ``state``) with the frozen full head."""
        import copy

        visual = copy.deepcopy(self.clip.visual)
        model = ImageClassifier(visual, self.head, self.clip.logit_scale)
        if state is not None:
            load_image_encoder_state(model, state)
        return model

    def train_head(self, task: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Head rows and label map while training ``task`` (None: joint, all classes)."""
        if task is None or self.domain_incremental:
            return self.head, None
        classes = self.task_classes[task]
        return self.head[classes], task_label_map(classes, len(self.data.classnames))

    def train_loader(self, tasks: Sequence[int], seed: int, batch_size: int,
                     workers: int = 0, rank: int = 0, world: int = 1) -> GlobalBatches:
        """Worker ``rank`` of ``world``'s parts of the global batches of ``tasks`` (GlobalBatches)."""
        idx = np.concatenate([self.train_task_idx[t] for t in tasks])
        if len(tasks) > 1:
            # Joint: the union in dataset order, so its batches do not depend on how it is split
            idx = np.sort(idx)
        crop = train_crop(self.cfg, self.clip)
        # opt-in decoded cache in mode gpu (pipeline/data/decoded_cache.py): crops run per batch on the GPU
        subset = device_crop_subset(self.data.train, idx.tolist(), seed, crop, self.cfg.finetune.decoded_cache or None)
        if subset is None:
            subset = augmented_subset(self.data.train, idx.tolist(), seed, crop)
        return GlobalBatches(subset, seed, batch_size, rank, world, workers)

    def test_loader(self, batch_size: int, workers: int = 0) -> DataLoader:
        idx = np.concatenate(self.test_task_idx) if not self.domain_incremental else np.arange(len(self.data.test))
        return DataLoader(Subset(self.data.test, np.unique(idx).tolist()), batch_size=batch_size,
                          shuffle=False, num_workers=workers)

    def test_eval_groups(self) -> list[np.ndarray]:
        """Positions (in test_loader order) of each task's test samples."""
        idx = np.unique(np.concatenate(self.test_task_idx)) if not self.domain_incremental else \
            np.arange(len(self.data.test))
        pos = {int(i): p for p, i in enumerate(idx)}
        return [np.array([pos[int(i)] for i in group], dtype=np.int64) for group in self.test_task_idx]


class _OffsetTargets(Dataset):
    """A dataset's samples with labels shifted into a union label space (datasets too big to hold)."""

    def __init__(self, base: Dataset, offset: int) -> None:
        self.base, self.offset = base, int(offset)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[index]
        return image, int(label) + self.offset


def _offset(dataset: Dataset, offset: int) -> Dataset:
    if isinstance(dataset, TensorDataset):  # stays a TensorDataset: still held in memory
        images, labels = dataset.tensors
        return TensorDataset(images, labels + offset)
    return _OffsetTargets(dataset, offset)


def _subsample(targets: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(targets):
        idx = np.flatnonzero(targets == c)
        keep.append(np.sort(rng.permutation(idx)[:per_class]))
    return np.sort(np.concatenate(keep))


def build_scenario(cfg: BenchmarkConfig, scenario: ScenarioConfig) -> Scenario:
    """Load backbone and data and derive the head and task splits (cached per process).

    The config's declared datasets resolve through it (registry.datasets_for): building changes
    no module state, and a cached build is keyed by the config that declared them."""
    return _build_cached(cfg, scenario)


def _decoded_bytes(dataset: Dataset) -> int:
    if len(dataset) == 0:
        return 0
    image = torch.as_tensor(dataset[0][0])
    return len(dataset) * image.numel() * image.element_size()


def train_crop(cfg: BenchmarkConfig, clip: Clip) -> SeededCrop | None:
    """The seeded random part of the backbone's train transform (None: train on the eval one)."""
    if cfg.finetune.train_transform == "eval":
        return None
    return seeded_crop_from(clip.train_transform, where=f"backbone {clip.name}: train transform")


def _load(cfg: BenchmarkConfig, name: str, clip: Clip) -> DatasetBundle:
    """``_load_plain``, then (opt-in, ``finetune.decoded_cache``) its on-disk splits replaced by
    their node-local decoded caches (pipeline/data/decoded_cache.py); off by default."""
    data = _load_plain(cfg, name, clip)
    if cache_mode(cfg.finetune.decoded_cache or None) == "off" or not cfg.finetune.precrop_downscale:
        return data
    return cache_bundle(data, train_crop(cfg, clip), clip.eval_transform, workers=cfg.finetune.loader_workers,
                        folder=cfg.finetune.decoded_cache_dir or None)


def _load_plain(cfg: BenchmarkConfig, name: str, clip: Clip) -> DatasetBundle:
    """A dataset with eval-transformed test images and, under finetune.train_transform=train,
    uncropped uint8 train images (``PreCrop``; ``AugmentedSubset`` crops them per sample).

    Both splits are decoded into memory when what would be held fits IN_MEMORY_BYTES: the test
    set as float eval tensors, the train set as uint8 pre-crop images (counted at their size).
    """
    crop = train_crop(cfg, clip)
    data = load_dataset(name, Path(cfg.data_root), PreCrop() if crop else clip.eval_transform,
                        clip.eval_transform, declared=cfg.datasets)
    test_bytes = _decoded_bytes(data.test)
    if crop is None:
        if _decoded_bytes(data.train) + test_bytes <= IN_MEMORY_BYTES:
            data.train = _materialize(data.train)
            data.test = _materialize(data.test)
        return data
    if not cfg.finetune.precrop_downscale:
        # the official code crops the full-resolution image: train images stay on disk as they are
        if test_bytes <= IN_MEMORY_BYTES:
            data.test = _materialize(data.test)
        return data
    if precrop_bytes(data.train, crop.cache_side) + test_bytes <= IN_MEMORY_BYTES:
        held = hold_precrop(data.train, crop.cache_side, IN_MEMORY_BYTES - test_bytes)
        if held is not None:
            data.train = held
            data.test = _materialize(data.test)
    return data


@functools.lru_cache(maxsize=4)
def _build_cached(cfg: BenchmarkConfig, scenario: ScenarioConfig) -> Scenario:
    clip = load_clip_from_config(cfg.model)
    if scenario.kind == "multi_dataset":
        return _build_multi_dataset(cfg, scenario, clip)
    data = _load(cfg, scenario.dataset, clip)
    test_idx_all = np.arange(len(data.test_targets))
    if cfg.max_eval_per_class:
        test_idx_all = _subsample(data.test_targets, cfg.max_eval_per_class, cfg.seed)
    if scenario.kind == "domain_incremental":
        order = DOMAIN_ORDERS.get(scenario.dataset)
        if order is None or data.train_domains is None:
            raise ValueError(f"scenario {scenario.label}: dataset {scenario.dataset!r} has no domains")
        order = order[: scenario.tasks] if scenario.tasks < len(order) else order
        train_idx = domain_incremental_tasks(data.train_domains, order)
        test_groups = domain_incremental_tasks(data.test_domains, order)
        test_idx = [np.intersect1d(g, test_idx_all) for g in test_groups]
        task_classes = [list(range(len(data.classnames)))] * len(order)
    else:
        num_classes = len(data.classnames)
        if scenario.tasks > num_classes:
            raise ValueError(f"scenarios: tasks={scenario.tasks} is more than the {num_classes} classes "
                             f"of {scenario.dataset}")
        # the reference orders are mapped onto this loader's labels through the class names
        order = class_order(scenario.dataset, num_classes,
                            None if scenario.class_order_seed < 0 else scenario.class_order_seed,
                            names=data.raw_classnames)
        task_classes = class_incremental_splits(order, scenario.tasks)
        train_idx = [task_indices(data.train_targets, c) for c in task_classes]
        test_idx = [np.intersect1d(task_indices(data.test_targets, c), test_idx_all) for c in task_classes]
    head = _cached_head(cfg, clip, data.classnames, data.templates)
    theta0 = image_encoder_state(clip.model)
    return Scenario(cfg, scenario, clip, data, head, task_classes, train_idx, test_idx, theta0)


def _build_multi_dataset(cfg: BenchmarkConfig, scenario: ScenarioConfig, clip: Clip) -> Scenario:
    """Task t = all of ``datasets[t]``, in one label space made of the datasets' classes in order.

    The head is the datasets' zero-shot heads (each from its own templates) stacked, so training
    task t is class-incremental training on t's rows (labels remapped as for any task), LwF and
    EWC work unchanged, and evaluation restricts each test sample to its own dataset's rows.
    """
    trains, tests, heads, names = [], [], [], []
    task_classes, train_idx, test_idx = [], [], []
    train_targets, test_targets = [], []
    n_classes = n_train = n_test = 0
    for name in scenario.datasets:
        data = _load(cfg, name, clip)
        C = len(data.classnames)
        keep = np.arange(len(data.test_targets))
        if cfg.max_eval_per_class:
            keep = _subsample(data.test_targets, cfg.max_eval_per_class, cfg.seed)
        trains.append(_offset(data.train, n_classes))
        tests.append(_offset(data.test, n_classes))
        heads.append(_cached_head(cfg, clip, data.classnames, data.templates))
        names += [f"{name}:{c}" for c in data.classnames]
        task_classes.append(list(range(n_classes, n_classes + C)))
        train_idx.append(np.arange(n_train, n_train + len(data.train_targets)))
        test_idx.append(n_test + keep)
        train_targets.append(data.train_targets + n_classes)
        test_targets.append(data.test_targets + n_classes)
        n_classes, n_train, n_test = n_classes + C, n_train + len(data.train_targets), n_test + len(data.test_targets)
    union = DatasetBundle(name=scenario.label, classnames=names, templates=[], train=ConcatDataset(trains),
                          test=ConcatDataset(tests), train_targets=np.concatenate(train_targets),
                          test_targets=np.concatenate(test_targets))
    return Scenario(cfg, scenario, clip, union, torch.cat(heads), task_classes, train_idx, test_idx,
                    image_encoder_state(clip.model))


def _cached_head(cfg: BenchmarkConfig, clip: Clip, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """The zero-shot head, kept under ``storage/heads`` by content address.

    Every Train worker, evaluator and Tune trial builds the scenario in its own process; on CPUs
    encoding C classes x 80 templates costs seconds to minutes per process, so the first one
    stores the head and the others read it. The key covers the text tower's weights, the class
    names and the templates: anything that changes the head changes the file.
    """
    import hashlib
    import json

    digest = hashlib.sha256(json.dumps([list(classnames), list(templates)]).encode())
    for name, tensor in sorted(clip.model.state_dict().items()):
        if not name.startswith("visual."):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
    path = storage.join(cfg.storage, "heads", f"{digest.hexdigest()[:24]}.safetensors")
    if storage.exists(path):
        try:
            return storage.read_tensors(path)["head"]
        except storage.DamagedFileError as err:
            storage.discard(err, path, "the head is computed again")
    head = zero_shot_head(clip, classnames, templates)
    storage.write_tensors({"head": head}, path, metadata={"classes": str(len(classnames))})
    return head


def load_clip_from_config(model: ModelConfig) -> Clip:
    backbone = model.backbone
    if backbone.startswith("local-dir:"):
        folder = Path(backbone.split(":", 1)[1])
        if not folder.is_absolute():
            folder = Path(__file__).resolve().parent.parent / folder
        backbone = f"local-dir:{folder}"
    return load_clip(backbone, model.pretrained or None, cache_dir=model.cache_dir or None,
                     allow_download=model.allow_download)

