"""Content fingerprints of datasets: what a checkpoint key says its weights were trained on.

A fingerprint is a sha256 over what a loader produces, never over where it was read from:
class names (as loaded and as the files spell them), zero-shot templates (they make the frozen
head), train and test labels and domains in loader order, and per sample either the image file's
path relative to the dataset's folder plus its size (``ImageFileDataset``) or the image array's
bytes (``ArrayImageDataset``: CIFAR100, MNIST, SVHN). So the same data under another mount path
has the same fingerprint, and deleting a class folder, adding a file or swapping a file for one
of another size changes it. Images are never decoded: file lists cost one ``stat`` per file
(DomainNet's 586k files in seconds, threaded for network file systems), arrays one hash pass.
A file rewritten in place with exactly the same size is not seen (that would need reading every
image).

Results: ``"sha256:<hex>"``; ``"path:<data_root>"`` where the content cannot be read here (a
``data_root`` URI, or a loader whose datasets are neither of the two kinds above): such data is
keyed by its location, as before fingerprints existed; ``None`` where the dataset is not
registered or not found under ``data_root`` (unknown).
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data import registry
from pipeline.data.bundle import ArrayImageDataset, DatasetBundle, ImageFileDataset
from pipeline.data.errors import DatasetNotFoundError

# part of every fingerprint: raise it when what is hashed changes, so old keys are not reused
VERSION = 1
# below this many files one thread stats them; above, a pool (stat waits on the disk or network)
_THREADED_FROM = 20_000
_THREADS = 8

# (name, data_root, loader) -> fingerprint, per process: a plan and a run ask for each dataset
# many times (once per unit key). ``remember`` replaces an entry from a freshly loaded bundle.
_CACHE: dict[tuple[str, str, Any], str] = {}


def is_uri(data_root: str | os.PathLike) -> bool:
    return "://" in str(data_root)


def _root(data_root: str | os.PathLike) -> str:
    return str(data_root) if is_uri(data_root) else str(Path(data_root).expanduser().resolve())


def path_key(data_root: str | os.PathLike) -> str:
    return f"path:{_root(data_root)}"


def bundle_fingerprint(bundle: DatasetBundle) -> str | None:
    """sha256 of a loaded bundle's content (None: its datasets are of a kind this cannot read)."""
    splits = [("train", bundle.train, bundle.train_targets, bundle.train_domains),
              ("test", bundle.test, bundle.test_targets, bundle.test_domains)]
    if all(isinstance(ds, ImageFileDataset) for _, ds, _, _ in splits):
        paths = [str(p) for _, ds, _, _ in splits for p in ds.paths]
        # the dataset's folder: where its files have their common root (not data_root, which a
        # loader may not even use); relative paths below it are the same wherever it is mounted
        # (paths are normalised: the common prefix of the first and last in sort order, cut at
        # its last separator, is the common folder; os.path.commonpath is 10x slower)
        prefix = os.path.commonprefix([min(paths), max(paths)]) if paths else ""
        base = prefix[:max(prefix.rfind(os.sep), 0)]
        sizes = _sizes(paths)
    elif not all(isinstance(ds, ArrayImageDataset) for _, ds, _, _ in splits):
        return None
    digest = hashlib.sha256()
    head = {"version": VERSION, "classnames": list(bundle.classnames), "templates": list(bundle.templates),
            "raw_classnames": bundle.raw_classnames}
    digest.update(json.dumps(head, sort_keys=True).encode())
    offset = 0
    for split, ds, targets, domains in splits:
        digest.update(f"\n{split} {len(ds)}\n".encode())
        digest.update(np.ascontiguousarray(targets, dtype="<i8").tobytes())
        digest.update(json.dumps(None if domains is None else [str(d) for d in domains]).encode())
        if isinstance(ds, ImageFileDataset):
            n = len(ds.paths)
            rel = (_relative(str(p), base) for p in ds.paths)
            listing = "\n".join(f"{r.replace(os.sep, '/')}\t{s}" for r, s in zip(rel, sizes[offset:offset + n]))
            digest.update(listing.encode("utf-8", "surrogateescape"))
            offset += n
        else:
            images = np.ascontiguousarray(ds.images)
            digest.update(f"{images.dtype.str}{images.shape}".encode())
            digest.update(memoryview(images).cast("B"))
    return "sha256:" + digest.hexdigest()


def _relative(path: str, base: str) -> str:
    # plain slicing where it can (5x faster than relpath over half a million files)
    if base and path.startswith(base) and path[len(base):len(base) + 1] == os.sep:
        return path[len(base) + 1:]
    return os.path.relpath(path, base) if base else path


def _sizes(paths: list[str]) -> list[int]:
    def size(p: str) -> int:
        try:
            return os.stat(p).st_size
        except FileNotFoundError:
            raise DatasetNotFoundError(f"image file {p} listed by the dataset does not exist", p) from None

    def sizes(part: list[str]) -> list[int]:
        return [size(p) for p in part]

    if len(paths) < _THREADED_FROM:
        return sizes(paths)
    # a few threads over large slices: stat releases the GIL, so a network file system's latency
    # overlaps; one future per file would cost more than the stats themselves
    step = -(-len(paths) // _THREADS)
    with ThreadPoolExecutor(max_workers=_THREADS) as pool:
        parts = pool.map(sizes, [paths[i:i + step] for i in range(0, len(paths), step)])
        return [n for part in parts for n in part]


def remember(name: str, data_root: str | os.PathLike, bundle: DatasetBundle, declared: Iterable[Any] = ()) -> str:
    """Fingerprint ``bundle`` (just loaded from ``data_root``) and keep it for this process
    (``declared``: the config's declared datasets, as for registry.datasets_for)."""
    fp = bundle_fingerprint(bundle) or path_key(data_root)
    _CACHE[(name, _root(data_root), registry.datasets_for(declared).get(name))] = fp
    return fp


def dataset_fingerprint(name: str, data_root: str | os.PathLike, declared: Iterable[Any] = ()) -> str | None:
    """The fingerprint of dataset ``name`` (registered, or among ``declared``, a config's declared
    datasets) under ``data_root`` (see the module doc); loads the dataset's metadata once per
    process, None when it is unknown or not there."""
    if is_uri(data_root):
        return path_key(data_root)
    loader = registry.datasets_for(declared).get(name)
    if loader is None:
        return None
    cached = _CACHE.get((name, _root(data_root), loader))
    if cached is not None:
        return cached
    try:
        bundle = registry.load_dataset(name, Path(data_root), declared=declared)
    except DatasetNotFoundError:
        return None
    return remember(name, data_root, bundle, declared)


def clear_cache() -> None:
    """Forget every fingerprint (data changed on disk while this process ran)."""
    _CACHE.clear()
