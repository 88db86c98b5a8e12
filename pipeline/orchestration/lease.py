"""Leases on fine-tuning units, so that drivers sharing one storage share the work.

A lease is a small JSON file ``<unit folder>/lease.json`` (owner, expiry) created atomically:
with ``O_CREAT | O_EXCL`` on a local or shared filesystem, and on object stores by writing it
when absent and reading it back (pyarrow offers no conditional put, so two drivers racing within
one round trip may both train the unit: the writes are atomic and content-addressed, so the cost
is time, never a wrong file). The holder renews its leases while its units train; a driver that
dies stops renewing, and after ``ttl_s`` another driver takes the unit over and resumes it from
its last stored epoch.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass, field

from pipeline import storage

LEASE_FILE = "lease.json"


@dataclass
class Leases:
    """The leases one driver holds; ``owner`` names it in the files (host, pid, a random tag)."""

    ttl_s: float = 600.0
    owner: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}")
    held: set[str] = field(default_factory=set)

    def _path(self, folder: str) -> str:
        return storage.join(folder, LEASE_FILE)

    def _record(self) -> str:
        return json.dumps({"owner": self.owner, "expires": time.time() + self.ttl_s})

    def holder(self, folder: str) -> dict | None:
        """The live lease on ``folder`` (None when there is none, it expired or it is unreadable)."""
        path = self._path(folder)
        if not storage.exists(path):
            return None
        try:
            got = json.loads(storage.read_text(path))
            expires, owner = float(got["expires"]), str(got["owner"])
        except (ValueError, KeyError, TypeError, OSError):
            return None
        return {"owner": owner, "expires": expires} if expires > time.time() else None

    def acquire(self, folder: str) -> bool:
        """Take the unit's lease if nobody else holds a live one."""
        if folder in self.held:
            return True
        current = self.holder(folder)
        if current is not None and current["owner"] != self.owner:
            return False
        path = self._path(folder)
        if current is None and storage.exists(path):
            storage.delete(path)  # expired or damaged: free for whoever creates it first
        if not storage.is_uri(path):
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as f:
                f.write(self._record())
        else:
            storage.write_text(path, self._record())
            current = self.holder(folder)
            if current is None or current["owner"] != self.owner:
                return False
        self.held.add(folder)
        return True

    def renew(self) -> None:
        """Push the expiry of every held lease ``ttl_s`` ahead (call well within ``ttl_s``)."""
        for folder in list(self.held):
            storage.write_text(self._path(folder), self._record())

    def release(self, folder: str) -> None:
        if folder in self.held:
            self.held.discard(folder)
            current = self.holder(folder)
            if current is None or current["owner"] == self.owner:
                storage.delete(self._path(folder))

    def release_all(self) -> None:
        for folder in list(self.held):
            self.release(folder)
