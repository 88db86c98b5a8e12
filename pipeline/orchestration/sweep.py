"""Merge-and-evaluate trials on Ray Tune: a grid over (method, λ) for one scenario.

Merged task vectors are computed once and shared through the object store; each trial applies
one at one λ and evaluates task-agnostically. Trials never fine-tune.

Resuming never reads Tune's own state: ``Tuner.restore`` unpickles ``tuner.pkl`` from storage,
so anyone who can write the storage could run code in the driver. Instead every finished trial
records its result as a small JSON file (data, not code) under ``<sweep>/trials/``; the grid is a
function of the config, so a rerun evaluates only the trials without a record, in a Tune
experiment of its own that this driver creates in this run.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from typing import Any

import ray
from ray import tune

from pipeline import storage
from pipeline.config import BenchmarkConfig, ScenarioConfig
from pipeline.orchestration.train import eval_resources


def trial_id(trial: dict[str, Any]) -> str:
    """A trial's file name: its method and λ (what determines its result within one sweep)."""
    blob = json.dumps({"method": trial["method"], "lam": float(trial["lam"]), "role": trial["role"]},
                      sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _record_path(records: str, trial: dict[str, Any]) -> str:
    return storage.join(records, f"{trial_id(trial)}.json")


def read_record(records: str, trial: dict[str, Any]) -> dict[str, Any] | None:
    """The recorded result of ``trial``, or None when there is none or it is not a valid record
    of this trial (a damaged file is evaluated again rather than trusted)."""
    path = _record_path(records, trial)
    if not storage.exists(path):
        return None
    try:
        got = json.loads(storage.read_text(path))
        accuracy = float(got["accuracy"])
        per_task = [float(v) for v in got["per_task"]]
        same = (got["method"], float(got["lam"]), got["role"]) == (trial["method"], float(trial["lam"]),
                                                                   trial["role"])
    except (ValueError, KeyError, TypeError):
        return None
    if not same or not math.isfinite(accuracy):
        return None
    return {**trial, "accuracy": accuracy, "per_task": per_task}


def _trial(config: dict[str, Any], cfg: BenchmarkConfig, scenario: ScenarioConfig,
           merged: dict[str, Any], records: str) -> dict[str, Any]:
    import torch

    from pipeline.merging import apply_task_vector
    from pipeline.orchestration.evaluate import evaluator_for

    torch.set_num_threads(1)
    ev = evaluator_for(cfg, scenario)
    trial = config["trial"]
    tau = merged[trial["method"]]
    if isinstance(tau, ray.ObjectRef):
        tau = ray.get(tau)
    overall, per_task = ev(apply_task_vector(ev.scn.theta0, tau, trial["lam"]))
    record = {"method": trial["method"], "lam": float(trial["lam"]), "role": trial["role"],
              "accuracy": float(overall), "per_task": [float(v) for v in per_task]}
    storage.write_text(_record_path(records, trial), json.dumps(record))
    return {"accuracy": overall, "per_task": per_task}


def run_sweep(cfg: BenchmarkConfig, scenario: ScenarioConfig, merged_refs: dict[str, ray.ObjectRef],
              trials: list[dict[str, Any]], storage_path: str, name: str) -> list[dict[str, Any]]:
    """Evaluate every ``{"method", "lam", "role"}`` trial; returns them with ``accuracy`` filled in.

    Trials recorded under ``<storage_path>/<name>/trials`` by an earlier run are read, not
    evaluated again; the others run on a fresh Tune experiment (never ``Tuner.restore``).
    """
    sweep_dir = storage.join(storage_path, name)
    records = storage.join(sweep_dir, "trials")
    out: list[dict[str, Any] | None] = [read_record(records, tr) for tr in trials]
    todo = [tr for tr, got in zip(trials, out) if got is None]
    if todo:
        trainable = tune.with_resources(
            tune.with_parameters(_trial, cfg=cfg, scenario=scenario, merged=merged_refs, records=records),
            {k: v for k, v in eval_resources(cfg).items() if v > 0},
        )
        # a name of its own per driver run: Tune's state from earlier runs is never looked at
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search(todo)},
            tune_config=tune.TuneConfig(reuse_actors=True),
            run_config=tune.RunConfig(name=f"tune-{uuid.uuid4().hex[:8]}", storage_path=sweep_dir, verbose=0),
        )
        by_id = {}
        for res in tuner.fit():
            if res.error is not None:
                raise RuntimeError(f"sweep trial {res.config} failed: {res.error}")
            trial = dict(res.config["trial"])
            by_id[trial_id(trial)] = {**trial, "accuracy": res.metrics["accuracy"],
                                      "per_task": res.metrics["per_task"]}
        out = [got if got is not None else by_id[trial_id(tr)] for tr, got in zip(trials, out)]
    return [got for got in out if got is not None]
