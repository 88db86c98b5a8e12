"""Digits held as arrays: MNIST (torchvision) and SVHN (format 2 .mat files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.data.bundle import ArrayImageDataset, DatasetBundle, PathLike, Transform
from pipeline.data.errors import not_found, require_dir, require_file, require_scipy, torchvision_errors
from pipeline.data.templates import get_templates


def load_mnist(
    root: PathLike, train_transform: Transform | None = None, eval_transform: Transform | None = None
) -> DatasetBundle:
    name = "mnist"
    root = Path(root).expanduser()
    base = require_dir(name, root / "MNIST" / "raw")
    from torchvision.datasets import MNIST

    splits = {}
    for split, train in (("train", True), ("test", False)):
        with torchvision_errors(name, base):
            ds = MNIST(str(root), train=train, download=False)
        images, labels = ds.data.numpy(), ds.targets.numpy().astype(np.int64)
        if len(labels) == 0:
            raise not_found(name, base, f"the {split} split has no images")
        splits[split] = (images, labels)
    return DatasetBundle(
        name=name,
        classnames=[str(d) for d in range(10)],
        templates=get_templates(name),
        train=ArrayImageDataset(*splits["train"], train_transform),
        test=ArrayImageDataset(*splits["test"], eval_transform),
        train_targets=splits["train"][1],
        test_targets=splits["test"][1],
    )


def load_svhn(
    root: PathLike, train_transform: Transform | None = None, eval_transform: Transform | None = None
) -> DatasetBundle:
    # Read with scipy directly rather than torchvision.datasets.SVHN: that class refuses any file
    # whose md5 is not the official one (so no test fixture can exist); the parsing is the same.
    name = "svhn"
    base = require_dir(name, Path(root).expanduser() / "svhn")
    require_scipy(name)
    import scipy.io as sio

    splits = {}
    for split in ("train", "test"):
        path = require_file(name, base / f"{split}_32x32.mat")
        try:
            mat = sio.loadmat(str(path))
            images = np.transpose(mat["X"], (3, 0, 1, 2))  # stored H x W x C x N
            labels = mat["y"].astype(np.int64).reshape(-1)
        except (ValueError, KeyError, OSError, TypeError) as err:
            raise not_found(name, path, f"unreadable SVHN file: {err}") from err
        labels[labels == 10] = 0  # SVHN writes digit 0 as label 10
        if len(labels) == 0 or len(labels) != len(images):
            raise not_found(name, path, "no images, or images and labels differ in number")
        splits[split] = (images, labels)
    return DatasetBundle(
        name=name,
        classnames=[str(d) for d in range(10)],
        templates=get_templates(name),
        train=ArrayImageDataset(*splits["train"], train_transform),
        test=ArrayImageDataset(*splits["test"], eval_transform),
        train_targets=splits["train"][1],
        test_targets=splits["test"][1],
    )
