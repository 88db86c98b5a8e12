"""Generic ImageFolder datasets: ``root/<folder>/{train,test}/<class_name>/<image>``.

The simplest way to bring your own dataset (and how the demo world is stored): class names are
the folder names with underscores read as spaces, labels follow sorted folder order. The loader
itself is pipeline.data.loaders.image_folder; a config declares such a dataset without Python
(``datasets:``, resolved through pipeline.data.registry.datasets_for).
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.data.loaders.image_folder import DEFAULT_TEMPLATES, declared_loader, image_folder_loader
from pipeline.data.registry import register_dataset

__all__ = ["DEFAULT_TEMPLATES", "declared_loader", "image_folder_loader", "register_image_folder"]


def register_image_folder(name: str, templates: Sequence[str] = DEFAULT_TEMPLATES, *,
                          folder: str | None = None, overwrite: bool = False, carry: bool = True) -> None:
    """Register ``name`` as an ImageFolder dataset under ``root/<folder or name>``.

    Called before the benchmark starts, the registration reaches every Ray worker with the config
    (``register_dataset``). A config can declare the same without Python: ``datasets:``.
    """
    register_dataset(name, image_folder_loader(folder or name, templates), overwrite=overwrite, carry=carry)
