"""The manifest of a prepared dataset: ``<data_root>/<folder>/prepare_manifest.json``.

It records what the project's own loader found (split sizes, per-class and per-domain counts,
image count) and a sha256 of the sorted relative file list, so that `--verify` can tell later
whether the files are still those that were checked, and compare the counts with the published
ones without loading the dataset again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.prepare.sources import PrepareError, files_under
from pipeline.data.bundle import ArrayImageDataset
from pipeline.data.registry import load_dataset
from pipeline.data.scan import is_image

MANIFEST = "prepare_manifest.json"
FORMAT = 1


def file_list_digest(folder: Path) -> tuple[int, str]:
    """(number of files, sha256 of their sorted relative paths), the manifest left out."""
    files = sorted(files_under(folder, skip=MANIFEST))
    return len(files), _digest(files)


def _digest(files: Sequence[str]) -> str:
    return hashlib.sha256("".join(f + "\n" for f in files).encode()).hexdigest()


def build(name: str, root: Path, folder: str, sources: Sequence[Path]) -> dict[str, Any]:
    """Load ``name`` from ``root`` with its registered loader and describe what it found.

    The loader's errors (DatasetNotFoundError: path, expected layout) propagate; every file the
    loader indexes is checked to exist (DomainNet's lists name files the loader never stats).
    """
    bundle = load_dataset(name, root)
    base = root / folder
    image_count = 0
    for split in (bundle.train, bundle.test):
        if isinstance(split, ArrayImageDataset):
            image_count += len(split)
        else:
            missing = [p for p in getattr(split, "paths", []) if not os.path.isfile(p)]
            if missing:
                raise PrepareError(f"{name}: {len(missing)} file(s) the loader lists are missing, "
                                   f"e.g. {missing[0]}; the archive is incomplete")
    all_files = sorted(files_under(base, skip=MANIFEST))
    if not isinstance(bundle.train, ArrayImageDataset):
        image_count = sum(1 for f in all_files if is_image(Path(f)))
    num = bundle.num_classes
    per_split = {s: np.bincount(t, minlength=num) for s, t in
                 (("train", bundle.train_targets), ("test", bundle.test_targets))}
    names = bundle.raw_classnames or bundle.classnames
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "dataset": name,
        "folder": folder,
        "prepared_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "prepared_from": [str(p) for p in sources],
        "counts": {"classes": num, "train": int(len(bundle.train_targets)),
                   "test": int(len(bundle.test_targets)), "images": image_count},
        "per_class": [{"label": c, "name": names[c], "train": int(per_split["train"][c]),
                       "test": int(per_split["test"][c])} for c in range(num)],
        "files": {"count": len(all_files), "sha256": _digest(all_files)},
    }
    if bundle.train_domains is not None and bundle.test_domains is not None:
        domains = sorted(set(bundle.train_domains.tolist()) | set(bundle.test_domains.tolist()))
        manifest["per_domain"] = {d: [int((bundle.train_domains == d).sum()), int((bundle.test_domains == d).sum())]
                                  for d in domains}
    return manifest


def write(folder: Path, manifest: Mapping[str, Any]) -> Path:
    """Write atomically (temp file + rename): a reader sees the old manifest or the new one."""
    path = folder / MANIFEST
    tmp = folder / f".{MANIFEST}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def read(folder: Path) -> dict[str, Any] | None:
    """The manifest in ``folder``, or None when there is none or it is unreadable/of another format."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return None
    return manifest


def count_problems(manifest: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """How the manifest's counts differ from ``expected`` (keys classes/train/test/images, and
    domains: {domain: (train, test)}); keys absent or None are not checked."""
    problems = []
    counts = manifest.get("counts", {})
    for key in ("classes", "train", "test", "images"):
        want = expected.get(key)
        if want is not None and counts.get(key) != want:
            problems.append(f"{key} {_n(counts.get(key))} (expected {_n(want)})")
    have_domains = manifest.get("per_domain", {})
    for domain, want in (expected.get("domains") or {}).items():
        have = tuple(have_domains.get(domain, (None, None)))
        if have != tuple(want):
            problems.append(f"{domain} train/test {_n(have[0])}/{_n(have[1])} "
                            f"(expected {_n(want[0])}/{_n(want[1])})")
    return problems


def _n(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "none"
