"""Evaluation shipped instead of rebuilt (issue 13 item 4): an evaluator built from the driver's
EvalData gives the scenario's own evaluator's numbers exactly, and the λ sweep's Tune grid
groups (method, λ) pairs without losing or repeating a trial."""

from __future__ import annotations

import copy

import pytest
import torch

from pipeline.config import load_config
from pipeline.evaluation import Evaluator


@pytest.fixture(scope="module")
def scn(demo_data_root):
    from pipeline.scenario import build_scenario

    cfg = load_config("configs/demo.yaml", [f"data_root={demo_data_root}", "demo_data=false", "eval_batch_size=64"])
    return build_scenario(cfg, cfg.scenarios[0])


def test_an_evaluator_from_shipped_data_gives_the_same_numbers(scn):
    own = Evaluator(scn)
    # deepcopy goes through the same reduce as the object store's serialisation
    shipped = Evaluator.from_data(copy.deepcopy(own.data()))
    gen = torch.Generator().manual_seed(0)
    moved = {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in scn.theta0.items()}
    for state in (scn.theta0, moved, scn.theta0):
        assert shipped(state) == own(state)
    assert own(moved) != own(scn.theta0)  # (the states differ enough to tell)
    assert shipped.theta0.keys() == scn.theta0.keys()


def test_the_sweep_grid_groups_pairs_once_each():
    from pipeline.orchestration.sweep import group_pairs, trial_id

    trials = [{"method": m, "lam": 0.5, "role": "final"} for m in ("magmax", "ties")]
    trials += [{"method": m, "lam": lam, "role": "sweep"} for m in ("magmax", "ties", "avg")
               for lam in (0.25, 0.5, 0.75)]
    groups = group_pairs(trials, 4)
    assert len(groups) == 4
    pairs = [pair for g in groups for pair in g]
    assert len(pairs) == 9  # (magmax, 0.5) and (ties, 0.5) asked twice, evaluated once
    assert sorted(tid for pair in pairs for tid in pair) == sorted(trial_id(t) for t in trials)
    sizes = sorted(len(g) for g in groups)
    assert sizes[-1] - sizes[0] <= 1
    by_id = {trial_id(t): t for t in trials}
    for pair in pairs:
        assert len({(by_id[t]["method"], by_id[t]["lam"]) for t in pair}) == 1
    assert len(group_pairs(trials[:1], 4)) == 1  # never an empty group
