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

Every file proves itself. A safetensors file carries the sha256 of its tensors and metadata in
its own metadata (``DIGEST_KEY``), which every read checks (``read_tensors``, ``open_tensors``,
``check_tensors_file``); a results Parquet part has its sha256 beside it in ``<part>.sha256``
(``write_with_sidecar``/``read_checked``: the digest cannot live inside the bytes it covers).
A file that fails raises ``DamagedFileError`` (one line naming it); the layers that decide
what is cached (``CheckpointStore``, ``results.unit_done``) move it aside to
``<name>.damaged-<UTC time>`` (``move_aside``: kept, never deleted) and let the run compute it
again. Files written before digests existed are read unverified, said once per process.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import struct
import sys
import tempfile
import time
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
        """Whether the task's checkpoint is there and whole, judged cheaply (header, and file size
        against it: what the plan asks of hundreds of files); a truncated or unreadable one is
        moved aside and said, and does not count. Its content is checked against its digest
        where it is read (``load``, ``verify``)."""
        return self._whole(task, full=False)

    def verify(self, task: int) -> bool:
        """``has``, and every byte against the checkpoint's digest (one pass; once per process)."""
        return self._whole(task, full=True)

    def _whole(self, task: int, *, full: bool) -> bool:
        path = self.task_file(task)
        if not exists(path):
            return False
        try:
            check_tensors_file(path, full=full)
        except DamagedFileError as err:
            discard(err, path, "its task will be fine-tuned again")
            return False
        return True

    def save(self, task: int, weights: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> str:
        """Write a finished task's weights, then drop its epoch state (no longer needed)."""
        path = self.task_file(task)
        write_tensors(weights, path, metadata)
        delete(self.epoch_file(task))
        return path

    def load(self, task: int, expected: Mapping[str, torch.Tensor] | None = None) -> StateDict:
        """The task's weights, checked against their digest; a damaged file is moved aside (so
        that the next look, e.g. a restarted Train worker's, fine-tunes it again) and raised."""
        path = self.task_file(task)
        try:
            return read_tensors(path, expected)
        except DamagedFileError as err:
            discard(err, path, "its task will be fine-tuned again")
            raise

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
        """The saved mid-task state, or None when the task has none, or when it is damaged (moved
        aside and said: the task restarts from its first epoch, never from a wrong state)."""
        from pipeline.task_vectors import check_tensors

        path = self.epoch_file(task)
        if not exists(path):
            return None
        try:
            tensors = read_tensors(path)
            meta = read_metadata(path)
        except DamagedFileError as err:
            discard(err, path, "its task restarts from its first epoch")
            return None
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


# -- integrity: every file a run writes carries a digest that every read checks ----------------


class DamagedFileError(ValueError):
    """A file of a run that cannot be trusted: unreadable, truncated, or not what was written
    (its content no longer matches the digest written with it). The message is one line naming
    the file; ``path`` is that name (credentials redacted), ``why`` the reason."""

    def __init__(self, path: str | os.PathLike, why: str) -> None:
        self.path = shown(path)
        self.why = " ".join(str(why).split())  # one line, whatever the underlying error printed
        super().__init__(f"{self.path}: {self.why}")

    def __reduce__(self):  # crosses Ray process boundaries intact
        return (type(self), (self.path, self.why))


class CorruptCheckpointError(DamagedFileError):
    """A weights file is damaged or is not a safetensors file; the message names the file."""


# the safetensors ``__metadata__`` key holding a file's content digest (``write_tensors``)
DIGEST_KEY = "sha256"
# a Parquet part's digest lives beside it, in ``sha256sum`` format: ``sha256sum -c`` checks it
SIDECAR_SUFFIX = ".sha256"
_CHUNK = 16 << 20
# (path, inode, size, mtime_ns) of files this process verified in full: a second read skips the hash
_verified: set[tuple[str, int, int, int]] = set()
_told_undigested = False


def say(line: str) -> None:
    """One line for the person running this (stderr; a Ray worker's goes to its log)."""
    print(line, file=sys.stderr, flush=True)


def _note_undigested(path: str | os.PathLike) -> None:
    """Files written before digests existed are read unverified: said once per process."""
    global _told_undigested
    if not _told_undigested:
        _told_undigested = True
        say(f"note: {shown(path)} carries no content digest (written before files had one): read without "
            f"verification; other such files are not named")


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


def move_aside(path: str | os.PathLike) -> str | None:
    """Move a damaged file (and its digest sidecar, if any) to ``<name>.damaged-<UTC time>``
    beside it, never deleting it; the new path, or None when it could not be moved (gone
    already, read-only storage). Readers skip such names: nothing counts it as a result."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    root, query = split_query(path)
    target, n = f"{root}.damaged-{stamp}", 1
    while exists(target + query):
        n += 1
        target = f"{root}.damaged-{stamp}-{n}"
    moved = None
    for src, dst in ((root, target), (root + SIDECAR_SUFFIX, target + SIDECAR_SUFFIX)):
        fs, p = filesystem(src + query)
        _, q = filesystem(dst + query)
        try:
            if fs.get_file_info(p).type != pafs.FileType.File:
                continue
            if is_local(fs):
                os.replace(p, q)
            else:  # object stores have no rename
                fs.copy_file(p, q)
                fs.delete_file(p)
        except OSError:
            continue
        if src == root:
            moved = target + query
    return moved


def discard(err: DamagedFileError, path: str | os.PathLike, then: str) -> None:
    """Say in one line that ``path`` is damaged and what happens ``then``; move it aside."""
    moved = move_aside(path)
    where = f"moved aside to {name(moved)}" if moved else "could not be moved aside"
    say(f"damaged file: {err}; {where}; {then}")


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def tensors_digest(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> str:
    """The sha256 a safetensors file carries: every tensor in name order (name, dtype, shape,
    then its bytes as stored: little-endian, row-major), then the other metadata entries. The
    same bytes as ``_file_digest`` reads from the file, so a memory-mapped file is checked
    without loading it."""
    import torch

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
    from safetensors.torch import _TYPES

    for st_name, torch_dtype in _TYPES.items():
        if torch_dtype == dtype:
            return st_name
    raise ValueError(f"dtype {dtype} has no safetensors name")


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
        raise CorruptCheckpointError(path, f"unreadable safetensors header: {_one_line(err)}") from err
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
        raise CorruptCheckpointError(path, f"malformed safetensors header entry: {_one_line(err)}") from err
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
            _note_undigested(path)
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
        _note_undigested(path)
        return
    if key is not None and key in _verified:
        return
    if tensors_digest(tensors, meta) != want:
        raise CorruptCheckpointError(path, "content does not match its sha256 digest (damaged after it was "
                                           "written)")
    if key is not None:
        _verified.add(key)


def file_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sidecar(path: str | os.PathLike) -> str:
    """Where the sha256 of the file at ``path`` is kept: ``<path>.sha256``."""
    root, query = split_query(path)
    return root + SIDECAR_SUFFIX + query


def write_sidecar(path: str | os.PathLike, digest: str) -> None:
    """Record ``digest`` (hex sha256 of the file at ``path``) beside it, written whole, in
    ``sha256sum`` format: ``sha256sum -c <name>.sha256`` in that folder checks the file too."""
    write_text(sidecar(path), f"{digest}  {name(path)}\n")


def write_with_sidecar(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` whole (``write_bytes``), then its sha256 beside it (``write_sidecar``)."""
    write_bytes(path, data)
    write_sidecar(path, file_digest(data))


def read_checked(path: str | os.PathLike, what: str = "file") -> bytes:
    """A file's bytes, checked against its ``.sha256`` sidecar when it has one (a file from
    before sidecars existed is returned unchecked, said once per process); DamagedFileError
    when they differ."""
    data = read_bytes(path, what)
    recorded = sidecar(path)
    if not exists(recorded):
        _note_undigested(path)
        return data
    text = read_text(recorded).split()
    if not text or text[0] != file_digest(data):
        raise DamagedFileError(path, f"content does not match the sha256 in {name(recorded)} (damaged after it "
                                     f"was written)")
    return data


# -- safetensors -------------------------------------------------------------------------------


def write_tensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike,
                  metadata: Mapping[str, str] | None = None) -> str:
    """Write safetensors to a local path or a URI; the file appears whole or not at all and
    carries the sha256 of its content in its metadata (``DIGEST_KEY``, ``tensors_digest``)."""
    from safetensors.torch import save, save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {k: v for k, v in (metadata or {}).items() if k != DIGEST_KEY}
    meta[DIGEST_KEY] = tensors_digest(tensors, meta)
    fs, p = filesystem(path)
    if is_local(fs):
        # streamed to disk: no second copy of a large checkpoint in memory
        tmp, p = _local_atomic_target(p)
        try:
            save_file(tensors, tmp, metadata=meta)
        except BaseException:
            os.unlink(tmp)
            raise
        _publish_local(tmp, p)
    else:
        write_bytes(path, save(tensors, metadata=meta))
    return str(path)


def read_tensors(path: str | os.PathLike, expected: Mapping[str, torch.Tensor] | None = None) -> StateDict:
    """Read safetensors from a local path or a URI, checked against the digest the file carries
    (CorruptCheckpointError, a DamagedFileError, naming the file when unreadable or changed);
    with ``expected``, check names and shapes too."""
    from safetensors import SafetensorError
    from safetensors.torch import load, load_file

    from pipeline.task_vectors import check_tensors

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
        raise CorruptCheckpointError(path, f"not a readable safetensors file: {_one_line(err)}") from err
    _verify_loaded(path, tensors, meta, key)
    if expected is not None:
        check_tensors(tensors, expected, shown(path))
    return tensors


def open_tensors(path: str | os.PathLike, expected: Mapping[str, torch.Tensor] | None = None
                 ) -> Mapping[str, torch.Tensor]:
    """A safetensors file for reading: memory-mapped when local (``task_vectors.MappedTensors``),
    read whole into memory from an object store. Checked against its digest either way: the
    mapped file in one streamed pass before it is handed out (once per process per path, size
    and mtime)."""
    fs, p = filesystem(path)
    if is_local(fs):
        from pipeline.task_vectors import open_tensors as open_mapped

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
