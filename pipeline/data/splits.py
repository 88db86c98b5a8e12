"""Class-incremental and domain-incremental task splits (design.md, "Facts from the paper").

Pure functions of labels / domains: they never touch images, so the orchestration can plan every
task of a run from `DatasetBundle.train_targets` / `train_domains` alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

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

# Datasets whose reference code fixes a class order; all others use the natural order 0..C-1
# (Cars does so explicitly in design.md).
_REFERENCE_ORDERS: dict[str, tuple[int, ...]] = {"cifar100": CIFAR100_ORDER}


def class_order(dataset: str, num_classes: int, seed: int | None = None) -> list[int]:
    """The class order that class-incremental splits of `dataset` walk through.

    `seed` is None for the paper's setting (reference order, or natural order where the reference
    has none). An integer `seed` gives a seeded random permutation instead, for studies of order
    sensitivity; it is never used to reproduce paper numbers.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if seed is not None:
        return [int(c) for c in np.random.default_rng(seed).permutation(num_classes)]
    order = _REFERENCE_ORDERS.get(dataset)
    if order is None:
        return list(range(num_classes))
    if len(order) != num_classes:
        raise ValueError(
            f"the reference class order of {dataset!r} has {len(order)} classes, "
            f"but the dataset has {num_classes}"
        )
    return list(order)


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


def task_indices(targets: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Sorted int64 indices of the samples whose label is in `classes`."""
    targets = np.asarray(targets)
    return np.flatnonzero(np.isin(targets, np.asarray(list(classes), dtype=targets.dtype))).astype(
        np.int64
    )
