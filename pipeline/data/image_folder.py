"""Generic ImageFolder datasets: ``root/<folder>/{train,test}/<class_name>/<image>``.

The simplest way to bring your own dataset (and how the demo world is stored): class names are
the folder names with underscores read as spaces, labels follow sorted folder order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from pipeline.data import registry
from pipeline.data.registry import (
    DatasetBundle,
    ImageFileDataset,
    _not_found,
    _require_dir,
    _scan_class_folders,
    register_dataset,
)

DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)


def image_folder_loader(folder: str, templates: Sequence[str] = DEFAULT_TEMPLATES) -> Callable[..., DatasetBundle]:
    """A registry loader for ``root/<folder>/{train,test}/<class>/*.png|jpg``."""
    registry._LAYOUTS.setdefault(folder, f"{folder}/\n  train/<class_name>/<image>.png|jpg\n  test/<class_name>/<image>.png|jpg")

    def load(root: str | Path, train_transform: Any = None, eval_transform: Any = None,
             **_: Any) -> DatasetBundle:
        base = _require_dir(folder, Path(root) / folder)
        parts = {}
        for split in ("train", "test"):
            split_dir = _require_dir(folder, base / split)
            classes, rel, labels = _scan_class_folders(folder, split_dir)
            parts[split] = (classes, [str(split_dir / r) for r in rel], labels)
        if parts["train"][0] != parts["test"][0]:
            raise _not_found(folder, base, "train/ and test/ must hold the same class folders")
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


def register_image_folder(name: str, templates: Sequence[str] = DEFAULT_TEMPLATES, *,
                          folder: str | None = None, overwrite: bool = False, carry: bool = True) -> None:
    """Register ``name`` as an ImageFolder dataset under ``root/<folder or name>``.

    Called before the benchmark starts, the registration reaches every Ray worker with the config
    (``register_dataset``). A config can declare the same without Python: ``datasets:`` (below).
    """
    register_dataset(name, image_folder_loader(folder or name, templates), overwrite=overwrite, carry=carry)


def register_declared(declared: Iterable[Any]) -> None:
    """Register the datasets a config declares (``BenchmarkConfig.datasets``) in this process.

    Every process that builds a scenario calls this with its config, so a declared dataset needs
    nothing shipped. A loader made from the same declaration is kept (so per-process caches keyed
    by the loader stay valid); another declaration of the name replaces it.
    """
    for d in declared:
        if d.kind != "image_folder":  # (the config accepts no other kind)
            raise ValueError(f"datasets.{d.name}: unknown kind {d.kind!r}")
        if getattr(registry.DATASETS.get(d.name), "declared", None) == d:
            continue
        loader = image_folder_loader(d.folder or d.name, tuple(d.templates))
        loader.declared = d  # type: ignore[attr-defined]
        register_dataset(d.name, loader, overwrite=True, carry=False)
