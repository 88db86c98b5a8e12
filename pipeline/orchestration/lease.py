"""Leases on fine-tuning units, so that drivers sharing one storage share the work.

A lease is a small JSON file ``<unit folder>/lease.json`` (owner, expiry). On a local or shared
filesystem every look-and-write (take, take over an expired one, renew, release) holds an
exclusive lock on the folder's ``.leases.lock`` (``storage.locked``), so two drivers never both
hold a unit, also when both find the same expired lease. On object stores it is written when
absent and read back (pyarrow offers no conditional put, so two drivers racing within one round
trip may both train the unit: the writes are atomic and content-addressed, so the cost is time,
never a wrong file). The holder renews its leases while its units train; a driver that
dies stops renewing, and after ``ttl_s`` another driver takes the unit over and resumes it from
its last stored epoch; a lease whose holder ran on this host under a process id that no longer
exists is stale at once (a killed driver rerun on the same machine does not wait out the TTL).

A lease covers one Train run: a folder shared by several runs (a scenario's independent tasks,
packed into runs by ``plan.pack_independent``) has one lease file per run, ``lease-<part>.json``,
so that the first run to finish releases only its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass, field

from pipeline import storage

LEASE_FILE = "lease.json"
LOCK_FILE = ".leases.lock"


@dataclass
class Leases:
    """The leases one driver holds; ``owner`` names it in the files (host, pid, a random tag)."""

    ttl_s: float = 600.0
    owner: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}")
    held: dict[str, tuple[str, str]] = field(default_factory=dict)  # lease path -> (folder, part)

    def _path(self, folder: str, part: str = "") -> str:
        return storage.join(folder, f"lease-{part}.json" if part else LEASE_FILE)

    def _record(self) -> str:
        return json.dumps({"owner": self.owner, "expires": time.time() + self.ttl_s})

    def holder(self, folder: str, part: str = "") -> dict | None:
        """The live lease on ``folder`` (None when there is none, it expired, its holder died on
        this host, or it is unreadable)."""
        path = self._path(folder, part)
        if not storage.exists(path):
            return None
        try:
            got = json.loads(storage.read_text(path))
            expires, owner = float(got["expires"]), str(got["owner"])
        except (ValueError, KeyError, TypeError, OSError):
            return None
        if expires <= time.time() or _dead_here(owner):
            return None
        return {"owner": owner, "expires": expires}

    def acquire(self, folder: str, part: str = "") -> bool:
        """Take the lease on ``folder`` (one run's ``part`` of it) if nobody else holds a live one."""
        path = self._path(folder, part)
        if path in self.held:
            return True
        with _exclusive(path):
            current = self.holder(folder, part)
            if current is not None and current["owner"] != self.owner:
                return False
            # none, expired or damaged: ours (an atomic replace; under the lock on a filesystem)
            storage.write_text(path, self._record())
        if storage.is_uri(path):
            current = self.holder(folder, part)
            if current is None or current["owner"] != self.owner:
                return False
        self.held[path] = (folder, part)
        return True

    def renew(self) -> None:
        """Push the expiry of every held lease ``ttl_s`` ahead (call well within ``ttl_s``). A
        lease another driver took over meanwhile (this one missed its expiry) is left to it."""
        for path, (folder, part) in list(self.held.items()):
            with _exclusive(path):
                current = self.holder(folder, part)
                if current is not None and current["owner"] != self.owner:
                    del self.held[path]
                    continue
                storage.write_text(path, self._record())

    def release(self, folder: str, part: str = "") -> None:
        path = self._path(folder, part)
        if self.held.pop(path, None) is not None:
            with _exclusive(path):
                current = self.holder(folder, part)
                if current is None or current["owner"] == self.owner:
                    storage.delete(path)

    def release_all(self) -> None:
        for folder, part in list(self.held.values()):
            self.release(folder, part)


def _exclusive(path: str) -> contextlib.AbstractContextManager:
    """An exclusive lock on the lease's folder (``.leases.lock``) on a local or shared filesystem;
    none on an object store, which has no locks."""
    if storage.is_uri(path):
        return contextlib.nullcontext()
    return storage.locked(os.path.join(os.path.dirname(path) or ".", LOCK_FILE))


def _dead_here(owner: str) -> bool:
    """Whether ``owner`` (``host:pid:tag``) names a process of this host that no longer runs."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # someone else's process: alive
        return False
    return False
