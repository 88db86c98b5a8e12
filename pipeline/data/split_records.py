"""Seeded, recorded train/test splits for datasets that ship none (ImageNet-R, EuroSAT, ...).

A record (JSON-serialisable: dataset, method, seed, fractions, the relative paths of each part)
is kept in ``DatasetBundle.split_record``; ``save_split_record`` writes it next to the results and
the ``split_record=`` loader option rebuilds exactly that split.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.bundle import PathLike
from pipeline.data.errors import not_found


# Seed of the recorded seeded splits; 5 as in the reference scripts.
DEFAULT_SPLIT_SEED = 5


def stratified_split(
    keys: Sequence[str],
    labels: np.ndarray,
    fractions: Mapping[str, float],
    seed: int,
) -> dict[str, np.ndarray]:
    """Per-class seeded split of samples into named parts.

    Within a class the samples are sorted by `keys` (relative paths), then permuted by a
    generator seeded with (seed, label); each part but the first gets round(n * fraction)
    samples (halves round up), the first part the rest. Sorting first makes the result
    independent of directory listing order and of the platform; a generator per class makes a
    class's split independent of the other classes' sizes.
    """
    names = list(fractions)
    if not names or abs(sum(fractions.values()) - 1.0) > 1e-9:
        raise ValueError(f"fractions must sum to 1, got {dict(fractions)}")
    keys_arr = np.asarray(keys, dtype=str)
    labels = np.asarray(labels, dtype=np.int64)
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        members = members[np.argsort(keys_arr[members], kind="stable")]
        rng = np.random.default_rng([seed, int(label)])
        members = members[rng.permutation(members.size)]
        counts = [int(np.floor(members.size * fractions[n] + 0.5)) for n in names[1:]]
        first = members.size - sum(counts)
        if first < 0:  # tiny classes: rounding up the later parts can overshoot
            counts[-1] += first
            first = 0
        bounds = np.cumsum([0, first, *counts])
        for n, lo, hi in zip(names, bounds[:-1], bounds[1:], strict=True):
            parts[n].append(members[lo:hi])
    return {n: np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for n, p in parts.items()}


def seeded_record(
    name: str,
    keys: Sequence[str],
    labels: np.ndarray,
    fractions: Mapping[str, float],
    seed: int,
) -> dict[str, Any]:
    parts = stratified_split(keys, labels, fractions, seed)
    return {
        "dataset": name,
        "method": "seeded-stratified",
        "seed": int(seed),
        "fractions": dict(fractions),
        "splits": {n: sorted(str(keys[i]) for i in idx) for n, idx in parts.items()},
    }


def apply_record(
    name: str, base: Path, record: Mapping[str, Any], keys: Sequence[str]
) -> dict[str, np.ndarray]:
    """Indices (into `keys`) of the train and test parts of a recorded split."""
    if record.get("dataset") != name:
        raise ValueError(f"split record is for {record.get('dataset')!r}, not {name!r}")
    position = {k: i for i, k in enumerate(keys)}
    out = {}
    for part in ("train", "test"):
        wanted = record["splits"][part]
        missing = [k for k in wanted if k not in position]
        if missing:
            raise not_found(
                name, base / missing[0], f"{len(missing)} file(s) of the recorded {part} split are missing"
            )
        out[part] = np.asarray(sorted(position[k] for k in wanted), dtype=np.int64)
    return out


def split_parts(
    name: str,
    base: Path,
    keys: Sequence[str],
    labels: np.ndarray,
    fractions: Mapping[str, float],
    split_seed: int,
    split_record: Mapping[str, Any] | None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    record = (
        dict(split_record)
        if split_record is not None
        else seeded_record(name, keys, labels, fractions, split_seed)
    )
    return apply_record(name, base, record, keys), record


def save_split_record(record: Mapping[str, Any], path: PathLike) -> Path:
    """Write a split record as JSON (temp file + rename, so a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
    os.replace(tmp, path)
    return path


def load_split_record(path: PathLike) -> dict[str, Any]:
    """Read a split record written by save_split_record (pass it on as `split_record=`)."""
    return json.loads(Path(path).read_text())
