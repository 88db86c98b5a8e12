"""Task vectors tau = theta - theta_0, the checks on weights read, and a lazy local view of a file.

Reading and writing weights and task vectors (local paths or URIs) is ``pipeline.storage``'s;
``save_tensors``/``load_tensors`` here hand over to it. Only safetensors are read for weights:
nothing user-supplied is ever unpickled.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Mapping

import torch

# a damaged or non-safetensors weights file (a ``storage.DamagedFileError``); defined with the IO
from pipeline.storage import CorruptCheckpointError  # noqa: F401

StateDict = dict[str, torch.Tensor]


def task_vector(theta: Mapping[str, torch.Tensor], theta0: Mapping[str, torch.Tensor]) -> StateDict:
    """tau = theta - theta_0 over the floating-point tensors, naming a mismatched tensor."""
    out: StateDict = {}
    for key, base in theta0.items():
        if not torch.is_floating_point(base):
            continue
        if key not in theta:
            raise KeyError(f"fine-tuned weights lack tensor {key!r}")
        if theta[key].shape != base.shape:
            raise ValueError(f"tensor {key!r}: shape {tuple(theta[key].shape)} != {tuple(base.shape)}")
        out[key] = theta[key].detach().float() - base.detach().float()
    return out


def save_tensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike,
                 metadata: Mapping[str, str] | None = None) -> Path | str:
    """Write a safetensors file, whole or not at all, to a local path or a URI.

    The IO lives in ``pipeline.storage`` (``write_tensors``); this name stays for callers of the math.
    """
    from pipeline import storage  # imported on use, as storage imports this module on use

    storage.write_tensors(tensors, path, metadata)
    return str(path) if storage.is_uri(path) else Path(path)


def load_tensors(path: str | os.PathLike, expected: Mapping[str, torch.Tensor] | None = None) -> StateDict:
    """Read a safetensors file (local path or URI); with ``expected``, check every tensor's
    presence and shape. The IO lives in ``pipeline.storage`` (``read_tensors``)."""
    from pipeline import storage

    return storage.read_tensors(path, expected)


def check_tensors(tensors: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor],
                  where: str | os.PathLike) -> None:
    """Raise ValueError naming the first tensor of ``where`` that is missing, extra or mis-shaped."""
    extra = sorted(set(tensors) - set(expected))
    for key, ref in expected.items():
        if key not in tensors:
            hint = (f" and has {len(extra)} tensor(s) the model does not, e.g. {extra[0]!r}: a checkpoint "
                    f"of another backbone?") if extra else ""
            raise ValueError(f"{where}: missing tensor {key!r}{hint}")
        if tuple(tensors[key].shape) != tuple(ref.shape):
            raise ValueError(f"{where}: tensor {key!r} has shape {tuple(tensors[key].shape)}, "
                             f"expected {tuple(ref.shape)}")
    if extra:
        raise ValueError(f"{where}: unexpected tensor {extra[0]!r} (checkpoint of another backbone?)")


class MappedTensors(Mapping[str, torch.Tensor]):
    """A safetensors file opened lazily: each tensor is a memory-mapped view of the file.

    Nothing is read until a tensor's data is touched, and the pages read are the kernel's page
    cache, not process memory, so T task vectors can be merged chunk by chunk with memory for
    the result only (``pipeline.merging`` only reads its inputs). Get it from ``open_tensors``.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        from safetensors import SafetensorError, safe_open

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no weights file at {self.path}")
        try:
            self._file = safe_open(str(self.path), framework="pt")
            self._keys = list(self._file.keys())
        except (SafetensorError, OSError, ValueError) as err:
            raise CorruptCheckpointError(self.path, f"not a readable safetensors file: {err}") from err
        self._known = set(self._keys)

    def shape(self, key: str) -> tuple[int, ...]:
        """A tensor's shape from the file header, without touching its data."""
        if key not in self._known:
            raise KeyError(key)
        return tuple(self._file.get_slice(key).get_shape())

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._known:
            raise KeyError(key)
        return self._file.get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def open_tensors(path: str | os.PathLike, expected: Mapping[str, torch.Tensor] | None = None) -> MappedTensors:
    """Open a safetensors file lazily (memory-mapped); with ``expected``, check every tensor's
    presence and shape from the header alone, naming the first that does not fit."""
    mapped = MappedTensors(path)
    if expected is not None:
        shapes = {k: _Shape(mapped.shape(k)) for k in mapped}
        check_tensors(shapes, expected, mapped.path)
    return mapped


class _Shape:
    """Stands in for a tensor where only ``.shape`` is looked at."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape
