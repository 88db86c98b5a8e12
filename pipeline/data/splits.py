"""Class-incremental and domain-incremental task splits (design.md, "Facts from the paper").

Pure functions of labels / domains / class names: they never touch images, so the orchestration
can plan every task of a run from `DatasetBundle.train_targets` / `train_domains` alone.

`python -m pipeline.data.splits DATASET TASKS [--data-root DIR]` prints the class-incremental
tasks of a dataset on disk as a JSON array of arrays of class names, spelled as in the dataset's
own files.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence

import numpy as np

from pipeline.data.class_orders import (
    CUB200_ORDER,
    DOMAINNET_LABEL_NAMES,
    DOMAINNET_ORDER,
    IMAGENET_R_LABEL_NAMES,
    IMAGENET_R_ORDER,
)

# Class order of the reference code's CIFAR100 split (design.md).
CIFAR100_ORDER: tuple[int, ...] = (
    70, 89, 11, 13, 63, 53, 86, 57, 41, 43, 14, 98, 52, 73, 95, 96, 33, 16, 39, 74,
    25, 88, 35, 28, 79, 82, 72, 4, 30, 17, 59, 97, 36, 38, 29, 55, 83, 7, 22, 48,
    19, 47, 2, 44, 67, 71, 34, 84, 6, 46, 61, 8, 80, 10, 49, 15, 68, 9, 99, 40,
    27, 45, 51, 37, 21, 64, 92, 24, 60, 31, 5, 91, 93, 90, 65, 66, 77, 20, 58, 62,
    23, 76, 75, 42, 0, 26, 87, 50, 3, 56, 81, 1, 94, 69, 18, 78, 54, 12, 85, 32,
)  # fmt: skip

# Task order of the domain-incremental scenarios (design.md).
DOMAINNET_DOMAINS: tuple[str, ...] = ("clipart", "sketch", "real", "infograph", "quickdraw", "painting")
IMAGENET_R_DOMAINS: tuple[str, ...] = (
    "tattoo", "sketch", "graphic", "painting", "art", "origami", "sculpture", "graffiti",
    "cartoon", "misc", "toy", "embroidery", "videogame", "sticker", "deviantart",
)  # fmt: skip

# Datasets whose reference code fixes a class order, in the reference's labels (its torchvision
# ImageFolder's: class folders sorted as strings; CIFAR100's own label numbers); all others use
# the natural order 0..C-1 (Cars does so explicitly in design.md).
REFERENCE_ORDERS: dict[str, tuple[int, ...]] = {
    "cifar100": CIFAR100_ORDER,
    "imagenet_r": IMAGENET_R_ORDER,
    "cub200": CUB200_ORDER,
    "domainnet": DOMAINNET_ORDER,
}
# Class name -> reference label, for the datasets whose loaders number classes otherwise
# (ImageNet-R by wnid folder, DomainNet by its lists), so orders are mapped through names.
_REFERENCE_NAMES: dict[str, dict[str, int]] = {
    dataset: {name: label for label, name in enumerate(names)}
    for dataset, names in (("imagenet_r", IMAGENET_R_LABEL_NAMES), ("domainnet", DOMAINNET_LABEL_NAMES))
}
_CUB_FOLDER = re.compile(r"^(\d{3})\.")


def reference_label(dataset: str, name: str) -> int | None:
    """The reference label of the class `name` (spelled as in the dataset's files), else None.

    CUB's folders ("001.Black_footed_Albatross") start with the zero-padded class id, so their
    string order is the id order and the reference label is id - 1.
    """
    if dataset == "cub200":
        match = _CUB_FOLDER.match(name)
        label = int(match.group(1)) - 1 if match else -1
        return label if 0 <= label < len(CUB200_ORDER) else None
    return _REFERENCE_NAMES.get(dataset, {}).get(name)


def _keyed_by_names(dataset: str) -> bool:
    return dataset == "cub200" or dataset in _REFERENCE_NAMES


def class_order(
    dataset: str, num_classes: int, seed: int | None = None, names: Sequence[str] | None = None
) -> list[int]:
    """The class order that class-incremental splits of `dataset` walk through.

    `seed` is None for the paper's setting (reference order, or natural order where the reference
    has none). An integer `seed` gives a seeded random permutation instead, for studies of order
    sensitivity; it is never used to reproduce paper numbers.

    `names[label]` is each class as the dataset's files spell it (`DatasetBundle.raw_classnames`).
    For ImageNet-R, CUB200 and DomainNet the reference order is mapped through them onto the
    caller's labels, so every task holds the reference's classes whatever numbering the loader
    uses; without `names` the labels are taken to be the reference's. A dataset holding only some
    of the reference classes (profile=tiny's DomainNet) gets the reference order restricted to
    them; a class the reference does not know is an error.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if names is not None and len(names) != num_classes:
        raise ValueError(f"{dataset}: {len(names)} class names for {num_classes} classes")
    if seed is not None:
        return [int(c) for c in np.random.default_rng(seed).permutation(num_classes)]
    order = REFERENCE_ORDERS.get(dataset)
    if order is None:
        return list(range(num_classes))
    if names is not None and _keyed_by_names(dataset):
        return _order_by_names(dataset, order, names)
    if len(order) != num_classes:
        raise ValueError(
            f"the reference class order of {dataset!r} has {len(order)} classes, "
            f"but the dataset has {num_classes}"
        )
    return list(order)


def _order_by_names(dataset: str, order: Sequence[int], names: Sequence[str]) -> list[int]:
    label_of: dict[int, int] = {}  # reference label -> caller's label
    unknown = []
    for label, name in enumerate(names):
        ref = reference_label(dataset, name)
        if ref is None:
            unknown.append(name)
        elif ref in label_of:
            raise ValueError(
                f"{dataset}: classes {names[label_of[ref]]!r} and {name!r} are the same reference class"
            )
        else:
            label_of[ref] = label
    if unknown:
        hint = {
            "imagenet_r": " (ImageNet-R needs its README.txt mapping wnids to names, or folders named by class)",
            "cub200": " (CUB class folders are named 'NNN.Name', NNN the class id from 001)",
        }.get(dataset, "")
        raise ValueError(
            f"{dataset}: {len(unknown)} class(es) are not among the reference class order's, "
            f"e.g. {unknown[:3]}{hint}"
        )
    return [label_of[ref] for ref in order if ref in label_of]


def class_incremental_splits(order: Sequence[int], num_tasks: int) -> list[list[int]]:
    """Split s of S is `sorted(order[floor(C/S*s) : floor(C/S*(s+1))])`, as in the reference code.

    Integer arithmetic (C*s // S) equals floor(C/S*s) exactly and avoids float rounding at the
    boundaries.
    """
    order = [int(c) for c in order]
    num_classes = len(order)
    if len(set(order)) != num_classes:
        raise ValueError("class order contains duplicates")
    if num_tasks < 1 or num_tasks > num_classes:
        raise ValueError(
            f"num_tasks={num_tasks} must be between 1 and the number of classes ({num_classes})"
        )
    return [
        sorted(order[num_classes * s // num_tasks : num_classes * (s + 1) // num_tasks])
        for s in range(num_tasks)
    ]


def domain_incremental_tasks(domains: np.ndarray, order: Sequence[str]) -> list[np.ndarray]:
    """For each domain in `order`, the (sorted, int64) indices of the samples from that domain."""
    domains = np.asarray(domains)
    if len(set(order)) != len(order):
        raise ValueError(f"domain order contains duplicates: {list(order)}")
    tasks = []
    for domain in order:
        idx = np.flatnonzero(domains == domain).astype(np.int64)
        if idx.size == 0:
            present = sorted({str(d) for d in np.unique(domains)}) if domains.size else []
            raise ValueError(f"domain {domain!r} has no samples; domains present: {present}")
        tasks.append(idx)
    return tasks


def task_class_names(
    dataset: str, names: Sequence[str], num_tasks: int, seed: int | None = None
) -> list[list[str]]:
    """Each class-incremental task's classes as `names` spell them, in the reference's label
    order within a task (ImageFolder order: names sorted as strings), else in label order."""
    tasks = class_incremental_splits(class_order(dataset, len(names), seed, names), num_tasks)

    def key(label: int) -> int:
        ref = reference_label(dataset, names[label]) if _keyed_by_names(dataset) else None
        return label if ref is None else ref

    return [[names[c] for c in sorted(task, key=key)] for task in tasks]


def task_indices(targets: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Sorted int64 indices of the samples whose label is in `classes`."""
    targets = np.asarray(targets)
    return np.flatnonzero(np.isin(targets, np.asarray(list(classes), dtype=targets.dtype))).astype(
        np.int64
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.data.splits",
        description="Print the class-incremental tasks of a dataset on disk: a JSON array with "
        "one array of class names (spelled as in the dataset's files) per task.",
    )
    parser.add_argument("dataset", help="registered dataset name, e.g. imagenet_r, cub200, domainnet")
    parser.add_argument("tasks", type=int, help="number of tasks")
    parser.add_argument("--data-root", default="data", help="folder holding the datasets (default: data)")
    parser.add_argument(
        "--class-order-seed", type=int, default=-1,
        help="-1 (default): the reference order; else a seeded shuffle, as scenario.class_order_seed",
    )
    args = parser.parse_args(argv)
    # (imported here: the split functions above stay free of the loaders)
    from pipeline.data.errors import DatasetNotFoundError
    from pipeline.data.registry import load_dataset

    try:
        bundle = load_dataset(args.dataset, args.data_root)
        names = bundle.raw_classnames or bundle.classnames
        seed = None if args.class_order_seed < 0 else args.class_order_seed
        tasks = task_class_names(args.dataset, names, args.tasks, seed)
    except (DatasetNotFoundError, KeyError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(tasks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
