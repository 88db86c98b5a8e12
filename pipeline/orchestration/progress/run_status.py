"""Where a run folder stands, for ``jobs/status.py``.

Which units are left is derived from the checkpoints in storage *now*, for the units the run's
plan recorded in progress.json (``build_plan``'s own test: a unit is done when every output's
checkpoint is there), so an interrupted run lists exactly the units a rerun would fine-tune;
with no progress.json (or ``replan=True``) it rebuilds the plan from the run's config.yaml
instead, which needs the data to compute the checkpoint keys.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import yaml

from pipeline import storage
from pipeline.config import from_dict
from pipeline.orchestration.plan import build_plan, scenario_done
from pipeline.orchestration.progress.display import clock_text, hours_text, stamp, unit_line
from pipeline.orchestration.progress.state import (CACHED, FAILED, FILE_EVERY_S, RUNNING, STALE_AFTER_S,
                                                   ProgressState, UnitProgress, read_progress)
from pipeline.storage import CheckpointStore


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
    root = storage.join(storage.parent(run_dir), "checkpoints")
    out = []
    for u in state.units:
        store = CheckpointStore(storage.join(root, u.key))
        out.append(UnitNow(u.label, u.outputs, [t for t in u.outputs if store.has(t)], u))
    return out


def units_replanned(cfg: Any) -> tuple[list[UnitNow], int]:
    """The units of ``build_plan(cfg)`` (keys from the data under cfg.data_root); and how many of
    them have an unknown cache state (their data is not here)."""
    plan = build_plan(cfg)
    units = [UnitNow(u.unit.label, list(u.unit.outputs), sorted(u.cached)) for u in plan.units]
    return units, sum(u.data == "unknown" for u in plan.units)


def load_run_config(run_dir: str, data_root: str | None = None) -> Any:
    """The run's config.yaml with storage set to where the run folder is (and data_root if given)."""
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
