"""Dataset errors: what a loader raises when data is missing, incomplete or unreadable.

The messages name the path searched, the dataset's expected layout and how to fetch it (both
from its record, pipeline.data.records), so a user can act on them without reading the code.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is missing or incomplete on disk.

    The message names the path that was searched, the expected layout, and (for torchvision
    datasets) how to fetch the data. `path` holds the searched path.
    """

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> tuple[Any, ...]:
        # Keeps `path` when Ray or multiprocessing ships the exception between processes.
        return (type(self), (self.args[0], self.path))


class ImageReadError(OSError):
    """An image file exists in the index but cannot be decoded; the message names the file."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), self.args)


def not_found(name: str, path: Path | str, problem: str, layout: str | None = None) -> DatasetNotFoundError:
    """The error for dataset ``name`` at ``path``: its layout (``layout``, else its record's) and
    fetch hint follow the problem."""
    from pipeline.data.records import RECORDS  # (the records import the loaders that raise this)

    rec = RECORDS.get(name)
    layout = layout if layout is not None else (rec.layout if rec else "")
    lines = [f"dataset {name!r}: {problem}", f"  searched: {path}"]
    if layout:
        lines.append("  expected layout:")
        lines.extend("    " + line for line in layout.splitlines())
    if rec is not None and rec.fetch:
        lines.append(f"  to fetch it: {rec.fetch}")
    return DatasetNotFoundError("\n".join(lines), str(path))


def require_dir(name: str, path: Path, layout: str | None = None) -> Path:
    if not path.is_dir():
        raise not_found(name, path, "folder not found", layout)
    return path


def require_file(name: str, path: Path, layout: str | None = None) -> Path:
    if not path.is_file():
        raise not_found(name, path, f"file {path.name!r} not found", layout)
    return path


@contextmanager
def torchvision_errors(name: str, path: Path) -> Iterator[None]:
    """Turn torchvision's 'Dataset not found' (RuntimeError) and file errors into ours."""
    try:
        yield
    except DatasetNotFoundError:
        raise
    except (RuntimeError, OSError, ValueError, KeyError) as err:
        raise not_found(name, path, f"torchvision could not read it: {err}") from err


def tv_attr(dataset: Any, attr: str) -> Any:
    # The file lists are private attributes of torchvision's classes (stable in 0.18-0.29); fail
    # loudly rather than silently mislabel if a later torchvision renames them.
    try:
        return getattr(dataset, attr)
    except AttributeError:
        raise RuntimeError(
            f"torchvision's {type(dataset).__name__} has no attribute {attr!r}; "
            "this loader supports torchvision 0.18-0.29"
        ) from None


def require_scipy(name: str) -> None:
    if importlib.util.find_spec("scipy") is None:
        raise ModuleNotFoundError(
            f"dataset {name!r} stores its labels in MATLAB .mat files, which need scipy: "
            "install scipy (it is not a core dependency of this project)"
        )
