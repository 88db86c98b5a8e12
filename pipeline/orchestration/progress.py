"""Progress a person can follow: live lines in a terminal, timestamped lines in a log, and
``<storage>/<name>/progress.json`` for ``jobs/status.py``.

Three parts, joined by plain dicts:

- ``ProgressState``: the fine-tuning units of one plan and where each stands (cached, queued,
  running, done, failed), with the plan's GPU-hour estimate per unit. Pure: no Ray, no I/O, the
  time is always passed in, so its transitions and renderings are tested without a cluster.
- Reporting from the Train workers: rank 0 builds a ``WorkerReporter`` (``worker_reporter``)
  that sends one small dict per finished epoch (task, epoch, images/s, ETA) to an inbox actor
  the driver owns (``Inbox``, named per run inside the driver's job namespace, so two drivers on
  one cluster never share it). Sending is fire-and-forget and every error is swallowed: progress
  never fails or slows a unit.
- ``Monitor``: the driver side. A daemon thread drains the inbox, redraws the display (a TTY:
  one tqdm line per running unit plus an overall line; otherwise timestamped lines at most every
  ``PLAIN_EVERY_S``) and writes ``progress.json`` through ``pipeline.storage`` (atomic, local or
  URI) when a unit starts or ends and at least every ``FILE_EVERY_S`` while units run.

``status_lines`` reads a run folder back. Which units are left is derived from the checkpoints
in storage *now*, for the units the run's plan recorded (``build_plan``'s own test: a unit is
done when every output's checkpoint is there), so an interrupted run lists exactly the units a
rerun would fine-tune; with no progress.json (or ``replan=True``) it rebuilds the plan from the
run's config.yaml instead, which needs the data to compute the checkpoint keys.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, TextIO

from pipeline import storage

PROGRESS_FILE = "progress.json"
FORMAT_VERSION = 1
# plain (non-TTY) output: one status block at most this often; progress.json heartbeat
PLAIN_EVERY_S = 30.0
FILE_EVERY_S = 30.0
# how old a "running" progress.json may be before status calls its driver gone
STALE_AFTER_S = 3 * FILE_EVERY_S

Clock = Callable[[], float]

# unit states
CACHED, QUEUED, RUNNING, DONE, FAILED = "cached", "queued", "running", "done", "failed"


def unit_id(folder: str, mode: str, outputs: list[int] | tuple[int, ...]) -> str:
    """Names one planned unit across processes: its checkpoint folder's key, mode and outputs."""
    return f"{storage.name(folder)}:{mode}:{','.join(str(t) for t in outputs)}"


def inbox_name(run: str) -> str:
    return f"progress:{run}"


# --------------------------------------------------------------------------------------------
# state


@dataclass
class UnitProgress:
    id: str
    label: str
    scenario: str
    mode: str
    outputs: list[int]
    key: str                           # checkpoint folder name under <storage>/checkpoints
    cached: list[int]                  # outputs in storage when the run started
    gpu_h: float | None                # the plan's estimate for what was left (None: size unknown)
    status: str = QUEUED
    error: str = ""
    started_at: float | None = None
    ended_at: float | None = None
    report: dict[str, Any] = field(default_factory=dict)  # the last worker message

    @property
    def fraction(self) -> float:
        """Share of this run's work on the unit that is done (from the worker's last report)."""
        if self.status in (DONE, CACHED):
            return 1.0
        return float(self.report.get("fraction", 0.0)) if self.status == RUNNING else 0.0


@dataclass
class ProgressState:
    run: str
    units: list[UnitProgress]
    train_rate: float                  # assumed images/s per GPU (the plan's)
    eval_gpu_h: float                  # the plan's evaluation estimate (after fine-tuning)
    started_at: float
    state: str = "running"             # running | finished | interrupted
    updated_at: float = 0.0
    driver: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_plan(cls, plan: Any, now: float) -> "ProgressState":
        """Every unit of the plan; those with all checkpoints cached start (and stay) cached."""
        train_rate = plan.throughput()[0]
        units = []
        for u in plan.units:
            n = u.images_left(plan.cfg)
            units.append(UnitProgress(
                id=unit_id(u.folder, u.unit.mode, u.unit.outputs), label=u.unit.label,
                scenario=u.unit.scenario.label, mode=u.unit.mode, outputs=list(u.unit.outputs),
                key=storage.name(u.folder), cached=sorted(u.cached),
                gpu_h=None if n is None else n / train_rate / 3600,
                status=CACHED if u.done else QUEUED))
        return cls(run=plan.cfg.name, units=units, train_rate=train_rate,
                   eval_gpu_h=plan.gpu_hours_left()[1], started_at=now, updated_at=now,
                   driver={"host": socket.gethostname(), "pid": os.getpid()})

    # transitions (index = the unit's position in the plan)
    def started(self, i: int, now: float) -> None:
        u = self.units[i]
        u.status, u.started_at, u.error, u.report = RUNNING, now, "", {}

    def finished(self, i: int, now: float) -> None:
        u = self.units[i]
        u.status, u.ended_at = DONE, now

    def failed(self, i: int, error: str, now: float) -> None:
        u = self.units[i]
        u.status, u.error, u.ended_at = FAILED, error, now

    def reported(self, uid: str, message: dict[str, Any]) -> bool:
        """A worker's message about a running unit (or one that just ended: its last epoch's
        report may arrive after the unit's result); ignored for units not started in this run.
        Returns whether it was used."""
        for u in self.units:
            if u.id == uid and u.status in (RUNNING, DONE) and u.started_at is not None:
                u.report = dict(message)
                return True
        return False

    def close(self, now: float) -> None:
        """The fine-tuning loop ended: finished when no unit is queued or running, else interrupted."""
        self.state = "interrupted" if any(u.status in (QUEUED, RUNNING) for u in self.units) else "finished"
        self.updated_at = now

    def count(self, status: str) -> int:
        return sum(u.status == status for u in self.units)

    def hours(self) -> tuple[float, float, float]:
        """(done, left, failed) GPU-hours of this run's fine-tuning, from the plan's estimate;
        a running unit counts by its reported fraction. Units of unknown size count as 0."""
        done = left = failed = 0.0
        for u in self.units:
            if u.status == CACHED or u.gpu_h is None:
                continue
            if u.status == FAILED:
                failed += u.gpu_h
                continue
            done += u.gpu_h * u.fraction
            left += u.gpu_h * (1.0 - u.fraction)
        return done, left, failed

    # progress.json
    def to_json(self) -> dict[str, Any]:
        return {
            "version": FORMAT_VERSION, "run": self.run, "state": self.state,
            "started_at": self.started_at, "updated_at": self.updated_at, "driver": self.driver,
            "estimate": {"assumed_train_images_per_gpu_s": self.train_rate, "eval_gpu_h": self.eval_gpu_h},
            "units": [{"id": u.id, "label": u.label, "scenario": u.scenario, "mode": u.mode,
                       "outputs": u.outputs, "key": u.key, "cached": u.cached, "gpu_h": u.gpu_h,
                       "status": u.status, "error": u.error, "started_at": u.started_at,
                       "ended_at": u.ended_at, "report": u.report} for u in self.units],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = PROGRESS_FILE) -> "ProgressState":
        try:
            if data.get("version") != FORMAT_VERSION:
                raise ValueError(f"version {data.get('version')!r}, this code reads {FORMAT_VERSION}")
            units = [UnitProgress(id=str(u["id"]), label=str(u["label"]), scenario=str(u["scenario"]),
                                  mode=str(u["mode"]), outputs=[int(t) for t in u["outputs"]], key=str(u["key"]),
                                  cached=[int(t) for t in u["cached"]],
                                  gpu_h=None if u["gpu_h"] is None else float(u["gpu_h"]),
                                  status=str(u["status"]), error=str(u.get("error", "")),
                                  started_at=u.get("started_at"), ended_at=u.get("ended_at"),
                                  report=dict(u.get("report") or {})) for u in data["units"]]
            est = data["estimate"]
            return cls(run=str(data["run"]), units=units, train_rate=float(est["assumed_train_images_per_gpu_s"]),
                       eval_gpu_h=float(est["eval_gpu_h"]), started_at=float(data["started_at"]),
                       state=str(data["state"]), updated_at=float(data["updated_at"]),
                       driver=dict(data.get("driver") or {}))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"{where}: not a progress file this version can read ({type(err).__name__}: {err})") \
                from None


def write_progress(run_dir: str, state: ProgressState) -> str:
    """Write ``<run_dir>/progress.json`` atomically (a reader sees the old or the new file, whole)."""
    path = storage.join(run_dir, PROGRESS_FILE)
    storage.write_text(path, _progress_text(state))
    return path


def _progress_text(state: ProgressState) -> str:
    return json.dumps(state.to_json(), indent=1, sort_keys=True)


def read_progress(run_dir: str) -> ProgressState | None:
    path = storage.join(run_dir, PROGRESS_FILE)
    if not storage.exists(path):
        return None
    try:
        data = json.loads(storage.read_text(path))
    except ValueError as err:
        raise ValueError(f"{storage.shown(path)}: not JSON ({err})") from None
    return ProgressState.from_json(data, storage.shown(path))


# --------------------------------------------------------------------------------------------
# rendering


def clock_text(seconds: float | None) -> str:
    """0:04:05 / 1d 2:03:04; '?' when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    days, s = divmod(s, 86400)
    text = f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{days}d {text}" if days else text


def hours_text(h: float) -> str:
    """GPU-hours with two decimals, three under 1 h (a demo's whole run is ~0.01 h)."""
    return f"{h:.2f}" if h >= 1 else f"{h:.3f}"


def _bar(fraction: float, width: int = 10) -> str:
    filled = int(round(max(0.0, min(1.0, fraction)) * width))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def unit_line(u: UnitProgress, now: float, named: bool = True) -> str:
    """One running unit: scenario, mode, task t/T, epoch e/E, images/s, ETA."""
    head = f"{u.scenario} {u.mode}" if named else ""
    r = u.report
    if not r:
        since = clock_text(now - u.started_at) if u.started_at is not None else "?"
        return f"{head}{': ' if named else ''}starting (waiting for its Train workers, {since})"
    task = f"all {r.get('T', '?')} tasks" if u.mode == "joint" else f"task {r.get('task', 0) + 1}/{r.get('T', '?')}"
    if r.get("phase") == "starting":
        return f"{head}{': ' if named else ''}{task} starting"
    eta = r.get("eta_s")
    if eta is not None:
        eta = max(0.0, float(eta) - (now - float(r.get("time", now))))
    return (f"{head}{': ' if named else ''}{task} epoch {r.get('epoch', '?')}/{r.get('epochs', '?')} {_bar(u.fraction)} "
            f"{float(r.get('images_per_s', 0.0)):.0f} img/s, ETA {clock_text(eta)}, loss {float(r.get('loss', math.nan)):.4g}")


def overall_line(s: ProgressState, now: float) -> str:
    """Units done/total and GPU-hours done/left from the plan's estimate."""
    total = len(s.units)
    done, cached = s.count(DONE), s.count(CACHED)
    parts = [f"{s.count(RUNNING)} running", f"{s.count(QUEUED)} queued"]
    if s.count(FAILED):
        parts.append(f"{s.count(FAILED)} failed")
    if cached:
        parts.append(f"{cached} cached before")
    h_done, h_left, _ = s.hours()
    return (f"units {done + cached}/{total} done ({', '.join(parts)}); fine-tuning GPU-h (est.) "
            f"{hours_text(h_done)} done, {hours_text(h_left)} left, +{hours_text(s.eval_gpu_h)} evaluation after; "
            f"elapsed {clock_text(now - s.started_at)}")


def status_block(s: ProgressState, now: float) -> list[str]:
    running = sorted((u for u in s.units if u.status == RUNNING), key=lambda u: u.started_at or 0.0)
    return [overall_line(s, now)] + [unit_line(u, now) for u in running]


def stamp(now: float) -> str:
    return datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


class PlainDisplay:
    """Timestamped lines for logs (``ray job logs -f``, a pipe): a status block at most every
    ``every_s``; notes (a unit ended) right away, one line each."""

    def __init__(self, out: TextIO, every_s: float = PLAIN_EVERY_S) -> None:
        self.out, self.every_s = out, every_s
        self.last: float | None = None

    def show(self, lines: list[str], now: float, force: bool = False) -> bool:
        if not force and self.last is not None and now - self.last < self.every_s:
            return False
        self.last = now
        for i, line in enumerate(lines):
            self.out.write(f"[{stamp(now)}] {'progress' if i == 0 else '  unit'}: {line}\n")
        self.out.flush()
        return True

    def note(self, text: str, now: float) -> None:
        self.out.write(f"[{stamp(now)}] {text}\n")
        self.out.flush()

    def wrap(self, log: Callable[[str], None]) -> Callable[[str], None]:
        return log

    def close(self) -> None:
        pass


class TtyDisplay:
    """Live lines in a terminal: line 0 the overall line, then one per running unit (tqdm keeps
    them in place; other output goes above them through ``wrap``/``note``)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.lines: list[Any] = []

    def show(self, lines: list[str], now: float, force: bool = False) -> bool:
        import shutil

        from tqdm import tqdm

        # trimmed here: a wrapped line would break tqdm's cursor arithmetic
        size = shutil.get_terminal_size((120, 24))
        width = max(20, size.columns - 1)
        while len(self.lines) < len(lines):
            self.lines.append(tqdm(total=0, bar_format="{desc}", position=len(self.lines), file=self.out,
                                   ncols=width, nrows=max(size.lines, 4), leave=not self.lines))
        for i, bar in enumerate(self.lines):
            bar.ncols = width
            bar.set_description_str(lines[i][:width] if i < len(lines) else "", refresh=True)
        return True

    def note(self, text: str, now: float) -> None:
        from tqdm import tqdm

        tqdm.write(f"[{stamp(now)}] {text}", file=self.out)

    def wrap(self, log: Callable[[str], None]) -> Callable[[str], None]:
        """``log`` that clears the live lines, writes, and lets them redraw below."""
        from tqdm import tqdm

        def quiet_log(text: str) -> None:
            with tqdm.external_write_mode(file=self.out):
                log(text)
        return quiet_log

    def close(self) -> None:
        for bar in reversed(self.lines):  # (line 0 stays: the final overall line)
            bar.close()
        self.lines = []


# --------------------------------------------------------------------------------------------
# worker side


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
        import ray

        from pipeline.storage import CheckpointStore

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
                import ray

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
        import ray

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
            text = _progress_text(self.state)
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
                    import ray

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


# --------------------------------------------------------------------------------------------
# status of a run folder


@dataclass
class UnitNow:
    """A unit of the run's plan and its checkpoints in storage now."""

    label: str
    outputs: list[int]
    cached_now: list[int]
    recorded: UnitProgress | None = None   # what progress.json last said (None: replanned)

    @property
    def done(self) -> bool:
        return len(self.cached_now) == len(self.outputs)

    def was(self, status: str) -> bool:
        return self.recorded is not None and self.recorded.status == status


def units_now(run_dir: str, state: ProgressState) -> list[UnitNow]:
    """The recorded plan's units with what their checkpoint folders hold now (the same test as
    ``build_plan``: ``CheckpointStore.has`` per output, headers and sizes, not digests)."""
    from pipeline.storage import CheckpointStore

    root = storage.join(storage.parent(run_dir), "checkpoints")
    out = []
    for u in state.units:
        store = CheckpointStore(storage.join(root, u.key))
        out.append(UnitNow(u.label, u.outputs, [t for t in u.outputs if store.has(t)], u))
    return out


def units_replanned(cfg: Any) -> tuple[list[UnitNow], int]:
    """The units of ``build_plan(cfg)`` (keys from the data under cfg.data_root); and how many of
    them have an unknown cache state (their data is not here)."""
    from pipeline.orchestration.plan import build_plan

    plan = build_plan(cfg)
    units = [UnitNow(u.unit.label, list(u.unit.outputs), sorted(u.cached)) for u in plan.units]
    return units, sum(u.data == "unknown" for u in plan.units)


def load_run_config(run_dir: str, data_root: str | None = None) -> Any:
    """The run's config.yaml with storage set to where the run folder is (and data_root if given)."""
    from dataclasses import replace

    import yaml

    from pipeline.config import from_dict

    path = storage.join(run_dir, "config.yaml")
    if not storage.exists(path):
        raise FileNotFoundError(f"{storage.shown(path)}: no such file (is {storage.shown(run_dir)} a run folder?)")
    cfg = from_dict(yaml.safe_load(storage.read_text(path)) or {})
    cfg = replace(cfg, storage=storage.parent(run_dir), name=storage.name(run_dir))
    return replace(cfg, data_root=data_root) if data_root else cfg


def status_lines(run_dir: str, now: float, *, replan: bool = False, data_root: str | None = None) -> list[str]:
    """Where a run stands: units done, running, failed and left, with the source of each figure."""
    state = read_progress(run_dir)
    lines = [f"run {storage.name(run_dir)!r} at {storage.shown(run_dir)}"]
    live = False
    if state is not None:
        age = max(0.0, now - state.updated_at)  # (another host's clock may be ahead)
        live = state.state == "running" and age <= STALE_AFTER_S
        said = {"running": "fine-tuning", "finished": "fine-tuning finished",
                "interrupted": "interrupted (the driver stopped with units left)"}.get(state.state, state.state)
        if state.state == "running" and not live:
            said = (f"stopped: progress.json says fine-tuning, but it was not updated for {clock_text(age)} "
                    f"(the driver writes it every {FILE_EVERY_S:.0f} s; it was killed or lost)")
        driver = state.driver
        lines.append(f"state: {said}; last update {stamp(state.updated_at)} ({clock_text(age)} ago) "
                     f"by {driver.get('host', '?')} pid {driver.get('pid', '?')}, started {stamp(state.started_at)}")
    cfg = None
    try:
        cfg = load_run_config(run_dir, data_root)
    except (FileNotFoundError, ValueError) as err:
        lines.append(f"(no config: {err})")
    if state is None or replan:
        if cfg is None:
            lines.append("nothing to report: neither progress.json nor config.yaml can be read")
            return lines
        units, unknown = units_replanned(cfg)
        source = ("the plan rebuilt from config.yaml (data_root "
                  f"{cfg.data_root}) and the checkpoints in storage now"
                  + ("" if state is not None else "; this run wrote no progress.json (it never fine-tuned, or "
                     "predates it)"))
        if unknown:
            source += (f"; {unknown} units' data is not found here, so their checkpoint keys and cache state are "
                       "unknown (pass --data-root, or read progress.json without --replan)")
    else:
        units = units_now(run_dir, state)
        source = ("the units this run's plan recorded in progress.json, checked against the checkpoints in "
                  "storage now")
    lines.append(f"source: {source}")

    done, running, failed, left = [], [], [], []
    for u in units:
        if u.done:
            done.append(u)
        elif live and u.was(RUNNING):
            running.append(u)
        elif u.was(FAILED):
            failed.append(u)
        else:
            left.append(u)
    lines.append(f"units: {len(units)} in the plan: {len(done)} done, {len(running)} running, "
                 f"{len(failed)} failed, {len(left)} left")
    if state is not None and not replan:
        total = sum(u.gpu_h or 0.0 for u in state.units if u.status != CACHED)
        h_left = sum((u.recorded.gpu_h or 0.0) * (1.0 - (u.recorded.fraction if live and u.was(RUNNING) else 0.0))
                     for u in units if not u.done and u.recorded is not None and u.recorded.status != CACHED)
        lines.append(f"fine-tuning GPU-h (the plan's estimate at start): {hours_text(total)} for this run, "
                     f"{hours_text(h_left)} left; evaluation {hours_text(state.eval_gpu_h)}")
    if cfg is not None:
        from pipeline.orchestration.plan import scenario_done

        with_results = [s.label for s in cfg.scenarios if scenario_done(run_dir, s)]
        lines.append(f"scenarios with results: {len(with_results)}/{len(cfg.scenarios)}")

    def tasks(u: UnitNow) -> str:
        return f"{len(u.cached_now)}/{len(u.outputs)} tasks cached"

    if running:
        lines.append("running (at the last update):")
        lines += [f"  {u.label}: {unit_line(u.recorded, now, named=False)}" for u in running if u.recorded]
    if failed:
        lines.append("failed (a rerun retries them):")
        lines += [f"  {u.label} ({tasks(u)}): {u.recorded.error if u.recorded else ''}" for u in failed]
    if left:
        what = "left (queued)" if live else "left (a rerun fine-tunes these, and the failed ones)"
        lines.append(f"{what}:")
        for u in left:
            note = ""
            if u.was(RUNNING) and u.recorded is not None:
                r = u.recorded.report
                where = f" in task {r['task'] + 1}, epoch {r.get('epoch', 0)}/{r.get('epochs', '?')} done" \
                    if "task" in r and "epoch" in r else ""
                note = f"; was running at the last update{where}"
            lines.append(f"  {u.label} ({tasks(u)}{note})")
    if not live and not running and not failed and not left:
        lines.append("every unit is fine-tuned")
    return lines
