"""The multi-dataset scenario (Table 5): config rules, the union label space, each dataset's own
head at evaluation, per-dataset epochs in the recipe and the checkpoint key, and the plan."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.config import ConfigError, load_config, scenario_methods
from pipeline.orchestration.plan import build_plan, train_images
from pipeline.scenario import build_scenario
from pipeline.units import task_epochs
from pipeline.evaluation import Evaluator
from pipeline.units import checkpoint_key

EIGHT = "[cars, mnist, eurosat, svhn, resisc45, sun397, dtd, gtsrb]"
MULTI = f"scenarios=[{{kind: multi_dataset, datasets: {EIGHT}}}]"
TABLE5 = "methods=[zero_shot, randmix, avg, ties, maxabs, randmix_seq, avg_seq, ties_seq, magmax]"


def _cfg(*overrides: str):
    return load_config(None, list(overrides))


def test_tasks_and_label_come_from_the_datasets():
    cfg = _cfg(MULTI, TABLE5)
    s = cfg.scenarios[0]
    assert (s.tasks, s.dataset, s.label) == (8, "", "8datasets")
    assert s.members == ("cars", "mnist", "eurosat", "svhn", "resisc45", "sun397", "dtd", "gtsrb")
    named = _cfg(f"scenarios=[{{kind: multi_dataset, name: eight, tasks: 8, datasets: {EIGHT}}}]", TABLE5)
    assert named.scenarios[0].label == "eight"


@pytest.mark.parametrize("scenario, key, words", [
    ("{kind: multi_dataset}", "scenarios[0].datasets", "list of datasets"),
    ("{kind: multi_dataset, datasets: []}", "scenarios[0].datasets", "list of datasets"),
    (f"{{kind: multi_dataset, tasks: 5, datasets: {EIGHT}}}", "scenarios[0].tasks", "set tasks=8"),
    ("{kind: multi_dataset, dataset: cars, datasets: [cars, mnist]}", "scenarios[0].dataset", "leave dataset out"),
    ("{kind: multi_dataset, datasets: [cars, cars]}", "scenarios[0].datasets", "twice"),
    ("{dataset: cars, datasets: [cars, mnist]}", "scenarios[0].datasets", "only a multi_dataset"),
    ("{dataset: cars, kind: multi}", "scenarios[0].kind", "multi_dataset"),
])
def test_bad_multi_dataset_configs_name_the_key(scenario, key, words):
    with pytest.raises(ConfigError) as err:
        _cfg(f"scenarios=[{scenario}]", TABLE5)
    assert key in str(err.value) and words in str(err.value)


def test_joint_over_several_datasets_needs_fixed_epochs():
    with pytest.raises(ConfigError, match="joint.*finetune.epochs"):
        _cfg(MULTI)  # the default methods include joint
    cfg = _cfg(MULTI, "finetune.epochs=2")
    assert task_epochs(cfg, cfg.scenarios[0], None) == 2


def test_scenario_methods_override_the_configs():
    cfg = _cfg(f"scenarios=[{{kind: multi_dataset, datasets: {EIGHT}, methods: [zero_shot, magmax]}},"
               " {dataset: cifar100, tasks: 5}]")
    assert scenario_methods(cfg, cfg.scenarios[0]) == ("zero_shot", "magmax")
    assert scenario_methods(cfg, cfg.scenarios[1]) == cfg.methods
    with pytest.raises(ConfigError, match=r"scenarios\[0\].methods\[0\]: unknown method 'magmix'"):
        _cfg("scenarios=[{dataset: cifar100, methods: [magmix]}]")


def test_each_dataset_trains_for_its_own_epochs_and_the_key_says_so(tmp_path):
    cfg = _cfg(f"scenarios=[{{kind: multi_dataset, datasets: {EIGHT}, methods: [magmax]}}]", f"storage={tmp_path}")
    s = cfg.scenarios[0]
    # design.md: Cars 35, MNIST 5, EuroSAT 12, SVHN 4, RESISC45 15, SUN397 14, DTD 75, GTSRB 11
    assert [task_epochs(cfg, s, t) for t in range(8)] == [35, 5, 12, 4, 15, 14, 75, 11]
    fixed = _cfg(f"scenarios=[{{kind: multi_dataset, datasets: {EIGHT}, methods: [magmax]}}]", "finetune.epochs=3")
    assert [task_epochs(fixed, fixed.scenarios[0], t) for t in range(8)] == [3] * 8
    assert checkpoint_key(cfg, s, "seq") != checkpoint_key(fixed, fixed.scenarios[0], "seq")
    other_order = _cfg("scenarios=[{kind: multi_dataset, datasets: [mnist, cars, eurosat, svhn, resisc45, sun397,"
                       " dtd, gtsrb], methods: [magmax]}]")
    assert checkpoint_key(cfg, s, "seq") != checkpoint_key(other_order, other_order.scenarios[0], "seq")
    # the plan counts each dataset's images times its epochs (published sizes)
    assert train_images(cfg, s, [0, 1]) == 8_144 * 35 + 60_000 * 5
    plan = build_plan(cfg)
    assert [(u.unit.mode, u.unit.tasks) for u in plan.units] == [("seq", tuple(range(8)))]
    assert plan.units[0].images_left(cfg) == train_images(cfg, s, list(range(8)))


def test_single_dataset_keys_are_unchanged_by_the_new_fields():
    # a single-dataset key does not see the multi_dataset fields. Pinned when the recipe gained the
    # train transform and fp32 became the default precision (both change the weights, so the keys
    # of checkpoints from before that change differ on purpose)
    cfg = _cfg("scenarios=[{dataset: cifar100, tasks: 10}]", "data_root=/data")
    assert checkpoint_key(cfg, cfg.scenarios[0], "seq") == "ac995263d7e43f92"


@pytest.fixture(scope="module")
def tiny_two(tmp_path_factory):
    from pipeline.data.synthetic import write_tiny_datasets

    root = tmp_path_factory.mktemp("tiny")
    write_tiny_datasets(root / "data", ["mnist", "eurosat"])
    return root


def _tiny_cfg(root, scenario: str):
    return load_config(None, ["profile=tiny", f"data_root={root / 'data'}", f"storage={root / 'storage'}",
                              f"scenarios=[{scenario}]", "methods=[zero_shot, magmax]"])


def test_union_label_space_and_own_head_evaluation(tiny_two):
    cfg = _tiny_cfg(tiny_two, "{kind: multi_dataset, datasets: [mnist, eurosat]}")
    scn = build_scenario(cfg, cfg.scenarios[0])
    alone = {d: build_scenario(c, c.scenarios[0]) for d, c in
             ((d, _tiny_cfg(tiny_two, f"{{dataset: {d}, tasks: 1}}")) for d in ("mnist", "eurosat"))}
    # task t = dataset t, its classes a block of the union label space, its head rows its own head
    a, b = (len(alone[d].data.classnames) for d in ("mnist", "eurosat"))  # tiny EuroSAT has 3 of its 10
    assert scn.task_classes == [list(range(a)), list(range(a, a + b))]
    assert torch.equal(scn.head, torch.cat([alone["mnist"].head, alone["eurosat"].head]))
    assert [len(i) for i in scn.train_task_idx] == [len(alone[d].data.train) for d in ("mnist", "eurosat")]
    assert scn.chance == pytest.approx((100 / a + 100 / b) / 2)
    head, classes = scn.train_head(1)
    assert torch.equal(head, alone["eurosat"].head) and classes is not None
    assert classes[a:a + b].tolist() == list(range(b))  # union labels of EuroSAT -> rows 0.. of its head

    # an encoder that moves the features: accuracies of the union evaluation must equal each
    # dataset's own evaluation (its own head only), whatever the other dataset's classes are
    torch.manual_seed(0)
    state = {k: v + 0.05 * torch.randn_like(v) for k, v in scn.theta0.items()}
    overall, per_task = Evaluator(scn)(state)
    own = [Evaluator(alone[d])(state)[0] for d in ("mnist", "eurosat")]
    assert per_task == pytest.approx(own)
    assert overall == pytest.approx(np.mean(own))


def test_evaluation_streamed_from_disk_equals_the_in_memory_one(tiny_two, monkeypatch):
    # datasets over the in-memory budget (any real one at 224 px) are read from disk per pass
    import pipeline.scenario as S

    for scenario in ("{kind: multi_dataset, datasets: [mnist, eurosat]}", "{dataset: eurosat, tasks: 2}"):
        cfg = _tiny_cfg(tiny_two, scenario)
        held = S.build_scenario(cfg, cfg.scenarios[0])
        assert held.in_memory
        torch.manual_seed(1)
        state = {k: v + 0.05 * torch.randn_like(v) for k, v in held.theta0.items()}
        expected = Evaluator(held)(state)
        S._build_cached.cache_clear()
        with monkeypatch.context() as mp:
            mp.setattr(S, "IN_MEMORY_BYTES", 0)
            lazy = S.build_scenario(cfg, cfg.scenarios[0])
        S._build_cached.cache_clear()
        assert not lazy.in_memory
        ev = Evaluator(lazy)
        assert ev.images is None
        got = ev(state)
        assert got[0] == pytest.approx(expected[0]) and got[1] == pytest.approx(expected[1])
