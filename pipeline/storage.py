"""Storage for everything a run keeps, on a local folder or any pyarrow URI (s3://, gs://, file://).

Every read and write of a run's files goes through this module: fine-tuned weights, task
vectors, the MagMax actor's state, results Parquet, configs, summaries, sweep records and the
rendered report. Fine-tuned weights live in a content-addressed folder per unit (``CheckpointStore``).

A URI may carry pyarrow's filesystem options as a query string, which is how an S3-compatible
server (MinIO, Ceph, a test server) is reached -- pyarrow ignores ``AWS_ENDPOINT_URL``:
``s3://bucket/runs?endpoint_override=host:9000&scheme=http&region=us-east-1``. ``join`` keeps the
query at the end, so every path under such a storage carries it. Credentials belong in the
environment (``AWS_ACCESS_KEY_ID``...), never in a file this module writes.

A unit's folder (``<storage>/checkpoints/<key>``) holds one ``task_NNN.safetensors`` per
finished task and, while a task trains, ``task_NNN.epoch.safetensors``: the weights, optimizer
moments and epoch counter after the last finished epoch, so a restarted worker resumes
mid-task instead of from the task's start. Every file is safetensors (nothing is unpickled) and
appears whole or not at all: local writes go through a temp file and ``os.replace``; object
stores (``s3://``, ``gs://``) get a single upload of the finished bytes.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Mapping

import pyarrow.fs as pafs

# torch (and pipeline.task_vectors, which needs it) is imported where tensors are handled: the
# results and report layers use this module too, and need no torch
if TYPE_CHECKING:
    import torch

    from pipeline.task_vectors import StateDict


def is_uri(path: str | os.PathLike) -> bool:
    return not isinstance(path, os.PathLike) and "://" in str(path)


def split_query(path: str | os.PathLike) -> tuple[str, str]:
    """A URI's path part and its query string (with the ``?``, or ""); a local path is all path."""
    if not is_uri(path):
        return str(path), ""
    base, mark, query = str(path).partition("?")
    return base, mark + query


def join(base: str | os.PathLike, *parts: str) -> str:
    """Join path parts for a local folder or a URI alike; a URI's ``?query`` stays at the end."""
    if is_uri(base):
        root, query = split_query(base)
        return "/".join([root.rstrip("/"), *parts]) + query
    return str(Path(base, *parts))


def name(path: str | os.PathLike) -> str:
    """The last part of a path or URI, without a query string."""
    root, _ = split_query(path)
    return root.rstrip("/").rpartition("/")[2] if is_uri(path) else Path(root).name


def parent(path: str | os.PathLike) -> str:
    """The folder holding a path or URI (a URI keeps its query)."""
    if is_uri(path):
        root, query = split_query(path)
        return root.rstrip("/").rpartition("/")[0] + query
    return str(Path(path).parent)


def filesystem(path: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem of a local path or URI, and the path on it (query options applied)."""
    if is_uri(path):
        return pafs.FileSystem.from_uri(str(path))
    return pafs.LocalFileSystem(), os.path.abspath(os.fspath(path))


def shown(path: str | os.PathLike) -> str:
    """A path or URI as error messages name it: credentials in a URI (``s3://KEY:SECRET@...``,
    ``?secret_key=...``) become ``***``, since messages end up in logs and ``failures.json``."""
    from pipeline.config import redact

    return redact(str(path))


def is_local(fs: pafs.FileSystem) -> bool:
    return isinstance(fs, pafs.LocalFileSystem)


@dataclass(frozen=True)
class TrainState:
    """What a task's training needs to go on after ``epoch`` finished epochs."""

    epoch: int
    weights: StateDict
    optimizer: dict  # torch optimizer ``state_dict()``


class CheckpointStore:
    """The checkpoints of one fine-tuning unit (``folder``: a local path or a URI)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = str(folder)

    def task_file(self, task: int) -> str:
        return join(self.folder, f"task_{task:03d}.safetensors")

    def epoch_file(self, task: int) -> str:
        return join(self.folder, f"task_{task:03d}.epoch.safetensors")

    # -- finished tasks ------------------------------------------------------------------------

    def has(self, task: int) -> bool:
        return exists(self.task_file(task))

    def save(self, task: int, weights: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> str:
        """Write a finished task's weights, then drop its epoch state (no longer needed)."""
        path = self.task_file(task)
        write_tensors(weights, path, metadata)
        delete(self.epoch_file(task))
        return path

    def load(self, task: int, expected: Mapping[str, torch.Tensor] | None = None) -> StateDict:
        return read_tensors(self.task_file(task), expected)

    def metadata(self, task: int) -> dict[str, str]:
        return read_metadata(self.task_file(task))

    # -- mid-task state ------------------------------------------------------------------------

    def save_epoch(self, task: int, state: TrainState) -> None:
        import torch

        tensors = {f"weights/{k}": v for k, v in state.weights.items()}
        groups = [dict(group, params=list(group["params"])) for group in state.optimizer["param_groups"]]
        for idx, slots in state.optimizer["state"].items():
            for name, value in slots.items():
                t = value if isinstance(value, torch.Tensor) else torch.tensor(value)
                tensors[f"optim/{idx}/{name}"] = t
        meta = {"epoch": str(state.epoch), "param_groups": json.dumps(groups)}
        write_tensors(tensors, self.epoch_file(task), meta)

    def load_epoch(self, task: int, expected: Mapping[str, torch.Tensor]) -> TrainState | None:
        """The saved mid-task state, or None when the task has none (or it is unreadable)."""
        from pipeline.task_vectors import CorruptCheckpointError, check_tensors

        path = self.epoch_file(task)
        if not exists(path):
            return None
        try:
            tensors = read_tensors(path)
            meta = read_metadata(path)
        except CorruptCheckpointError:
            return None  # a lost epoch costs one epoch of compute, never a wrong result
        weights = {k[len("weights/"):]: v for k, v in tensors.items() if k.startswith("weights/")}
        check_tensors(weights, expected, shown(path))
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim/"):
                _, idx, name = key.split("/", 2)
                state.setdefault(int(idx), {})[name] = value
        optimizer = {"state": state, "param_groups": json.loads(meta["param_groups"])}
        return TrainState(epoch=int(meta["epoch"]), weights=weights, optimizer=optimizer)


def exists(path: str | os.PathLike) -> bool:
    fs, p = filesystem(path)
    return fs.get_file_info(p).type == pafs.FileType.File


def mtime_ns(path: str | os.PathLike) -> int | None:
    """When a file was last written (ns since the epoch), or None when there is no file."""
    fs, p = filesystem(path)
    info = fs.get_file_info(p)
    return info.mtime_ns if info.type == pafs.FileType.File else None


def _local_atomic_target(p: str) -> tuple[str, str]:
    """A fresh temp file beside ``p`` (same folder, so ``os.replace`` is a rename) and ``p``."""
    os.makedirs(os.path.dirname(p), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(p)}.", suffix=".tmp", dir=os.path.dirname(p))
    os.close(fd)
    return tmp, p


def _publish_local(tmp: str, p: str) -> None:
    try:
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _fsync_dir(os.path.dirname(p))


def _fsync_dir(directory: str) -> None:
    """Make a rename durable; some filesystems cannot fsync a folder, which is no error."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A writable binary file whose content appears at ``path`` whole when the block ends without
    an error, and not at all otherwise.

    Locally: a temp file in the same folder (named ``.<name>.*.tmp``, which readers skip),
    fsync, ``os.replace``. Object stores publish an upload only once it is complete (and have
    no rename); the bytes are gathered in memory and sent in one upload when the block ends, so
    an error mid-write sends nothing.
    """
    fs, p = filesystem(path)
    if is_local(fs):
        tmp, p = _local_atomic_target(p)
        try:
            with open(tmp, "wb") as fh:
                yield fh
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        _publish_local(tmp, p)
        return
    buf = io.BytesIO()
    yield buf
    parent = p.rpartition("/")[0]
    if parent:
        fs.create_dir(parent, recursive=True)
    with fs.open_output_stream(p) as out:
        out.write(buf.getvalue())


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a file to a local path or a URI; it appears whole or not at all (``atomic_output``)."""
    with atomic_output(path) as out:
        out.write(data)


def read_bytes(path: str | os.PathLike, what: str = "file") -> bytes:
    """A whole file from a local path or a URI; FileNotFoundError names the path."""
    fs, p = filesystem(path)
    if fs.get_file_info(p).type != pafs.FileType.File:
        raise FileNotFoundError(f"no {what} at {shown(path)}")
    with fs.open_input_stream(p) as fh:
        return fh.read()


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a small text file (config, summary, failures) atomically."""
    write_bytes(path, text.encode())


def read_text(path: str | os.PathLike) -> str:
    return read_bytes(path).decode()


def delete(path: str | os.PathLike) -> None:
    """Remove a file if it exists."""
    fs, p = filesystem(path)
    if fs.get_file_info(p).type == pafs.FileType.File:
        fs.delete_file(p)


def list_files(folder: str | os.PathLike, suffix: str = "") -> list[str]:
    """Every file under ``folder`` (recursive) whose name ends in ``suffix``, skipping temp files
    (``.name`` or ``*.tmp``), as paths or URIs that the functions here accept; sorted.

    FileNotFoundError when ``folder`` does not exist, NotADirectoryError when it is a file.
    """
    fs, root = filesystem(folder)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"no folder at {shown(folder)}")
    if info.type != pafs.FileType.Directory:
        raise NotADirectoryError(f"{shown(folder)} is not a folder")
    found = []
    for f in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        if f.type != pafs.FileType.File or not f.base_name.endswith(suffix) or _is_temp(f.base_name):
            continue
        rel = f.path[len(root.rstrip("/")) + 1:] if f.path.startswith(root.rstrip("/") + "/") else f.base_name
        found.append(join(folder, *rel.split("/")))
    return sorted(found)


def _is_temp(base_name: str) -> bool:
    return base_name.startswith(".") or base_name.endswith(".tmp") or ".tmp." in base_name


def upload_dir(local_dir: str | os.PathLike, dest: str | os.PathLike) -> list[str]:
    """Copy every file under the local folder ``local_dir`` to ``dest`` (a folder or URI), each
    written whole; returns the written paths. How a report rendered locally reaches a URI."""
    written = []
    base = Path(local_dir)
    for f in sorted(p for p in base.rglob("*") if p.is_file()):
        target = join(dest, *f.relative_to(base).parts)
        write_bytes(target, f.read_bytes())
        written.append(target)
    return written


# -- safetensors -------------------------------------------------------------------------------


def write_tensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike,
                  metadata: Mapping[str, str] | None = None) -> str:
    """Write safetensors to a local path or a URI; the file appears whole or not at all."""
    from safetensors.torch import save, save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    fs, p = filesystem(path)
    if is_local(fs):
        # streamed to disk: no second copy of a large checkpoint in memory
        tmp, p = _local_atomic_target(p)
        try:
            save_file(tensors, tmp, metadata=dict(metadata or {}))
        except BaseException:
            os.unlink(tmp)
            raise
        _publish_local(tmp, p)
    else:
        write_bytes(path, save(tensors, metadata=dict(metadata or {})))
    return str(path)


def read_tensors(path: str | os.PathLike, expected: Mapping[str, torch.Tensor] | None = None) -> StateDict:
    """Read safetensors from a local path or a URI; with ``expected``, check names and shapes."""
    from safetensors import SafetensorError
    from safetensors.torch import load, load_file

    from pipeline.task_vectors import CorruptCheckpointError, check_tensors

    fs, p = filesystem(path)
    try:
        if is_local(fs):
            if not os.path.isfile(p):
                raise FileNotFoundError(f"no weights file at {shown(path)}")
            tensors = load_file(p)
        else:
            tensors = load(read_bytes(path, "weights file"))
    except (SafetensorError, OSError, ValueError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise CorruptCheckpointError(f"{shown(path)} is not a readable safetensors file: {err}") from err
    if expected is not None:
        check_tensors(tensors, expected, shown(path))
    return tensors


def open_tensors(path: str | os.PathLike, expected: Mapping[str, torch.Tensor] | None = None
                 ) -> Mapping[str, torch.Tensor]:
    """A safetensors file for reading: memory-mapped when local (``task_vectors.MappedTensors``:
    nothing is read until touched), read whole into memory from an object store."""
    fs, p = filesystem(path)
    if is_local(fs):
        from pipeline.task_vectors import open_tensors as open_mapped

        return open_mapped(p, expected)
    return read_tensors(path, expected)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a safetensors file (its JSON header), without reading the tensors
    (an object store serves the header with ranged reads)."""
    from pipeline.task_vectors import CorruptCheckpointError

    fs, p = filesystem(path)
    if fs.get_file_info(p).type != pafs.FileType.File:
        raise FileNotFoundError(f"no weights file at {shown(path)}")
    with fs.open_input_file(p) as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise CorruptCheckpointError(f"{shown(path)} is not a readable safetensors file: truncated header")
        (n,) = struct.unpack("<Q", head)
        if n > fh.size() - 8:
            raise CorruptCheckpointError(f"{shown(path)} is not a readable safetensors file: header longer than the file")
        header = fh.read(n)
    try:
        return dict(json.loads(header).get("__metadata__", {}))
    except (ValueError, UnicodeDecodeError) as err:
        raise CorruptCheckpointError(f"{shown(path)} has an unreadable safetensors header: {err}") from err
