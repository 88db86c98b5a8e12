"""DomainNet (cleaned): six domains, official per-domain train/test lists."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.data.bundle import DatasetBundle, PathLike, Transform, make_bundle
from pipeline.data.errors import not_found, require_dir, require_file
from pipeline.data.scan import read_lines


DOMAINNET_ALL_DOMAINS = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")


def _read_domainnet_list(name: str, path: Path) -> tuple[list[str], list[int]]:
    require_file(name, path)
    rel, labels = [], []
    for number, line in enumerate(read_lines(path), start=1):
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise not_found(name, path, f"line {number} is not 'path label': {line!r}")
        rel.append(parts[0])
        labels.append(int(parts[1]))
    if not rel:
        raise not_found(name, path, "split list is empty")
    return rel, labels


def load_domainnet(
    root: PathLike,
    train_transform: Transform | None = None,
    eval_transform: Transform | None = None,
    domains: Sequence[str] = DOMAINNET_ALL_DOMAINS,
) -> DatasetBundle:
    name = "domainnet"
    base = require_dir(name, Path(root).expanduser() / "domainnet")
    splits: dict[str, tuple[list[str], list[int]]] = {}
    for split in ("train", "test"):
        rel_all: list[str] = []
        labels_all: list[int] = []
        for domain in domains:
            require_dir(name, base / domain)
            rel, labels = _read_domainnet_list(name, base / f"{domain}_{split}.txt")
            rel_all += rel
            labels_all += labels
        splits[split] = (rel_all, labels_all)
    # The lists carry labels only; the class name is the folder in each path (domain/class/file).
    names: dict[int, str] = {}
    for rel, labels in splits.values():
        for r, label in zip(rel, labels, strict=True):
            folder = Path(r).parts[1] if len(Path(r).parts) >= 3 else None
            if folder is None or names.setdefault(label, folder) != folder:
                raise not_found(
                    name, base / r, f"label {label} is given to folders {names.get(label)!r} and {folder!r}"
                )
    num_classes = max(names) + 1
    unnamed = [c for c in range(num_classes) if c not in names]
    if min(names) < 0 or unnamed:
        raise not_found(name, base, f"labels are not 0..{num_classes - 1}; missing {unnamed[:5]}")
    classnames = [names[c].replace("_", " ") for c in range(num_classes)]
    domain_of = {
        split: np.asarray([Path(r).parts[0] for r in rel], dtype=str)
        for split, (rel, _) in splits.items()
    }
    return make_bundle(
        name,
        base,
        classnames,
        ([str(base / r) for r in splits["train"][0]], np.asarray(splits["train"][1])),
        ([str(base / r) for r in splits["test"][0]], np.asarray(splits["test"][1])),
        train_transform,
        eval_transform,
        train_domains=domain_of["train"],
        test_domains=domain_of["test"],
        # labels are the lists' numbers, not the folders' string order: see splits.class_order
        raw_classnames=[names[c] for c in range(num_classes)],
    )
