"""ImageNet-R: 200 class folders of renditions; a seeded, recorded 80/20 split per class."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.bundle import DatasetBundle, PathLike, Transform, make_bundle
from pipeline.data.errors import require_dir
from pipeline.data.scan import file_paths, scan_class_folders
from pipeline.data.split_records import DEFAULT_SPLIT_SEED, save_split_record, seeded_record, split_parts


_WNID = re.compile(r"^n\d{8}$")
_RENDITION = re.compile(r"^(.*?)_\d+$")


def _imagenet_r_names(base: Path, folders: Sequence[str]) -> list[str]:
    """Class names as the dataset spells them ("African_chameleon"): classnames.txt, else the
    README.txt of the official archive, else the folder name.

    Both files hold 'wnid name' lines (README.txt has prose around them, which is skipped).
    Folders already named by class (as the reference code renames them) keep their names.
    """
    mapping: dict[str, str] = {}
    for fname in ("classnames.txt", "README.txt"):
        path = base / fname
        if path.is_file():
            for line in path.read_text(errors="replace").splitlines():
                parts = line.strip().split(maxsplit=1)
                if len(parts) == 2 and _WNID.match(parts[0]):
                    mapping[parts[0]] = parts[1].strip()
            if mapping:
                break
    return [mapping.get(f, f) for f in folders]


def _rendition(rel_path: str) -> str:
    stem = Path(rel_path).stem
    match = _RENDITION.match(stem)
    return match.group(1) if match else stem.split("_")[0]


def _scan_imagenet_r(root: PathLike) -> tuple[Path, list[str], list[str], np.ndarray]:
    base = require_dir("imagenet_r", Path(root).expanduser() / "imagenet-r")
    folders, rel, labels = scan_class_folders("imagenet_r", base)
    return base, folders, rel, labels


IMAGENET_R_FRACTIONS = {"train": 0.8, "test": 0.2}


def imagenet_r_split(
    root: PathLike, seed: int = DEFAULT_SPLIT_SEED, path: PathLike | None = None
) -> dict[str, Any]:
    """The recorded 80/20 per-class split of ImageNet-R (relative paths), written to `path` if given.

    The same files and seed give the same split on any machine (see stratified_split).
    """
    _, _, rel, labels = _scan_imagenet_r(root)
    record = seeded_record("imagenet_r", rel, labels, IMAGENET_R_FRACTIONS, seed)
    if path is not None:
        save_split_record(record, path)
    return record


def load_imagenet_r(
    root: PathLike,
    train_transform: Transform | None = None,
    eval_transform: Transform | None = None,
    split_seed: int = DEFAULT_SPLIT_SEED,
    split_record: Mapping[str, Any] | None = None,
) -> DatasetBundle:
    name = "imagenet_r"
    base, folders, rel, labels = _scan_imagenet_r(root)
    parts, record = split_parts(
        name, base, rel, labels, IMAGENET_R_FRACTIONS, split_seed, split_record
    )
    domains = np.asarray([_rendition(r) for r in rel], dtype=str)
    # Labels follow the sorted folders (wnids in the official archive), not the names' string
    # order; the class order (splits.class_order) maps through these names.
    raw_names = _imagenet_r_names(base, folders)
    return make_bundle(
        name,
        base,
        [n.replace("_", " ") for n in raw_names],
        (file_paths(base, rel, parts["train"]), labels[parts["train"]]),
        (file_paths(base, rel, parts["test"]), labels[parts["test"]]),
        train_transform,
        eval_transform,
        train_domains=domains[parts["train"]],
        test_domains=domains[parts["test"]],
        split_record=record,
        raw_classnames=raw_names,
    )
