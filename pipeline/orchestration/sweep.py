"""Merge-and-evaluate trials on Ray Tune: a grid over (method, λ) for one scenario.

Merged task vectors are computed once and shared through the object store; trials never
fine-tune. Tune runs the grid in groups: each Tune trial evaluates a group of (method, λ) pairs
on one evaluator, which it builds once from the driver's ``EvalData`` (no dataset decoding, no
backbone loading per trial), and a (method, λ) asked for in two roles (a merge's headline λ that
is also on Figure 9's grid) is evaluated once. As many groups as trials fit side by side: on a
small machine the per-trial start-up of Tune and of an evaluator cost more than the evaluations.

Resuming never reads Tune's own state: ``Tuner.restore`` unpickles ``tuner.pkl`` from storage,
so anyone who can write the storage could run code in the driver. Instead every finished
(method, λ, role) records its result as a small JSON file (data, not code) under
``<sweep>/trials/`` as soon as it is evaluated; the grid is a function of the config, so a rerun
evaluates only what has no record, in a Tune experiment of its own that this driver creates in
this run. That experiment's own files (``tuner.pkl``, ``trainable.pkl``, trial ``params.pkl``:
pickles holding the config, storage URI included) go to a scratch folder on the driver's node,
removed after the sweep, never to the run's storage: storage holds only the JSON records.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import uuid
from typing import Any

import ray
import torch
from ray import tune

from pipeline import storage
from pipeline.config import BenchmarkConfig, ScenarioConfig
from pipeline.merging import apply_task_vector
from pipeline.orchestration.evaluate import evaluator_for
from pipeline.orchestration.progress.monitor import quiet_tune
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


def group_pairs(trials: list[dict[str, Any]], groups: int) -> list[list[list[str]]]:
    """The trials as Tune's grid: ``groups`` groups (fewer when there are fewer pairs) of pairs,
    a pair being the ids of the trials with one (method, λ), evaluated once. Pairs of one method
    stay together where they can, so a group fetches few merged vectors."""
    pairs: dict[tuple[str, float], list[str]] = {}
    for tr in trials:
        pairs.setdefault((tr["method"], float(tr["lam"])), []).append(trial_id(tr))
    ordered = list(pairs.values())  # (methods arrive together: _trials lists each method's grid at once)
    n = max(1, min(groups, len(ordered)))
    # contiguous slices of near-equal size: every pair costs one evaluation
    bounds = [round(i * len(ordered) / n) for i in range(n + 1)]
    return [ordered[bounds[i]:bounds[i + 1]] for i in range(n)]


def _trial(config: dict[str, Any], cfg: BenchmarkConfig, scenario: ScenarioConfig,
           merged: dict[str, Any], records: str, trials: dict[str, dict[str, Any]],
           data: ray.ObjectRef | None) -> dict[str, Any]:
    """One Tune trial: evaluate its group's pairs in order, recording each as it finishes. A pair
    that fails does not stop the others (their records let a rerun skip them); the trial fails
    at the end, naming every pair that did."""
    torch.set_num_threads(1)
    ev = evaluator_for(cfg, scenario, data)
    ids, accuracy, per_task_out, errors = [], [], [], []
    fetched: dict[str, Any] = {}  # the merged vector of the method at hand (one at a time)
    for pair in config["group"]:
        first = trials[pair[0]]
        method, lam = first["method"], float(first["lam"])
        try:
            if method not in fetched:
                tau = merged[method]
                fetched = {method: ray.get(tau) if isinstance(tau, ray.ObjectRef) else tau}
            overall, per_task = ev(apply_task_vector(ev.theta0, fetched[method], lam))
        except Exception as err:  # noqa: BLE001 - reported for this pair once the others are done
            errors.append(f"{method} λ={lam}: {type(err).__name__}: {err}")
            continue
        for tid in pair:
            trial = trials[tid]
            record = {"method": trial["method"], "lam": float(trial["lam"]), "role": trial["role"],
                      "accuracy": float(overall), "per_task": [float(v) for v in per_task]}
            storage.write_text(_record_path(records, trial), json.dumps(record))
            ids.append(tid)
            accuracy.append(float(overall))
            per_task_out.append([float(v) for v in per_task])
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(config['group'])} (method, λ) pairs failed: " + "; ".join(errors))
    return {"pairs_done": len(ids), "ids": ids, "accuracies": accuracy, "per_tasks": per_task_out}


def run_sweep(cfg: BenchmarkConfig, scenario: ScenarioConfig, merged_refs: dict[str, ray.ObjectRef],
              trials: list[dict[str, Any]], storage_path: str, name: str, *, groups: int | None = None,
              data: ray.ObjectRef | None = None) -> list[dict[str, Any]]:
    """Evaluate every ``{"method", "lam", "role"}`` trial; returns them with ``accuracy`` filled in.

    Trials recorded under ``<storage_path>/<name>/trials`` by an earlier run are read, not
    evaluated again; the others run on a fresh Tune experiment (never ``Tuner.restore``) as
    ``groups`` Tune trials (default: as many as run side by side). ``data``: the driver's
    ``put_eval_data`` (None: each trial builds its evaluator from the scenario).
    """
    sweep_dir = storage.join(storage_path, name)
    records = storage.join(sweep_dir, "trials")
    out: list[dict[str, Any] | None] = [read_record(records, tr) for tr in trials]
    todo = [tr for tr, got in zip(trials, out) if got is None]
    if todo:
        res = {k: v for k, v in eval_resources(cfg).items() if v > 0}
        if groups is None:
            cluster = ray.cluster_resources()
            groups = int(min(cluster.get(k, 0) / v for k, v in res.items())) if res else 1
        by_id = {trial_id(tr): tr for tr in todo}
        trainable = tune.with_resources(
            tune.with_parameters(_trial, cfg=cfg, scenario=scenario, merged=merged_refs, records=records,
                                 trials=by_id, data=data),
            res,
        )
        done = {}
        # Ctrl-C stays the driver's: Tune's own handler would end the sweep quietly and return
        # partial results (then "Resume with Tuner.restore"), instead of the runner's one line
        # and exit 130; the finished trials' records are written either way
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        # Tune's state is never read back (a name of its own per driver run) and holds pickles
        # of the config: kept off the run's storage, in a scratch folder dropped after the sweep
        with tempfile.TemporaryDirectory(prefix="magmax-tune-", ignore_cleanup_errors=True) as scratch, quiet_tune():
            tuner = tune.Tuner(
                trainable,
                param_space={"group": tune.grid_search(group_pairs(todo, max(1, groups)))},
                tune_config=tune.TuneConfig(reuse_actors=True),
                run_config=tune.RunConfig(name=f"tune-{uuid.uuid4().hex[:8]}", storage_path=scratch, verbose=0),
            )
            results = tuner.fit()  # (quiet_tune: the runner logs one line per scenario's sweep)
        for res_ in results:
            if res_.error is not None:
                raise RuntimeError(f"sweep trial {res_.config} failed: {res_.error}")
            for tid, acc, per_task in zip(res_.metrics["ids"], res_.metrics["accuracies"], res_.metrics["per_tasks"]):
                done[tid] = {**by_id[tid], "accuracy": acc, "per_task": per_task}
        out = [got if got is not None else done[trial_id(tr)] for tr, got in zip(trials, out)]
    return [got for got in out if got is not None]
