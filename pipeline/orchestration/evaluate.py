"""Evaluation on Ray: one cached evaluator per worker process and scenario.

What an evaluator reads (``EvalData``: the classifier over θ0, the decoded test images, the head)
is built once per scenario in one Ray task and shipped through the object store
(``put_eval_data``; the driver decodes no image); workers and Tune trials build their evaluator
from it instead of decoding the whole dataset (train split included) and loading the backbone
again in every process.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import ray
import torch

from pipeline.config import BenchmarkConfig, ScenarioConfig
from pipeline.evaluation import EvalData, Evaluator
from pipeline.merging import apply_task_vector
from pipeline.storage import read_tensors

_EVALUATORS: OrderedDict[tuple[BenchmarkConfig, ScenarioConfig], Evaluator] = OrderedDict()
_KEEP = 4  # evaluators kept per process (each holds its scenario's test images)


def evaluator_for(cfg: BenchmarkConfig, scenario: ScenarioConfig,
                  data: EvalData | ray.ObjectRef | None = None) -> Evaluator:
    """Backbone, head and test tensors are loaded once per process, then reused by every call:
    from ``data`` when given (fetched only on a process's first call), else built here."""
    key = (cfg, scenario)
    ev = _EVALUATORS.get(key)
    if ev is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if isinstance(data, ray.ObjectRef):
            data = ray.get(data)
        if data is not None:
            ev = Evaluator.from_data(data, device)
        else:
            from pipeline.scenario import build_scenario  # on use: seconds to import (every dataset's loader); only evaluator processes need it

            ev = Evaluator(build_scenario(cfg, scenario), device)
        _EVALUATORS[key] = ev
        while len(_EVALUATORS) > _KEEP:
            _EVALUATORS.popitem(last=False)
    _EVALUATORS.move_to_end(key)
    return ev


def put_eval_data(cfg: BenchmarkConfig, scenario: ScenarioConfig) -> ray.ObjectRef:
    """A ref to ``scenario``'s ``EvalData``, built in a Ray task (its value is None where the test
    images are read from disk on every pass: then each worker builds its own evaluator)."""
    return _eval_data.remote(cfg, scenario)


@ray.remote(max_calls=1)
def _eval_data(cfg: BenchmarkConfig, scenario: ScenarioConfig) -> EvalData | None:
    # (max_calls=1: the process exits after it, so the decoded dataset it built goes with it;
    # the return lives on in the object store, owned by the driver)
    from pipeline.scenario import build_scenario  # on use: seconds to import (every dataset's loader); only evaluator processes need it

    return Evaluator(build_scenario(cfg, scenario), "cpu").data()


@ray.remote(max_retries=2)
def evaluate_many(cfg: BenchmarkConfig, scenario: ScenarioConfig,
                  items: list[tuple[str, Any, float]],
                  data: list[ray.ObjectRef | None] | None = None) -> list[tuple[float, list[float]]]:
    """Evaluate ``(kind, payload, lam)`` items: kind "state" (weights), "tau" (task vector) or
    "path" (a checkpoint: a local path or a storage URI, read through ``pipeline.storage``).
    ``data``: ``[put_eval_data(...)]``, inside a list so that Ray does not fetch it for every task:
    only a process without an evaluator for the scenario reads it."""
    torch.set_num_threads(1)
    ev = evaluator_for(cfg, scenario, data[0] if data else None)
    out = []
    for kind, payload, lam in items:
        if isinstance(payload, ray.ObjectRef):
            payload = ray.get(payload)
        if kind == "path":
            state = read_tensors(payload, ev.theta0)
        elif kind == "tau":
            state = apply_task_vector(ev.theta0, payload, lam)
        else:
            state = payload
        out.append(ev(state))
    return out
