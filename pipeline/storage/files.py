"""Reading and writing whole files on a local folder or a URI, each appearing whole or not at all.

Local writes go through a temp file in the same folder and ``os.replace``; object stores
(``s3://``, ``gs://``) get a single upload of the finished bytes. Readers skip temp files.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pyarrow.fs as pafs

from pipeline.storage.paths import filesystem, is_local, join, shown


@contextlib.contextmanager
def locked(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the local file ``path`` (created if absent and kept: removing
    a lock file another process waits on would break the lock); released on exit, also by a crash."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def exists(path: str | os.PathLike) -> bool:
    fs, p = filesystem(path)
    return fs.get_file_info(p).type == pafs.FileType.File


def mtime_ns(path: str | os.PathLike) -> int | None:
    """When a file was last written (ns since the epoch), or None when there is no file."""
    fs, p = filesystem(path)
    info = fs.get_file_info(p)
    return info.mtime_ns if info.type == pafs.FileType.File else None


def local_atomic_target(p: str) -> tuple[str, str]:
    """A fresh temp file beside ``p`` (same folder, so ``os.replace`` is a rename) and ``p``."""
    os.makedirs(os.path.dirname(p), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(p)}.", suffix=".tmp", dir=os.path.dirname(p))
    os.close(fd)
    return tmp, p


def publish_local(tmp: str, p: str) -> None:
    """Make the finished temp file ``tmp`` the file ``p`` (durably; ``tmp`` is gone afterwards)."""
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
        tmp, p = local_atomic_target(p)
        try:
            with open(tmp, "wb") as fh:
                yield fh
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        publish_local(tmp, p)
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
