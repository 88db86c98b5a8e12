"""CUB-200-2011: the official train_test_split.txt."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.data.bundle import DatasetBundle, PathLike, Transform, make_bundle
from pipeline.data.errors import not_found, require_dir, require_file
from pipeline.data.scan import read_lines


def _read_id_table(name: str, path: Path) -> dict[int, str]:
    table = {}
    for line in read_lines(require_file(name, path)):
        key, _, value = line.partition(" ")
        if not key.isdigit() or not value:
            raise not_found(name, path, f"malformed line {line!r}")
        table[int(key)] = value.strip()
    if not table:
        raise not_found(name, path, "file is empty")
    return table


def load_cub200(
    root: PathLike, train_transform: Transform | None = None, eval_transform: Transform | None = None
) -> DatasetBundle:
    name = "cub200"
    base = require_dir(name, Path(root).expanduser() / "CUB_200_2011")
    image_dir = require_dir(name, base / "images")
    images = _read_id_table(name, base / "images.txt")
    labels = _read_id_table(name, base / "image_class_labels.txt")
    is_train = _read_id_table(name, base / "train_test_split.txt")
    classes = _read_id_table(name, base / "classes.txt")
    # "001.Black_footed_Albatross" -> "Black footed Albatross", as in the reference code.
    classnames = [classes[c].split(".", 1)[-1].replace("_", " ") for c in sorted(classes)]
    out: dict[bool, tuple[list[str], list[int]]] = {True: ([], []), False: ([], [])}
    for image_id in sorted(images):
        if image_id not in labels or image_id not in is_train:
            raise not_found(name, base, f"image id {image_id} has no label or no split entry")
        paths, targets = out[is_train[image_id] == "1"]
        paths.append(str(image_dir / images[image_id]))
        targets.append(int(labels[image_id]) - 1)  # class ids are 1-based
    return make_bundle(
        name,
        base,
        classnames,
        (out[True][0], np.asarray(out[True][1])),
        (out[False][0], np.asarray(out[False][1])),
        train_transform,
        eval_transform,
        raw_classnames=[classes[c] for c in sorted(classes)],
    )
