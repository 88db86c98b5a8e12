"""The fine-tuning units of one plan and where each stands, and ``progress.json``.

``ProgressState``: the units (cached, queued, running, done, failed), with the plan's GPU-hour
estimate per unit and each running unit's last worker report. Pure: no Ray, no display, the
time is always passed in, so its transitions are tested without a cluster. ``write_progress``
writes it to ``<storage>/<name>/progress.json`` through ``pipeline.storage`` (atomic, local or
URI) for ``jobs/status.py``; ``read_progress`` reads it back.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from typing import Any, Callable

from pipeline import storage

PROGRESS_FILE = "progress.json"
FORMAT_VERSION = 1
# progress.json heartbeat while units run
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
    storage.write_text(path, progress_text(state))
    return path


def progress_text(state: ProgressState) -> str:
    """The text of progress.json."""
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
