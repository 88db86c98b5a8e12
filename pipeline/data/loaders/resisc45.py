"""NWPU-RESISC45: torchgeo's split files where present, else a seeded 60/20/20 split."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


from pipeline.data.bundle import DatasetBundle, PathLike, Transform, make_bundle
from pipeline.data.errors import require_dir
from pipeline.data.scan import file_paths, official_parts, scan_class_folders
from pipeline.data.split_records import DEFAULT_SPLIT_SEED, split_parts


# The torchgeo / "In-domain representation learning" split has these proportions; the seeded
# fallback mirrors them.
RESISC45_FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}


def load_resisc45(
    root: PathLike,
    train_transform: Transform | None = None,
    eval_transform: Transform | None = None,
    split_seed: int = DEFAULT_SPLIT_SEED,
    split_record: Mapping[str, Any] | None = None,
) -> DatasetBundle:
    name = "resisc45"
    base = require_dir(name, Path(root).expanduser() / "resisc45")
    image_dir = base / "NWPU-RESISC45" if (base / "NWPU-RESISC45").is_dir() else base
    folders, rel, labels = scan_class_folders(name, image_dir)
    classnames = [f.replace("_", " ") for f in folders]
    official = [base / f"resisc45-{s}.txt" for s in ("train", "test")]
    record: dict[str, Any] | None = None
    if split_record is None and all(p.is_file() for p in official):
        # Lines are bare file names ("airplane_001.jpg"), unique across classes.
        position = {Path(r).name: i for i, r in enumerate(rel)}
        parts = official_parts(name, image_dir, position, official, lambda line: line)
    else:
        parts, record = split_parts(
            name, image_dir, rel, labels, RESISC45_FRACTIONS, split_seed, split_record
        )
    return make_bundle(
        name,
        image_dir,
        classnames,
        (file_paths(image_dir, rel, parts["train"]), labels[parts["train"]]),
        (file_paths(image_dir, rel, parts["test"]), labels[parts["test"]]),
        train_transform,
        eval_transform,
        split_record=record,
    )
