"""DTD through torchvision: train = train1 + val1, test = test1 (as PAINT / task vectors)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.data.bundle import DatasetBundle, PathLike, Transform, make_bundle
from pipeline.data.errors import require_dir, require_file, torchvision_errors, tv_attr


def load_dtd(
    root: PathLike,
    train_transform: Transform | None = None,
    eval_transform: Transform | None = None,
    partition: int = 1,
) -> DatasetBundle:
    name = "dtd"
    root = Path(root).expanduser()
    base = require_dir(name, root / "dtd" / "dtd")
    for split in ("train", "val", "test"):
        require_file(name, base / "labels" / f"{split}{partition}.txt")
    from torchvision.datasets import DTD

    files: dict[str, list[str]] = {}
    class_of: dict[str, list[str]] = {}
    for split in ("train", "val", "test"):
        with torchvision_errors(name, base):
            ds = DTD(str(root), split=split, partition=partition, download=False)
        files[split] = [str(p) for p in tv_attr(ds, "_image_files")]
        class_of[split] = [ds.classes[label] for label in tv_attr(ds, "_labels")]
    # torchvision indexes classes per split file; index them once over all splits instead.
    classes = sorted({c for split in class_of.values() for c in split})
    index = {c: i for i, c in enumerate(classes)}
    # As in PAINT / task vectors: train = train + val, test unchanged.
    train_classes = class_of["train"] + class_of["val"]
    train = (files["train"] + files["val"], np.asarray([index[c] for c in train_classes]))
    test = (files["test"], np.asarray([index[c] for c in class_of["test"]]))
    classnames = [c.replace("_", " ") for c in classes]
    return make_bundle(name, base, classnames, train, test, train_transform, eval_transform)
