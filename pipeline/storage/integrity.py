"""Every file a run writes proves itself; a damaged one is named, moved aside and computed again.

A safetensors file carries its own digest (``pipeline.storage.tensors``); a results Parquet part
has its sha256 beside it in ``<part>.sha256`` (``write_with_sidecar``/``read_checked``: the
digest cannot live inside the bytes it covers). A file that fails raises ``DamagedFileError``
(one line naming it); the layers that decide what is cached (``CheckpointStore``,
``results.unit_done``) move it aside to ``<name>.damaged-<UTC time>`` (``move_aside``: kept,
never deleted) and let the run compute it again. Files written before digests existed are read
unverified, said once per process.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time

import pyarrow.fs as pafs

# writes go through the module (not names bound here), so a test that makes storage read-only
# by replacing files.write_bytes/write_text reaches these writes too
from pipeline.storage import files
from pipeline.storage.files import exists, read_bytes, read_text
from pipeline.storage.paths import filesystem, is_local, name, shown, split_query

# the safetensors ``__metadata__`` key holding a file's content digest (``write_tensors``)
DIGEST_KEY = "sha256"
# a Parquet part's digest lives beside it, in ``sha256sum`` format: ``sha256sum -c`` checks it
SIDECAR_SUFFIX = ".sha256"
_told_undigested = False


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


def say(line: str) -> None:
    """One line for the person running this (stderr; a Ray worker's goes to its log)."""
    print(line, file=sys.stderr, flush=True)


def note_undigested(path: str | os.PathLike) -> None:
    """Files written before digests existed are read unverified: said once per process."""
    global _told_undigested
    if not _told_undigested:
        _told_undigested = True
        say(f"note: {shown(path)} carries no content digest (written before files had one): read without "
            f"verification; other such files are not named")


def one_line(err: BaseException) -> str:
    """An exception's message on one line (its type's name when it has none)."""
    return " ".join(str(err).split()) or type(err).__name__


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


def file_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sidecar(path: str | os.PathLike) -> str:
    """Where the sha256 of the file at ``path`` is kept: ``<path>.sha256``."""
    root, query = split_query(path)
    return root + SIDECAR_SUFFIX + query


def write_sidecar(path: str | os.PathLike, digest: str) -> None:
    """Record ``digest`` (hex sha256 of the file at ``path``) beside it, written whole, in
    ``sha256sum`` format: ``sha256sum -c <name>.sha256`` in that folder checks the file too."""
    files.write_text(sidecar(path), f"{digest}  {name(path)}\n")


def write_with_sidecar(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` whole (``write_bytes``), then its sha256 beside it (``write_sidecar``)."""
    files.write_bytes(path, data)
    write_sidecar(path, file_digest(data))


def read_checked(path: str | os.PathLike, what: str = "file") -> bytes:
    """A file's bytes, checked against its ``.sha256`` sidecar when it has one (a file from
    before sidecars existed is returned unchecked, said once per process); DamagedFileError
    when they differ."""
    data = read_bytes(path, what)
    recorded = sidecar(path)
    if not exists(recorded):
        note_undigested(path)
        return data
    text = read_text(recorded).split()
    if not text or text[0] != file_digest(data):
        raise DamagedFileError(path, f"content does not match the sha256 in {name(recorded)} (damaged after it "
                                     f"was written)")
    return data
