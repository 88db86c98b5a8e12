"""Safetensors files of weights and task vectors: written whole with their digest, read checked.

A file carries the sha256 of its tensors and metadata in its own metadata (``DIGEST_KEY``),
which every read checks (``read_tensors``, ``open_tensors``, ``check_tensors_file``); a file
that fails raises ``CorruptCheckpointError`` naming it. Nothing is ever unpickled. Local files
can be opened memory-mapped (``open_tensors``), so T task vectors merge with memory for the
result only.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.fs as pafs
from safetensors import SafetensorError, safe_open  # the format's core: no torch until a tensor is read

from pipeline.storage import files
from pipeline.storage.files import local_atomic_target, publish_local, read_bytes
from pipeline.storage.integrity import DIGEST_KEY, CorruptCheckpointError, DamagedFileError, note_undigested, one_line
from pipeline.storage.paths import filesystem, is_local, shown

# torch (and safetensors.torch, which imports it) is imported in the functions that handle
# tensors: the results and report layers import this package and need no torch
if TYPE_CHECKING:
    import torch

    StateDict = dict[str, torch.Tensor]

_CHUNK = 16 << 20
# (path, inode, size, mtime_ns) of files this process verified in full: a second read skips the hash
_verified: set[tuple[str, int, int, int]] = set()


def _stat_key(path: str | os.PathLike) -> tuple[str, int, int, int] | None:
    """(path, inode, size, mtime_ns) of a file, None when there is none: what a verification is
    remembered by (a local file replaced by a rename has a new inode even within one clock tick)."""
    fs, p = filesystem(path)
    if is_local(fs):
        try:
            st = os.stat(p)
        except OSError:
            return None
        return (str(path), st.st_ino, st.st_size, st.st_mtime_ns) if os.path.isfile(p) else None
    info = fs.get_file_info(p)
    if info.type != pafs.FileType.File:
        return None
    return (str(path), 0, int(info.size or 0), int(info.mtime_ns or 0))


# -- the digest --------------------------------------------------------------------------------


def tensors_digest(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> str:
    """The sha256 a safetensors file carries: every tensor in name order (name, dtype, shape,
    then its bytes as stored: little-endian, row-major), then the other metadata entries. The
    same bytes as ``check_tensors_file`` reads from the file, so a memory-mapped file is checked
    without loading it."""
    import torch  # heavy: see the note at the top

    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach()
        if t.device.type != "cpu" or not t.is_contiguous():
            t = t.cpu().contiguous()
        _entry(h, key, _st_dtype(t.dtype), list(t.shape))
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    _meta_entry(h, metadata)
    return h.hexdigest()


def _entry(h, key: str, dtype: str, shape: list[int]) -> None:
    h.update(json.dumps([key, dtype, shape]).encode() + b"\n")


def _meta_entry(h, metadata: Mapping[str, str]) -> None:
    h.update(json.dumps(sorted((k, v) for k, v in metadata.items() if k != DIGEST_KEY)).encode())


def _st_dtype(dtype: torch.dtype) -> str:
    """The safetensors name of a torch dtype (as its header writes it)."""
    from safetensors.torch import _TYPES  # imports torch: see the note at the top

    for st_name, torch_dtype in _TYPES.items():
        if torch_dtype == dtype:
            return st_name
    raise ValueError(f"dtype {dtype} has no safetensors name")


# -- the header and the check of a file --------------------------------------------------------


def _read_header(fh, size: int, path: str | os.PathLike) -> tuple[int, dict]:
    head = fh.read(8)
    if len(head) < 8:
        raise CorruptCheckpointError(path, "not a readable safetensors file: truncated header")
    (n,) = struct.unpack("<Q", head)
    if n > size - 8:
        raise CorruptCheckpointError(path, f"not a readable safetensors file: header of {n} bytes in a file of "
                                           f"{size} (truncated?)")
    try:
        header = json.loads(fh.read(n))
        if not isinstance(header, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as err:
        raise CorruptCheckpointError(path, f"unreadable safetensors header: {one_line(err)}") from err
    return n, header


def _layout(header: dict, n: int, size: int, path: str | os.PathLike) -> dict[str, tuple[str, list, int, int]]:
    """name -> (dtype, shape, start, end) of every tensor, the file size checked against them."""
    out = {}
    try:
        for key, info in header.items():
            if key != "__metadata__":
                start, end = (int(x) for x in info["data_offsets"])
                out[key] = (str(info["dtype"]), [int(d) for d in info["shape"]], start, end)
    except (KeyError, TypeError, ValueError) as err:
        raise CorruptCheckpointError(path, f"malformed safetensors header entry: {one_line(err)}") from err
    want = 8 + n + max((e for *_, e in out.values()), default=0)
    if size != want:
        raise CorruptCheckpointError(path, f"file is {size} bytes, its header describes {want} (truncated or "
                                           f"overwritten)")
    return out


def check_tensors_file(path: str | os.PathLike, full: bool = True) -> bool:
    """Check a safetensors file without loading it: header and size always; with ``full`` also
    every byte against the digest the file carries (one streamed pass; skipped when this
    process verified the same path, size and mtime before). True when a digest was checked,
    False for a file written before digests; DamagedFileError when the file is not intact."""
    key = _stat_key(path)
    if key is None:
        raise FileNotFoundError(f"no weights file at {shown(path)}")
    if full and key in _verified:
        return True
    fs, p = filesystem(path)
    with fs.open_input_file(p) as fh:
        n, header = _read_header(fh, key[2], path)
        layout = _layout(header, n, key[2], path)
        meta = header.get("__metadata__") or {}
        want = meta.get(DIGEST_KEY) if isinstance(meta, dict) else None
        if want is None:
            note_undigested(path)
            return False
        if not full:
            return True
        h = hashlib.sha256()
        for tensor in sorted(layout):
            dtype, shape, start, end = layout[tensor]
            _entry(h, tensor, dtype, shape)
            fh.seek(8 + n + start)
            left = end - start
            while left > 0:
                chunk = fh.read(min(_CHUNK, left))
                if not chunk:
                    raise CorruptCheckpointError(path, "file ends inside a tensor (truncated)")
                h.update(chunk)
                left -= len(chunk)
        _meta_entry(h, meta)
    if h.hexdigest() != want:
        raise CorruptCheckpointError(path, "content does not match its sha256 digest (damaged after it was "
                                           "written)")
    _verified.add(key)
    return True


def _verify_loaded(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, str],
                   key: tuple[str, int, int, int] | None) -> None:
    want = meta.get(DIGEST_KEY)
    if want is None:
        note_undigested(path)
        return
    if key is not None and key in _verified:
        return
    if tensors_digest(tensors, meta) != want:
        raise CorruptCheckpointError(path, "content does not match its sha256 digest (damaged after it was "
                                           "written)")
    if key is not None:
        _verified.add(key)


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


# -- writing and reading -----------------------------------------------------------------------


def write_tensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike,
                  metadata: Mapping[str, str] | None = None) -> str:
    """Write safetensors to a local path or a URI; the file appears whole or not at all and
    carries the sha256 of its content in its metadata (``DIGEST_KEY``, ``tensors_digest``)."""
    from safetensors.torch import save, save_file  # imports torch: see the note at the top

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {k: v for k, v in (metadata or {}).items() if k != DIGEST_KEY}
    meta[DIGEST_KEY] = tensors_digest(tensors, meta)
    fs, p = filesystem(path)
    if is_local(fs):
        # streamed to disk: no second copy of a large checkpoint in memory
        tmp, p = local_atomic_target(p)
        try:
            save_file(tensors, tmp, metadata=meta)
        except BaseException:
            os.unlink(tmp)
            raise
        publish_local(tmp, p)
    else:
        files.write_bytes(path, save(tensors, metadata=meta))
    return str(path)


def read_tensors(path: str | os.PathLike, expected: Mapping[str, torch.Tensor] | None = None) -> StateDict:
    """Read safetensors from a local path or a URI, checked against the digest the file carries
    (CorruptCheckpointError, a DamagedFileError, naming the file when unreadable or changed);
    with ``expected``, check names and shapes too."""
    from safetensors.torch import load, load_file  # imports torch: see the note at the top

    fs, p = filesystem(path)
    key = _stat_key(path)
    if key is None:
        raise FileNotFoundError(f"no weights file at {shown(path)}")
    try:
        if is_local(fs):
            tensors = load_file(p)
            meta = _header_metadata(path)
        else:
            data = read_bytes(path, "weights file")
            tensors = load(data)
            (n,) = struct.unpack("<Q", data[:8])
            meta = dict(json.loads(data[8:8 + n]).get("__metadata__") or {})
    except (SafetensorError, OSError, ValueError) as err:
        if isinstance(err, (FileNotFoundError, DamagedFileError)):
            raise
        raise CorruptCheckpointError(path, f"not a readable safetensors file: {one_line(err)}") from err
    _verify_loaded(path, tensors, meta, key)
    if expected is not None:
        check_tensors(tensors, expected, shown(path))
    return tensors


def open_tensors(path: str | os.PathLike, expected: Mapping[str, torch.Tensor] | None = None
                 ) -> Mapping[str, torch.Tensor]:
    """A safetensors file for reading: memory-mapped when local (``open_mapped``), read whole
    into memory from an object store. Checked against its digest either way: the mapped file in
    one streamed pass before it is handed out (once per process per path, size and mtime)."""
    fs, p = filesystem(path)
    if is_local(fs):
        mapped = open_mapped(p, expected)
        check_tensors_file(path, full=True)
        return mapped
    return read_tensors(path, expected)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a safetensors file (its JSON header), without reading the tensors
    (an object store serves the header with ranged reads); the digest entry is left out."""
    meta = _header_metadata(path)
    meta.pop(DIGEST_KEY, None)
    return meta


def _header_metadata(path: str | os.PathLike) -> dict[str, str]:
    fs, p = filesystem(path)
    info = fs.get_file_info(p)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(f"no weights file at {shown(path)}")
    with fs.open_input_file(p) as fh:
        _, header = _read_header(fh, int(info.size or 0), path)
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise CorruptCheckpointError(path, "unreadable safetensors header: __metadata__ is not an object")
    return dict(meta)


# -- a lazy local view ------------------------------------------------------------------------


class MappedTensors(Mapping[str, "torch.Tensor"]):
    """A local safetensors file opened lazily: each tensor is a memory-mapped view of the file.

    Nothing is read until a tensor's data is touched, and the pages read are the kernel's page
    cache, not process memory, so T task vectors can be merged chunk by chunk with memory for
    the result only (``pipeline.merging`` only reads its inputs). Get it from ``open_mapped``
    (no digest check) or ``open_tensors`` (checked).
    """

    def __init__(self, path: str | os.PathLike) -> None:
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


def open_mapped(path: str | os.PathLike, expected: Mapping[str, torch.Tensor] | None = None) -> MappedTensors:
    """Open a local safetensors file lazily (memory-mapped), its digest not checked (benchmarks
    and files this process just wrote); with ``expected``, check every tensor's presence and
    shape from the header alone, naming the first that does not fit."""
    mapped = MappedTensors(path)
    if expected is not None:
        shapes = {k: _Shape(mapped.shape(k)) for k in mapped}
        check_tensors(shapes, expected, mapped.path)
    return mapped


class _Shape:
    """Stands in for a tensor where only ``.shape`` is looked at."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape
