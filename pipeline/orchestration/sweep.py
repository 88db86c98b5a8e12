"""Merge-and-evaluate trials on Ray Tune: a grid over (method, λ) for one scenario.

Merged task vectors are computed once and shared through the object store; each trial applies
one at one λ and evaluates task-agnostically. Trials never fine-tune. The Tuner has a fixed
name under the run's storage, so an interrupted sweep is restored and finishes only what is left.
"""

from __future__ import annotations

from typing import Any

import ray
from ray import tune

from pipeline.config import BenchmarkConfig, ScenarioConfig
from pipeline.storage import join
from pipeline.orchestration.train import eval_resources


def _trial(config: dict[str, Any], cfg: BenchmarkConfig, scenario: ScenarioConfig,
           merged: dict[str, Any]) -> dict[str, Any]:
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
    return {"accuracy": overall, "per_task": per_task}


def run_sweep(cfg: BenchmarkConfig, scenario: ScenarioConfig, merged_refs: dict[str, ray.ObjectRef],
              trials: list[dict[str, Any]], storage_path: str, name: str) -> list[dict[str, Any]]:
    """Evaluate every ``{"method", "lam", "role"}`` trial; returns them with ``accuracy`` filled in."""
    trainable = tune.with_resources(
        tune.with_parameters(_trial, cfg=cfg, scenario=scenario, merged=merged_refs),
        {k: v for k, v in eval_resources(cfg).items() if v > 0},
    )
    path = join(storage_path, name)  # a local folder or a URI (s3://...), as Tune accepts both
    if tune.Tuner.can_restore(str(path)):
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search(trials)},
            tune_config=tune.TuneConfig(reuse_actors=True),
            run_config=tune.RunConfig(name=name, storage_path=storage_path, verbose=0),
        )
    results = tuner.fit()
    out = []
    for res in results:
        if res.error is not None:
            raise RuntimeError(f"sweep trial {res.config} failed: {res.error}")
        trial = dict(res.config["trial"])
        trial.update(accuracy=res.metrics["accuracy"], per_task=res.metrics["per_task"])
        out.append(trial)
    return out
