"""Generic ImageFolder datasets: ``root/<folder>/{train,test}/<class_name>/<image>``.

The simplest way to bring your own dataset (and how the demo world is stored): class names are
the folder names with underscores read as spaces, labels follow sorted folder order. Registering
one (pipeline.data.image_folder) is separate, so that the records can name such a loader.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipeline.data.bundle import DatasetBundle, ImageFileDataset
from pipeline.data.errors import not_found, require_dir
from pipeline.data.scan import scan_class_folders


DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)


def image_folder_layout(folder: str) -> str:
    """The expected layout an error about ``folder`` shows."""
    return f"{folder}/\n  train/<class_name>/<image>.png|jpg\n  test/<class_name>/<image>.png|jpg"


def image_folder_loader(folder: str, templates: Sequence[str] = DEFAULT_TEMPLATES) -> Callable[..., DatasetBundle]:
    """A registry loader for ``root/<folder>/{train,test}/<class>/*.png|jpg``."""
    layout = image_folder_layout(folder)

    def load(root: str | Path, train_transform: Any = None, eval_transform: Any = None,
             **_: Any) -> DatasetBundle:
        base = require_dir(folder, Path(root) / folder, layout)
        parts = {}
        for split in ("train", "test"):
            split_dir = require_dir(folder, base / split, layout)
            classes, rel, labels = scan_class_folders(folder, split_dir, layout)
            parts[split] = (classes, [str(split_dir / r) for r in rel], labels)
        if parts["train"][0] != parts["test"][0]:
            raise not_found(folder, base, "train/ and test/ must hold the same class folders", layout)
        classnames = [c.replace("_", " ") for c in parts["train"][0]]
        return DatasetBundle(
            name=folder,
            classnames=classnames,
            templates=list(templates),
            train=ImageFileDataset(parts["train"][1], parts["train"][2], train_transform),
            test=ImageFileDataset(parts["test"][1], parts["test"][2], eval_transform),
            train_targets=parts["train"][2],
            test_targets=parts["test"][2],
        )

    return load


@functools.lru_cache(maxsize=None)
def declared_loader(declaration: Any) -> Callable[..., DatasetBundle]:
    """The loader of a dataset a config declares (``BenchmarkConfig.datasets``, a DatasetConfig).

    One loader object per declaration in a process (declarations are frozen and hashable), so the
    per-process caches keyed by the loader (fingerprints) stay valid; another declaration of the
    same name is another loader.
    """
    if declaration.kind != "image_folder":  # (the config accepts no other kind)
        raise ValueError(f"datasets.{declaration.name}: unknown kind {declaration.kind!r}")
    loader = image_folder_loader(declaration.folder or declaration.name, tuple(declaration.templates))
    loader.declared = declaration  # type: ignore[attr-defined]
    return loader
