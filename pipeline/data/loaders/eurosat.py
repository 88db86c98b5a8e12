"""EuroSAT (RGB) through torchvision: a seeded, recorded 80/10/10 split per class."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.bundle import DatasetBundle, PathLike, Transform, make_bundle
from pipeline.data.errors import require_dir, torchvision_errors
from pipeline.data.scan import file_paths
from pipeline.data.split_records import DEFAULT_SPLIT_SEED, split_parts


# Folder name -> the class names the reference (and CLIP) prompts use.
EUROSAT_CLASSNAMES = {
    "AnnualCrop": "annual crop land",
    "Forest": "forest",
    "HerbaceousVegetation": "brushland or shrubland",
    "Highway": "highway or road",
    "Industrial": "industrial buildings or commercial buildings",
    "Pasture": "pasture land",
    "PermanentCrop": "permanent crop land",
    "Residential": "residential buildings or homes or apartments",
    "River": "river",
    "SeaLake": "lake or sea",
}
# EuroSAT ships no split; the reference used a random 21,600 / 2,700 / 2,700 split. Ours has the
# same proportions, seeded and recorded; the val part is recorded but not loaded.
EUROSAT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}


def load_eurosat(
    root: PathLike,
    train_transform: Transform | None = None,
    eval_transform: Transform | None = None,
    split_seed: int = DEFAULT_SPLIT_SEED,
    split_record: Mapping[str, Any] | None = None,
) -> DatasetBundle:
    name = "eurosat"
    root = Path(root).expanduser()
    base = require_dir(name, root / "eurosat" / "2750")
    from torchvision.datasets import EuroSAT

    with torchvision_errors(name, base):
        ds = EuroSAT(str(root), download=False)
    rel = [Path(p).relative_to(base).as_posix() for p, _ in ds.samples]
    labels = np.asarray(ds.targets, dtype=np.int64)
    parts, record = split_parts(name, base, rel, labels, EUROSAT_FRACTIONS, split_seed, split_record)
    classnames = [EUROSAT_CLASSNAMES.get(c, re.sub(r"(?<!^)(?=[A-Z])", " ", c).lower()) for c in ds.classes]
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
