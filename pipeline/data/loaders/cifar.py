"""CIFAR-100 (python version), read without running pickled code."""

from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.bundle import ArrayImageDataset, DatasetBundle, PathLike, Transform
from pipeline.data.errors import not_found, require_dir, require_file
from pipeline.data.templates import get_templates


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler for the CIFAR python files that only resolves what they contain.

    The official CIFAR-100 "python version" is a pickle (torchvision reads it with plain
    `pickle.load`); this allow-list means a tampered file cannot run code when it is loaded.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR file")
        # Files written under numpy 1 name numpy.core, under numpy 2 numpy._core.
        has_private_core = importlib.util.find_spec("numpy._core") is not None
        if has_private_core and module.startswith("numpy.core."):
            module = "numpy._core." + module[len("numpy.core.") :]
        elif not has_private_core and module.startswith("numpy._core."):
            module = "numpy.core." + module[len("numpy._core.") :]
        return super().find_class(module, name)


def _read_cifar_file(name: str, path: Path) -> dict[str, Any]:
    require_file(name, path)
    try:
        with path.open("rb") as f:
            return _CifarUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise not_found(name, path, f"unreadable CIFAR file: {err}") from err


def load_cifar100(
    root: PathLike, train_transform: Transform | None = None, eval_transform: Transform | None = None
) -> DatasetBundle:
    name = "cifar100"
    base = require_dir(name, Path(root).expanduser() / "cifar-100-python")
    meta = _read_cifar_file(name, base / "meta")
    classnames = [str(c) for c in meta["fine_label_names"]]
    splits = {}
    for split in ("train", "test"):
        entry = _read_cifar_file(name, base / split)
        data = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry["fine_labels"], dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
            raise not_found(name, base / split, f"unexpected data shape {data.shape}")
        if len(labels) == 0:
            raise not_found(name, base / split, "no images")
        # Stored as N x (3*32*32) channel-planar rows; PIL wants N x H x W x C.
        splits[split] = (data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels)
    # Class names as torchvision gives them (with underscores), as the reference code used them.
    return DatasetBundle(
        name=name,
        classnames=classnames,
        templates=get_templates(name),
        train=ArrayImageDataset(*splits["train"], train_transform),
        test=ArrayImageDataset(*splits["test"], eval_transform),
        train_targets=splits["train"][1],
        test_targets=splits["test"][1],
    )
