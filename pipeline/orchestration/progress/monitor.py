"""Live progress over Ray: the Train workers' per-epoch reports and the driver's monitor.

Rank 0 of a unit's Train workers builds a ``WorkerReporter`` (``worker_reporter``) that sends
one small dict per finished epoch (task, epoch, images/s, ETA) to an inbox actor the driver owns
(``Inbox``, named per run inside the driver's job namespace, so two drivers on one cluster never
share it). Sending is fire-and-forget and every error is swallowed: progress never fails or
slows a unit. ``Monitor`` is the driver side: a daemon thread drains the inbox, redraws the
display and writes ``progress.json`` when a unit starts or ends and at least every
``FILE_EVERY_S`` while units run.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from typing import Any, Callable, Iterator, TextIO

import ray

from pipeline import storage
from pipeline.orchestration.progress.display import PlainDisplay, TtyDisplay, clock_text, overall_line, status_block
from pipeline.orchestration.progress.state import (FILE_EVERY_S, PROGRESS_FILE, Clock, ProgressState, inbox_name,
                                                   progress_text, unit_id)
from pipeline.storage import CheckpointStore


class WorkerReporter:
    """Rank 0's per-epoch reports for one unit: images/s of the last epoch and the unit's ETA.

    ``images[t]`` and ``epochs[t]`` are the training images per epoch and the epochs of output
    ``t``; what the worker found finished at start (``done``) is not part of the ETA.
    """

    def __init__(self, outputs: list[int], num_tasks: int, images: dict[int, int], epochs: dict[int, int],
                 done: set[int], send: Callable[[dict[str, Any]], None], clock: Clock = time.time) -> None:
        self.outputs, self.T, self.images, self.epochs = list(outputs), num_tasks, images, epochs
        self.todo = [t for t in self.outputs if t not in done]
        self.total = sum(images[t] * epochs[t] for t in self.todo)
        self.send, self.clock = send, clock
        self.last = clock()
        first = self.todo[0] if self.todo else self.outputs[-1]
        self._send({"phase": "starting", "task": first, "T": self.T, "time": self.last, "fraction": 0.0})

    def _send(self, message: dict[str, Any]) -> None:
        try:
            self.send(message)
        except Exception:  # noqa: BLE001 - progress must never stop a unit
            pass

    def __call__(self, task: int, epoch: int, loss: float) -> None:
        """``run_chain``'s ``on_epoch_done``: ``epoch`` counts from 0."""
        now = self.clock()
        n, E = self.images.get(task, 0), self.epochs.get(task, 1)
        rate = n / max(now - self.last, 1e-6)
        self.last = now
        later = self.todo[self.todo.index(task) + 1:] if task in self.todo else []
        left = max(0, E - (epoch + 1)) * n + sum(self.images[t] * self.epochs[t] for t in later)
        self._send({"phase": "training", "task": task, "T": self.T, "epoch": epoch + 1, "epochs": E,
                    "images_per_s": rate, "eta_s": left / rate if rate > 0 else None, "loss": float(loss),
                    "fraction": 1.0 - left / self.total if self.total else 1.0, "time": now})


def worker_reporter(cfg: Any, unit: Any, scn: Any, unit_dir: str) -> WorkerReporter | None:
    """The reporter of a Train worker (rank 0) towards this run's inbox; None when there is no
    inbox (no driver monitor, e.g. ``fit_unit`` called on its own) or anything goes wrong."""
    try:
        inbox = ray.get_actor(inbox_name(cfg.name))
        uid = unit_id(unit_dir, unit.mode, unit.outputs)
        joint = unit.mode == "joint"
        train = {t: list(unit.tasks) if joint else [t] for t in unit.outputs}
        images = {t: int(sum(len(scn.train_task_idx[x]) for x in train[t])) for t in unit.outputs}
        epochs = {t: int(scn.epochs_for(None if joint else t)) for t in unit.outputs}
        store = CheckpointStore(unit_dir)
        done = {t for t in unit.outputs if store.has(t)}
        return WorkerReporter(unit.outputs, scn.num_tasks, images, epochs, done,
                              lambda m: inbox.put.remote(uid, m))
    except Exception:  # noqa: BLE001 - progress must never stop a unit
        return None


class Inbox:
    """The driver's mailbox for worker reports (latest per unit); a Ray actor with no CPU."""

    def __init__(self) -> None:
        self.latest: dict[str, dict[str, Any]] = {}

    def put(self, uid: str, message: dict[str, Any]) -> None:
        self.latest[uid] = message

    def take(self) -> dict[str, dict[str, Any]]:
        out, self.latest = self.latest, {}
        return out


# --------------------------------------------------------------------------------------------
# driver side


class Monitor:
    """Progress of ``fit_units``: call ``started``/``finished``/``failed`` from its loop and
    ``close`` at the end; everything else (inbox, display, progress.json) happens here."""

    def __init__(self, cfg: Any, plan: Any, log: Callable[[str], None] = print, *, out: TextIO | None = None,
                 tty: bool | None = None, clock: Clock = time.time, tick_s: float | None = None,
                 use_ray: bool = True) -> None:
        self.out = out or sys.stdout
        self.tty = self.out.isatty() if tty is None else tty
        self.clock = clock
        self.run_dir = storage.join(cfg.storage, cfg.name)
        self.state = ProgressState.from_plan(plan, clock())
        self.display: PlainDisplay | TtyDisplay = TtyDisplay(self.out) if self.tty else PlainDisplay(self.out)
        self.log = self.display.wrap(log)
        self.tick_s = tick_s if tick_s is not None else (1.0 if self.tty else 5.0)
        self.lock = threading.Lock()
        self.dirty = True          # an event to write to progress.json
        self.written: float | None = None
        self.write_error: str | None = None
        self.display_error: str | None = None
        self.inbox = None
        if use_ray:
            try:
                if ray.is_initialized():
                    self.inbox = ray.remote(num_cpus=0)(Inbox).options(
                        name=inbox_name(cfg.name), get_if_exists=True).remote()
            except Exception as err:  # noqa: BLE001 - the run goes on without live epochs
                log(f"progress: no live epoch reports ({type(err).__name__}: {err})")
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> "Monitor":
        self.tick()
        self.thread = threading.Thread(target=self._loop, name="progress", daemon=True)
        self.thread.start()
        return self

    def wrap(self, log: Callable[[str], None]) -> Callable[[str], None]:
        return self.display.wrap(log)

    # the fine-tuning loop's events
    def started(self, i: int) -> None:
        with self.lock:
            self.state.started(i, self.clock())
            self.dirty = True

    def finished(self, i: int) -> None:
        with self.lock:
            now = self.clock()
            self.state.finished(i, now)
            self.dirty = True
            u = self.state.units[i]
            how = f"done in {clock_text(now - u.started_at)}" if u.started_at is not None else \
                "found done (another driver fine-tuned it)"
            self.display.note(f"unit {u.label} {how}; {overall_line(self.state, now)}", now)

    def failed(self, i: int, error: str) -> None:
        with self.lock:
            self.state.failed(i, error, self.clock())
            self.dirty = True

    # the thread
    def _loop(self) -> None:
        while not self.stop.wait(self.tick_s):
            try:
                self.tick()
            except Exception as err:  # noqa: BLE001 - a display problem never stops the run
                self.display_error = f"{type(err).__name__}: {err}"

    def poll(self) -> None:
        if self.inbox is None:
            return
        try:
            got = ray.get(self.inbox.take.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - e.g. the cluster is going down with the driver
            return
        with self.lock:
            for uid, message in got.items():
                self.state.reported(uid, message)

    def tick(self, force: bool = False) -> None:
        self.poll()
        with self.lock:
            now = self.clock()
            self.display.show(status_block(self.state, now), now, force=force)
            due = self.written is None or now - self.written >= FILE_EVERY_S
            if not (self.dirty or due or force):
                return
            self.state.updated_at = now
            self.dirty = False
            self.written = now
            text = progress_text(self.state)
        self._write(text)

    def _write(self, text: str) -> None:
        path = storage.join(self.run_dir, PROGRESS_FILE)
        try:
            storage.write_text(path, text)
        except Exception as err:  # noqa: BLE001 - (read-only storage...): the run goes on, said once
            if self.write_error is None:
                self.log(f"progress: {storage.shown(path)} not written ({type(err).__name__}: {err})")
            self.write_error = str(err)

    def close(self) -> None:
        """Stop the thread, record finished/interrupted, write progress.json a last time."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=30)
        with self.lock:
            self.state.close(self.clock())
            self.dirty = True
        try:
            self.tick(force=True)
        finally:
            self.display.close()
            if self.inbox is not None:
                try:
                    ray.kill(self.inbox)
                except Exception:  # noqa: BLE001
                    pass
                self.inbox = None


@contextlib.contextmanager
def quiet_tune() -> Iterator[None]:
    """Tune without console output. ``RunConfig(verbose=0)`` alone still prints the new output
    engine's experiment box and "View detailed results" lines (Ray 2.x prints them whatever the
    verbosity); the legacy engine at verbosity 0 prints nothing. Results and errors still come
    back through the ResultGrid."""
    old = os.environ.get(LEGACY_TUNE_OUTPUT)
    os.environ[LEGACY_TUNE_OUTPUT] = "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(LEGACY_TUNE_OUTPUT, None)
        else:
            os.environ[LEGACY_TUNE_OUTPUT] = old


LEGACY_TUNE_OUTPUT = "RAY_AIR_NEW_OUTPUT"
