"""Reading dataset folders and list files: class-folder trees, official split lists."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from pipeline.data.errors import not_found


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".tif", ".tiff", ".webp")


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan_class_folders(
    name: str, image_dir: Path, layout: str | None = None
) -> tuple[list[str], list[str], np.ndarray]:
    """(class folder names, image paths relative to image_dir, labels) of a class-folder tree;
    ``layout``: what an error shows as expected (default: the dataset record's)."""
    classes = subdirs(image_dir)
    if not classes:
        raise not_found(name, image_dir, "no class folders", layout)
    rel, labels = [], []
    for label, folder in enumerate(classes):
        files = sorted(p for p in folder.rglob("*") if p.is_file() and is_image(p))
        if not files:
            raise not_found(name, folder, f"class folder {folder.name!r} has no images", layout)
        rel.extend(p.relative_to(image_dir).as_posix() for p in files)
        labels.extend([label] * len(files))
    return [c.name for c in classes], rel, np.asarray(labels, dtype=np.int64)


def read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def file_paths(base: Path, rel: Sequence[str], idx: np.ndarray) -> list[str]:
    return [str(base / rel[i]) for i in idx]


def official_parts(
    name: str,
    base: Path,
    position: Mapping[str, int],
    lists: Sequence[Path],
    key: Callable[[str], str],
) -> dict[str, np.ndarray]:
    """Train/test indices from official split lists (one file per line, mapped through `key`)."""
    parts = {}
    for part, path in zip(("train", "test"), lists, strict=True):
        wanted = [key(line) for line in read_lines(path)]
        missing = [w for w in wanted if w not in position]
        if missing:
            raise not_found(
                name, base / missing[0], f"{len(missing)} file(s) listed in {path.name} are missing"
            )
        parts[part] = np.asarray(sorted(position[w] for w in wanted), dtype=np.int64)
    return parts
