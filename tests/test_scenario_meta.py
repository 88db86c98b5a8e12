"""The driver's scenario metadata (issue 11 item 4): ``scenario_meta`` gives what ``build_scenario``
gives for θ0, the task count, chance and the backbone, without opening a single image."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.config import load_config
from pipeline.scenario_meta import scenario_meta

ROOT = Path(__file__).resolve().parent.parent


def _no_image_reads(monkeypatch) -> None:
    """Every way a dataset hands out an image raises: metadata must not need one."""
    from pipeline.data import ArrayImageDataset, ImageFileDataset

    def refuse(self, index):
        raise AssertionError(f"{type(self).__name__}[{index}] read an image")

    for cls in (ImageFileDataset, ArrayImageDataset):
        monkeypatch.setattr(cls, "__getitem__", refuse)


def _check(cfg, scenario, monkeypatch) -> None:
    from pipeline.scenario import build_scenario

    with monkeypatch.context() as m:
        _no_image_reads(m)
        meta = scenario_meta(cfg, scenario)
    scn = build_scenario(cfg, scenario)
    assert meta.chance == scn.chance  # (the same float: the report prints it)
    assert meta.num_tasks == scn.num_tasks
    assert meta.backbone == scn.clip.name
    assert meta.theta0.keys() == scn.theta0.keys()
    assert all(torch.equal(meta.theta0[k], scn.theta0[k]) for k in scn.theta0)
    whole = sum(v.numel() for v in scn.clip.model.state_dict().values() if v.is_floating_point())
    assert meta.untouched == whole - sum(v.numel() for v in scn.theta0.values()) > 0


def test_demo_metadata_matches_the_built_scenario(demo_data_root, tmp_path, monkeypatch):
    cfg = load_config(ROOT / "configs" / "demo.yaml", [f"data_root={demo_data_root}", "demo_data=false",
                                                       f"storage={tmp_path}"])
    _check(cfg, cfg.scenarios[0], monkeypatch)
    assert scenario_meta(cfg, cfg.scenarios[0]).chance == pytest.approx(1.0)  # 100 classes


def test_tiny_paper_metadata_matches_the_built_scenario(tmp_path, monkeypatch):
    """Class-incremental (CIFAR100), domain-incremental (DomainNet) and multi-dataset (Table 5)."""
    from pipeline.data.synthetic import write_tiny_datasets

    scenarios = ("[{dataset: cifar100, tasks: 5}, {dataset: domainnet, kind: domain_incremental, tasks: 6},"
                 " {kind: multi_dataset, name: three, datasets: [mnist, eurosat, dtd]}]")
    cfg = load_config(ROOT / "configs" / "paper" / "all.yaml",
                      ["profile=tiny", f"data_root={tmp_path / 'data'}", f"storage={tmp_path / 'storage'}",
                       "suite=[]", f"scenarios={scenarios}"])
    write_tiny_datasets(cfg.data_root, [d for s in cfg.scenarios for d in s.members])
    kinds = []
    for scenario in cfg.scenarios:
        _check(cfg, scenario, monkeypatch)
        kinds.append(scenario.kind)
    assert kinds == ["class_incremental", "domain_incremental", "multi_dataset"]


@pytest.mark.slow
def test_the_driver_fetches_no_task_vector_and_builds_no_scenario(tiny_demo_run, tmp_path, monkeypatch):
    """The tiny demo merged and evaluated again (its checkpoints reused, a continual merge and two
    figure analyses added): inside ``run_scenario`` the driver reads no checkpoint, makes no task
    vector and builds no scenario. Ray runs tasks in worker processes, where these spies do not
    reach: what they count is the driver's own work."""
    import shutil

    from jobs import run_benchmark
    from pipeline import scenario, storage, task_vectors
    from pipeline.orchestration import runner, scenario_results

    inside = [False]
    calls: list[str] = []

    def spy(name, real):
        def wrapper(*args, **kwargs):
            if inside[0]:
                calls.append(name)
            return real(*args, **kwargs)
        return wrapper

    def scenario_spy(*args, **kwargs):
        inside[0] = True
        try:
            return real_run_scenario(*args, **kwargs)
        finally:
            inside[0] = False

    real_run_scenario = runner.run_scenario
    monkeypatch.setattr(runner, "run_scenario", scenario_spy)
    monkeypatch.setattr(storage, "read_tensors", spy("read_tensors", storage.read_tensors))
    monkeypatch.setattr(task_vectors, "task_vector", spy("task_vector", task_vectors.task_vector))
    monkeypatch.setattr(scenario_results, "task_vector", spy("task_vector", scenario_results.task_vector))
    monkeypatch.setattr(scenario, "build_scenario", spy("build_scenario", scenario.build_scenario))

    store = shutil.copytree(tiny_demo_run.storage, tmp_path / "storage")
    monkeypatch.chdir(ROOT)
    argv = tiny_demo_run.argv(store, "name=refs_only", "scenarios.0.analyses=[contributions,leave_one_out]",
                              "methods=[zero_shot,seq_ft,magmax,ties,opcm]")
    assert run_benchmark.main(argv) == 0
    assert calls == []
    import pandas as pd

    analysis = pd.read_parquet(next((store / "refs_only").rglob("analysis.parquet")))
    assert {"sign_conflicts", "contribution", "leave_one_out_accuracy", "chance"} <= set(analysis.metric)
    final = pd.read_parquet(next((store / "refs_only").rglob("final.parquet")))
    assert {"magmax", "ties", "opcm"} <= set(final.method)
