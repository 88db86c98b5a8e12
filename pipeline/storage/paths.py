"""Where a run's files are: local paths and pyarrow URIs (s3://, gs://, file://) alike.

A URI may carry pyarrow's filesystem options as a query string, which is how an S3-compatible
server (MinIO, Ceph, a test server) is reached -- pyarrow ignores ``AWS_ENDPOINT_URL``:
``s3://bucket/runs?endpoint_override=host:9000&scheme=http&region=us-east-1``. ``join`` keeps the
query at the end, so every path under such a storage carries it. Credentials belong in the
environment (``AWS_ACCESS_KEY_ID``...), never in a file this package writes; ``shown`` redacts any
a URI carries before it is named in a message.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs


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


def is_local(fs: pafs.FileSystem) -> bool:
    return isinstance(fs, pafs.LocalFileSystem)


def shown(path: str | os.PathLike) -> str:
    """A path or URI as error messages name it: credentials in a URI (``s3://KEY:SECRET@...``,
    ``?secret_key=...``) become ``***``, since messages end up in logs and ``failures.json``."""
    return redact(str(path))


# user:password@ (the password may hold unescaped '/' or '+', as AWS secret keys do) or user@
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?:[^/@\s:]*:[^@\s]*|[^/@\s:]+)@")
_SECRET_PARAM = re.compile(
    r"(?P<key>[?&;](?:[A-Za-z0-9_-]*(?:secret|token|password|passwd|credential|signature|access_key)"
    r"[A-Za-z0-9_-]*|sig|key))=(?P<value>[^&;#\s]*)", re.IGNORECASE)


def redact(value: Any) -> Any:
    """``value`` (a string, or lists/dicts of them) with URI credentials replaced by ``***``."""
    if isinstance(value, str):
        value = _USERINFO.sub(lambda m: f"{m['scheme']}***@", value)
        return _SECRET_PARAM.sub(lambda m: f"{m['key']}=***", value)
    if isinstance(value, Mapping):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    return value
