"""What the driver needs to know about a scenario to merge and evaluate it, read from metadata.

``build_scenario`` decodes a scenario's images (up to GBs at paper scale) so that a process can
train or evaluate on them; the driver of ``run_scenario`` needs none of that: only θ0 (the
pre-trained image tower, the origin of every task vector), the number of tasks, the chance
accuracy, the backbone's name and how many entries of the whole CLIP are never trained (TIES's
trimming scope). ``scenario_meta`` reads them from the backbone and the dataset loaders' class
lists alone: the loaders open no image (``pipeline.data.registry``), and the values equal those
of the built ``Scenario`` (tests/test_scenario_meta.py checks it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.config import BenchmarkConfig, ScenarioConfig
from pipeline.data import load_dataset
from pipeline.models import image_encoder_state
from pipeline.scenario import DOMAIN_ORDERS, load_clip_from_config


@dataclass(frozen=True)
class ScenarioMeta:
    backbone: str                       # the backbone's name (``Clip.name``: the rows' "backbone")
    theta0: dict[str, torch.Tensor]     # the pre-trained image tower's floating-point state
    num_tasks: int
    chance: float                       # as ``Scenario.chance``: 100 / classes, or the datasets' mean
    untouched: int                      # floating-point entries of the whole CLIP outside the image tower


def scenario_meta(cfg: BenchmarkConfig, scenario: ScenarioConfig) -> ScenarioMeta:
    """θ0, task count, chance and the backbone's figures of ``scenario``, decoding no image."""
    clip = load_clip_from_config(cfg.model)
    theta0 = image_encoder_state(clip.model)
    untouched = (sum(v.numel() for v in clip.model.state_dict().values() if v.is_floating_point())
                 - sum(t.numel() for t in theta0.values()))
    # class lists and targets only: the bundles' datasets open images lazily, and none is read here
    bundles = [load_dataset(name, Path(cfg.data_root), declared=cfg.datasets) for name in scenario.members]
    classes = [len(b.classnames) for b in bundles]
    if scenario.kind == "multi_dataset":
        num_tasks = len(scenario.datasets)
        chance = float(np.mean([100.0 / c for c in classes]))
    elif scenario.kind == "domain_incremental":
        order = DOMAIN_ORDERS.get(scenario.dataset)
        if order is None or bundles[0].train_domains is None:
            raise ValueError(f"scenario {scenario.label}: dataset {scenario.dataset!r} has no domains")
        num_tasks = min(scenario.tasks, len(order))
        chance = 100.0 / classes[0]
    else:
        if scenario.tasks > classes[0]:
            raise ValueError(f"scenarios: tasks={scenario.tasks} is more than the {classes[0]} classes "
                             f"of {scenario.dataset}")
        num_tasks = scenario.tasks
        chance = 100.0 / classes[0]
    return ScenarioMeta(clip.name, theta0, num_tasks, chance, untouched)
