"""What a loader returns: lazily opened image datasets and the DatasetBundle that holds them."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from pipeline.data.errors import ImageReadError, not_found
from pipeline.data.templates import get_templates


Transform = Callable[[Any], Any]
PathLike = str | os.PathLike


def default_transform() -> Transform:
    from torchvision import transforms

    return transforms.ToTensor()


class ImageFileDataset(Dataset):
    """(path, label) pairs; each image is opened only when asked for."""

    def __init__(self, paths: Sequence[str], targets: np.ndarray, transform: Transform | None = None):
        if len(paths) != len(targets):
            raise ValueError(f"{len(paths)} paths but {len(targets)} targets")
        # A numpy string array, not a list of str: forked DataLoader workers then share it
        # instead of copying every string on first touch.
        self.paths = np.asarray([str(p) for p in paths], dtype=str)
        self.targets = np.asarray(targets, dtype=np.int64)
        self.transform = transform if transform is not None else default_transform()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path = str(self.paths[index])
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
        except Exception as err:  # PIL raises OSError, ValueError, SyntaxError, ... by format
            raise ImageReadError(f"cannot read image file {path}: {err}") from err
        return self.transform(rgb), int(self.targets[index])


class ArrayImageDataset(Dataset):
    """Images held as a uint8 array (N, H, W) or (N, H, W, 3): CIFAR, MNIST, SVHN."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, transform: Transform | None = None):
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images = np.ascontiguousarray(images, dtype=np.uint8)
        self.targets = np.asarray(targets, dtype=np.int64)
        self.transform = transform if transform is not None else default_transform()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = Image.fromarray(self.images[index]).convert("RGB")
        return self.transform(image), int(self.targets[index])


@dataclass
class DatasetBundle:
    name: str
    classnames: list[str]
    templates: list[str]
    train: Dataset  # yields (image_tensor, int label)
    test: Dataset
    train_targets: np.ndarray  # int64 label per train sample, without decoding images
    test_targets: np.ndarray
    train_domains: np.ndarray | None = None  # str domain per sample (imagenet_r, domainnet)
    test_domains: np.ndarray | None = None
    # How a seeded train/test split was made (None for official splits): see save_split_record.
    split_record: dict[str, Any] | None = None
    # Each label's class as the dataset's own files spell it ("001.Black_footed_Albatross",
    # "The_Eiffel_Tower"), where a reference class order is keyed by them; None: classnames do.
    raw_classnames: list[str] | None = None

    def __post_init__(self) -> None:
        self.train_targets = np.asarray(self.train_targets, dtype=np.int64)
        self.test_targets = np.asarray(self.test_targets, dtype=np.int64)
        num_classes = len(self.classnames)
        if self.raw_classnames is not None and len(self.raw_classnames) != num_classes:
            raise ValueError(
                f"{self.name}: {len(self.raw_classnames)} raw class names for {num_classes} classes"
            )
        for split, targets in (("train", self.train_targets), ("test", self.test_targets)):
            if targets.size and (targets.min() < 0 or targets.max() >= num_classes):
                raise ValueError(
                    f"{self.name} {split} labels span [{targets.min()}, {targets.max()}] "
                    f"but there are {num_classes} class names"
                )

    @property
    def num_classes(self) -> int:
        return len(self.classnames)


def make_bundle(
    name: str,
    base: Path,
    classnames: Sequence[str],
    train: tuple[Sequence[str], np.ndarray],
    test: tuple[Sequence[str], np.ndarray],
    train_transform: Transform | None,
    eval_transform: Transform | None,
    train_domains: np.ndarray | None = None,
    test_domains: np.ndarray | None = None,
    split_record: dict[str, Any] | None = None,
    raw_classnames: Sequence[str] | None = None,
) -> DatasetBundle:
    for split, (paths, _) in (("train", train), ("test", test)):
        if len(paths) == 0:
            raise not_found(name, base, f"the {split} split has no images")
    return DatasetBundle(
        name=name,
        classnames=list(classnames),
        templates=get_templates(name),
        train=ImageFileDataset(train[0], train[1], train_transform),
        test=ImageFileDataset(test[0], test[1], eval_transform),
        train_targets=np.asarray(train[1], dtype=np.int64),
        test_targets=np.asarray(test[1], dtype=np.int64),
        train_domains=train_domains,
        test_domains=test_domains,
        split_record=split_record,
        raw_classnames=None if raw_classnames is None else list(raw_classnames),
    )
