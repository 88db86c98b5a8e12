"""The plan's fixed cost per Train run and the packing of small independent tasks (issue 13, item 5).

Small cases by hand: demo_shapes has 6 000 published training images, so at 5 tasks and 10 epochs
each task reads 12 000 images, 120 s at an assumed 100 images/s.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_config, load_suite
from pipeline.orchestration import plan as plan_mod
from pipeline.orchestration.plan import (build_plan, format_plan, pack_independent, scenario_units, suite_hours,
                                         suite_summary)
from pipeline.orchestration.runner import resolve_paths
from pipeline.units import ChainUnit

ROOT = Path(__file__).resolve().parent.parent


def _cfg(tmp_path, *overrides: str):
    return load_config(None, [
        f"storage={tmp_path / 'storage'}", f"data_root={tmp_path / 'no_data'}",
        "scenarios=[{dataset: demo_shapes, tasks: 5, methods: [seq_ft, avg]}]",
        "finetune.epochs=10", "ray.train_images_per_gpu_s=100", *overrides])


def _ind(cfg) -> list[tuple[int, ...]]:
    return [u.tasks for u in scenario_units(cfg, cfg.scenarios[0], 5) if u.mode == "ind"]


def test_task_estimate_by_hand(tmp_path):
    cfg = _cfg(tmp_path)
    assert [plan_mod.task_gpu_s(cfg, cfg.scenarios[0], t) for t in range(5)] == [120.0] * 5


@pytest.mark.parametrize("pack, groups", [
    (250, [(0, 1), (2, 3), (4,)]),       # two 120 s tasks fit under 250 s, three do not
    (400, [(0, 1, 2), (3, 4)]),          # fewest runs is 2 (3 + 2 tasks); 360 s is the least largest
    (600.1, [(0, 1, 2, 3, 4)]),          # 600 s of work in one run
    (100, [(0,), (1,), (2,), (3,), (4,)]),  # every task is over the limit: each alone
    (0, [(0,), (1,), (2,), (3,), (4,)]),    # 0 = never pack (today's group_independent=false)
])
def test_packing_groups_tasks_up_to_the_target(tmp_path, pack, groups):
    assert _ind(_cfg(tmp_path, f"ray.pack_gpu_s={pack}")) == groups


def test_group_independent_still_packs_the_whole_scenario(tmp_path):
    assert _ind(_cfg(tmp_path, "ray.group_independent=true", "ray.pack_gpu_s=250")) == [(0, 1, 2, 3, 4)]


def test_packs_are_consecutive_and_a_large_task_runs_alone(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, "ray.pack_gpu_s=600")
    costs = {0: 100.0, 1: 700.0, 2: 300.0, 3: 300.0, 4: None}  # task 4: dataset of unknown size
    monkeypatch.setattr(plan_mod, "task_gpu_s", lambda cfg, scenario, t: costs[t])
    groups = pack_independent(cfg, cfg.scenarios[0], (0, 1, 2, 3, 4))
    assert groups == [(0,), (1,), (2, 3), (4,)]
    # in task order once flattened: the runner lists a mode's checkpoints unit by unit
    assert [t for g in groups for t in g] == [0, 1, 2, 3, 4]


def test_packed_tasks_keep_their_keys_and_files(tmp_path):
    packed = build_plan(_cfg(tmp_path, "ray.pack_gpu_s=250"))
    single = build_plan(_cfg(tmp_path, "ray.pack_gpu_s=0"))

    def folder_of(plan, mode):
        return {t: u.folder for u in plan.units if u.unit.mode == mode for t in u.unit.outputs}

    assert folder_of(packed, "ind") == folder_of(single, "ind")       # every task, the same folder
    assert folder_of(packed, "seq") == folder_of(single, "seq")
    assert len({u.folder for u in packed.units if u.unit.mode == "ind"}) == 1
    # a single-task unit is what it was: same label, identity and key
    one = ChainUnit(packed.cfg.scenarios[0], "ind", (4,))
    assert one.label == "demo_shapes_5-ind-t4" and one.identity == ("ind", (4,))
    labels = [u.unit.label for u in packed.units if u.unit.mode == "ind"]
    assert labels == ["demo_shapes_5-ind-t0-1", "demo_shapes_5-ind-t2-3", "demo_shapes_5-ind-t4"]
    # the whole scenario in one unit keeps its old label (and Train run name)
    assert ChainUnit(packed.cfg.scenarios[0], "ind", tuple(range(5))).label == "demo_shapes_5-ind"


def test_fixed_cost_arithmetic_by_hand(tmp_path):
    cfg = _cfg(tmp_path, "ray.pack_gpu_s=250", "ray.unit_startup_s=30", "ray.num_workers=2",
               "ray.gpus_per_worker=1")
    plan = build_plan(cfg)
    # seq (1 run) + 3 independent packs = 4 Train runs, each 30 s on 2 GPUs
    assert len(plan.pending) == 4
    assert plan.fixed_hours_left() == pytest.approx(4 * 30 * 2 / 3600)
    train_h, eval_h, _ = plan.gpu_hours_left()
    assert train_h == pytest.approx(2 * 60_000 / 100 / 3600)  # seq and ind each read 5 x 12 000 images
    text = format_plan(plan)
    total = train_h + eval_h + 4 * 30 * 2 / 3600
    assert f"Train start-up {4 * 60 / 3600:.2f}" in text
    assert (f"fixed start-up: 4 Train runs x 30 s (ray.unit_startup_s) x 2 GPU = 0.07 GPU-h, "
            f"{100 * 240 / 3600 / total:.1f}% of the GPU-hours left") in text
    # without packing: 1 + 5 runs
    assert build_plan(_cfg(tmp_path, "ray.pack_gpu_s=0", "ray.unit_startup_s=30")).fixed_hours_left() == \
        pytest.approx(6 * 30 / 3600)


def test_startup_table_and_override(tmp_path):
    assert plan_mod.startup(_cfg(tmp_path)) == plan_mod.STARTUP_S["tiny"]  # the committed tiny CLIP
    assert plan_mod.startup(_cfg(tmp_path, "model.backbone=ViT-L-14")) == plan_mod.STARTUP_S["ViT-L-14"]
    assert plan_mod.startup(_cfg(tmp_path, "ray.unit_startup_s=12.5"))[0] == 12.5
    for key in ("ray.unit_startup_s", "ray.pack_gpu_s"):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            _cfg(tmp_path, f"{key}=-1")


def test_paper_suite_start_up_is_at_most_ten_percent():
    """configs/paper/all.yaml (with Tables 7 and 8): fixed start-up <= 10 % of the GPU-hours left,
    for each config and the suite (with ray.pack_gpu_s=0 it was 15-34 %)."""
    plans = [build_plan(resolve_paths(c)) for c in load_suite(ROOT / "configs" / "paper" / "all.yaml")]
    for p in plans:
        train_h, eval_h, _ = p.gpu_hours_left()
        fixed_h = p.fixed_hours_left()
        assert fixed_h / (train_h + eval_h + fixed_h) <= 0.10, p.cfg.name
    runs, train_h, fixed_h, eval_h = suite_hours(plans)
    assert fixed_h / (train_h + fixed_h + eval_h) <= 0.10
    assert f"Train start-up {fixed_h:.2f} for {runs} runs" in suite_summary(plans)
