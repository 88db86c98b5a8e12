"""SUN397 through torchvision: Partitions/ where present, else a seeded half split."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.bundle import DatasetBundle, PathLike, Transform, make_bundle
from pipeline.data.errors import require_dir, require_file, torchvision_errors, tv_attr
from pipeline.data.scan import file_paths, official_parts
from pipeline.data.split_records import DEFAULT_SPLIT_SEED, split_parts


# Without the official Partitions (50 train + 50 test images per class), a seeded per-class
# half/half split keeps the same train:test ratio.
SUN397_FRACTIONS = {"train": 0.5, "test": 0.5}


def load_sun397(
    root: PathLike,
    train_transform: Transform | None = None,
    eval_transform: Transform | None = None,
    split_seed: int = DEFAULT_SPLIT_SEED,
    split_record: Mapping[str, Any] | None = None,
    partition: int = 1,
) -> DatasetBundle:
    name = "sun397"
    root = Path(root).expanduser()
    base = require_dir(name, root / "SUN397")
    require_file(name, base / "ClassName.txt")
    from torchvision.datasets import SUN397

    with torchvision_errors(name, base):
        ds = SUN397(str(root), download=False)
    files = [Path(p) for p in tv_attr(ds, "_image_files")]
    order = np.argsort([f.as_posix() for f in files], kind="stable")  # rglob order is arbitrary
    rel = [files[i].relative_to(base).as_posix() for i in order]
    labels = np.asarray(tv_attr(ds, "_labels"), dtype=np.int64)[order]
    # "apartment_building/outdoor" -> "apartment building outdoor", as the reference prompts.
    classnames = [c.replace("/", " ").replace("_", " ") for c in ds.classes]
    official = [base / "Partitions" / f"{s}_{partition:02d}.txt" for s in ("Training", "Testing")]
    record: dict[str, Any] | None = None
    if split_record is None and all(p.is_file() for p in official):
        # Lines are paths under SUN397/ with a leading slash ("/a/abbey/sun_aaa.jpg").
        position = {r: i for i, r in enumerate(rel)}
        parts = official_parts(name, base, position, official, lambda line: line.lstrip("/"))
    else:
        parts, record = split_parts(name, base, rel, labels, SUN397_FRACTIONS, split_seed, split_record)
    return make_bundle(
        name,
        base,
        classnames,
        (file_paths(base, rel, parts["train"]), labels[parts["train"]]),
        (file_paths(base, rel, parts["test"]), labels[parts["test"]]),
        train_transform,
        eval_transform,
        split_record=record,
    )
