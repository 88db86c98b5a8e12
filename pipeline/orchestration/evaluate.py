"""Evaluation on Ray: one cached evaluator per worker process and scenario."""

from __future__ import annotations

import functools
from typing import Any

import ray
import torch

from pipeline.config import BenchmarkConfig, ScenarioConfig
from pipeline.units import Evaluator


@functools.lru_cache(maxsize=4)
def evaluator_for(cfg: BenchmarkConfig, scenario: ScenarioConfig) -> Evaluator:
    """Backbone, head and test tensors are loaded once per process, then reused by every call."""
    from pipeline.scenario import build_scenario

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return Evaluator(build_scenario(cfg, scenario), device)


@ray.remote(max_retries=2)
def evaluate_many(cfg: BenchmarkConfig, scenario: ScenarioConfig,
                  items: list[tuple[str, Any, float]]) -> list[tuple[float, list[float]]]:
    """Evaluate ``(kind, payload, lam)`` items: kind "state" (weights), "tau" (task vector) or
    "path" (a checkpoint: a local path or a storage URI, read through ``pipeline.storage``)."""
    from pipeline.merging import apply_task_vector
    from pipeline.storage import read_tensors

    torch.set_num_threads(1)
    ev = evaluator_for(cfg, scenario)
    out = []
    for kind, payload, lam in items:
        if isinstance(payload, ray.ObjectRef):
            payload = ray.get(payload)
        if kind == "path":
            state = read_tensors(payload, ev.scn.theta0)
        elif kind == "tau":
            state = apply_task_vector(ev.scn.theta0, payload, lam)
        else:
            state = payload
        out.append(ev(state))
    return out
