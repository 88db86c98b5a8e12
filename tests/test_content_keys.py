"""Caches keyed by the data's content, not its path; user datasets everywhere (issue 14, items 3-4).

Checkpoint keys and a run's identity hold each dataset's fingerprint (pipeline.data.fingerprint):
the same data under another path, or a storage folder moved, reuses everything; changed data
never does. A dataset declared in the config or registered in Python before main() reaches
every Ray worker.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pipeline.config import ConfigError, load_config, to_dict
from pipeline.data import DATASETS, fingerprint
from pipeline.data.registry import carried_loaders
from pipeline.data.synthetic import write_cifar100
from pipeline.orchestration import runner
from pipeline.orchestration.plan import build_plan, format_plan
from pipeline.storage import CheckpointStore
from pipeline.units import checkpoint_key

ROOT = Path(__file__).resolve().parent.parent


def write_image_folder(base: Path, classes: int = 4, train: int = 3, test: int = 2, seed: int = 0) -> Path:
    """``base/{train,test}/class_<c>/<n>.png``: 8x8 noise, seeded."""
    rng = np.random.default_rng(seed)
    for split, per_class in (("train", train), ("test", test)):
        for c in range(classes):
            folder = base / split / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for n in range(per_class):
                pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{n}.png")
    return base


@pytest.fixture(autouse=True)
def _fresh_fingerprints():
    """Fingerprints forgotten (data is written and changed between tests in one process), and
    the registry as it was (tests register datasets in place, as a user does)."""
    import pipeline.data.registry as registry

    fingerprint.clear_cache()
    table, carried = dict(DATASETS), set(registry._CARRIED)
    yield
    fingerprint.clear_cache()
    DATASETS.clear()
    DATASETS.update(table)
    registry._CARRIED.clear()
    registry._CARRIED.update(carried)


def _data(root: Path) -> Path:
    write_cifar100(root)                     # arrays (pickled), 100 classes
    write_image_folder(root / "my_photos")   # files: a dataset the config declares
    return root


def _cfg(data_root: Path, storage: Path, *more: str):
    return load_config(None, ["profile=tiny", f"data_root={data_root}", f"storage={storage}",
                              "datasets={mydata: {folder: my_photos, templates: ['a photo of a {}.']}}",
                              "scenarios=[{dataset: cifar100, tasks: 2}, {dataset: mydata, tasks: 2}]",
                              "methods=[zero_shot, seq_ft, magmax, ties]", *more])


def _folders(cfg) -> dict[tuple, str]:
    return {(u.unit.label, u.unit.identity): Path(u.folder).name for u in build_plan(cfg).units}


def test_the_same_data_at_another_path_finds_every_checkpoint(tmp_path):
    a = _data(tmp_path / "mount_a")
    b = tmp_path / "elsewhere" / "mount_b"
    shutil.copytree(a, b)
    cfg_a, cfg_b = _cfg(a, tmp_path / "storage"), _cfg(b, tmp_path / "storage")
    plan = build_plan(cfg_a)
    assert {u.data for u in plan.units} == {"content"}
    assert all(not u.cached for u in plan.units)
    for u in plan.units:
        for t in u.unit.outputs:
            CheckpointStore(u.folder).save(t, {"w": torch.zeros(2)}, {})
    assert _folders(cfg_b) == _folders(cfg_a)
    again = build_plan(cfg_b)
    assert all(u.done for u in again.units) and not again.pending
    # the key holds no path: not the old data_root determinant
    key_a = checkpoint_key(cfg_a, cfg_a.scenarios[1], "seq")
    assert key_a == checkpoint_key(cfg_b, cfg_b.scenarios[1], "seq")


def test_changed_data_never_reuses_a_checkpoint(tmp_path):
    root = _data(tmp_path / "data")
    cfg = _cfg(root, tmp_path / "storage")
    runner.check_datasets(cfg)  # what a run does first: load and fingerprint every dataset
    before = {s.dataset: checkpoint_key(cfg, s, "seq") for s in cfg.scenarios}

    # the probe: a class folder deleted from the data at the same path, then a rerun
    for split in ("train", "test"):
        shutil.rmtree(root / "my_photos" / split / "class_3")
    runner.check_datasets(cfg)
    after = {s.dataset: checkpoint_key(cfg, s, "seq") for s in cfg.scenarios}
    assert after["mydata"] != before["mydata"] and after["cifar100"] == before["cifar100"]

    # one image replaced by a file of another size
    image = root / "my_photos" / "train" / "class_0" / "0.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(image)
    runner.check_datasets(cfg)
    assert checkpoint_key(cfg, cfg.scenarios[1], "seq") != after["mydata"]

    # array data: other pixels, same labels and names
    write_cifar100(root, train_per_class=2, test_per_class=1)  # (same seed: same bytes)
    runner.check_datasets(cfg)
    assert checkpoint_key(cfg, cfg.scenarios[0], "seq") == before["cifar100"]
    entry = pickle.loads((root / "cifar-100-python" / "train").read_bytes())
    entry["data"][0, 0] ^= 1
    (root / "cifar-100-python" / "train").write_bytes(pickle.dumps(entry, protocol=2))
    runner.check_datasets(cfg)
    assert checkpoint_key(cfg, cfg.scenarios[0], "seq") != before["cifar100"]


def test_sweep_records_follow_the_data_not_where_it_or_the_storage_lies(tmp_path):
    # the λ sweep's records (<storage>/ray_tune/<name>/trials) are found again after a move and
    # under other Ray settings, and never after the data changed (even with the run folder deleted)
    from pipeline.orchestration.scenario_results import sweep_name

    a = _data(tmp_path / "mount_a")
    b = tmp_path / "elsewhere" / "mount_b"
    shutil.copytree(a, b)
    trials = [{"method": "magmax", "lam": 0.5, "role": "final"}]
    cfg = _cfg(a, tmp_path / "storage")
    name = sweep_name(cfg, cfg.scenarios[1], trials)
    moved = _cfg(b, tmp_path / "moved_storage", "ray.num_workers=2", "ray.tune_sweep=false")
    assert sweep_name(moved, moved.scenarios[1], trials) == name
    assert sweep_name(cfg, cfg.scenarios[1], [{**trials[0], "lam": 0.7}]) != name
    assert sweep_name(_cfg(a, tmp_path / "storage", "merge.magmax_lambda=0.7"), cfg.scenarios[1], trials) != name

    for split in ("train", "test"):
        shutil.rmtree(a / "my_photos" / split / "class_3")
    fingerprint.clear_cache()
    assert sweep_name(cfg, cfg.scenarios[1], trials) != name


def test_templates_reach_the_key(tmp_path):
    # the zero-shot head is made from the templates and trains with the image tower: other weights
    root = _data(tmp_path / "data")
    cfg = _cfg(root, tmp_path / "s")
    other = _cfg(root, tmp_path / "s", "datasets={mydata: {folder: my_photos, templates: ['a {} picture.']}}")
    assert checkpoint_key(cfg, cfg.scenarios[1], "seq") != checkpoint_key(other, other.scenarios[1], "seq")


def test_a_storage_folder_moved_and_data_moved_are_the_same_run(tmp_path):
    a = _data(tmp_path / "a")
    cfg = runner.resolve_paths(_cfg(a, tmp_path / "storage"))
    run_dir = str(tmp_path / "storage" / cfg.name)
    runner.check_datasets(cfg)
    (tmp_path / "storage" / cfg.name).mkdir(parents=True)
    (tmp_path / "storage" / cfg.name / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    runner.record_data(cfg, run_dir)
    record = json.loads((Path(run_dir) / runner.DATA_RECORD).read_text())["fingerprints"]
    assert set(record) == {"cifar100", "mydata"} and all(v.startswith("sha256:") for v in record.values())

    # storage copied elsewhere, data mounted elsewhere: accepted
    shutil.copytree(tmp_path / "storage", tmp_path / "moved")
    shutil.copytree(a, tmp_path / "b")
    moved = runner.resolve_paths(_cfg(tmp_path / "b", tmp_path / "moved"))
    runner.check_run_dir(moved, str(tmp_path / "moved" / cfg.name))

    # the data changed under the same path: refused, naming the dataset
    shutil.rmtree(tmp_path / "b" / "my_photos" / "train" / "class_0")
    shutil.rmtree(tmp_path / "b" / "my_photos" / "test" / "class_0")
    runner.check_datasets(moved)
    with pytest.raises(ConfigError, match=r"differs in \['data of mydata'\]"):
        runner.check_run_dir(moved, str(tmp_path / "moved" / cfg.name))

    # a run written before data records: known by its data_root only
    (Path(run_dir) / runner.DATA_RECORD).unlink()
    runner.check_run_dir(cfg, run_dir)
    with pytest.raises(ConfigError, match=r"differs in \['data_root'\]"):
        runner.check_run_dir(runner.resolve_paths(_cfg(tmp_path / "b", tmp_path / "storage")), run_dir)


def test_a_plan_without_the_data_says_its_cache_state_is_unknown(tmp_path):
    cfg = _cfg(tmp_path / "absent", tmp_path / "storage")
    plan = build_plan(cfg)
    assert {u.data for u in plan.units} == {"unknown"} and len(plan.pending) == len(plan.units)
    text = format_plan(plan)
    assert "  ?/2" in text and "cache state unknown for 4 units: cifar100, mydata not found (or not registered)" in text
    # a data_root URI: keyed by its path, the key checkpoints had before fingerprints
    uri = _cfg(tmp_path, tmp_path / "storage", "data_root=s3://bucket/data")
    assert {u.data for u in build_plan(uri).units} == {"path"}
    assert "keyed by data_root's path" in format_plan(build_plan(uri))
    legacy = load_config(None, ["scenarios=[{dataset: cifar100, tasks: 10}]", "data_root=/data"])
    assert checkpoint_key(legacy, legacy.scenarios[0], "seq") == "ac995263d7e43f92"  # (no data at /data)


def test_fingerprints_are_path_free_and_cheap(tmp_path):
    a = write_image_folder(tmp_path / "x" / "set", classes=3)
    b = shutil.copytree(a, tmp_path / "y" / "z" / "set")
    from pipeline.data.image_folder import image_folder_loader

    fa = fingerprint.bundle_fingerprint(image_folder_loader("set")(tmp_path / "x"))
    fb = fingerprint.bundle_fingerprint(image_folder_loader("set")(b.parent))
    assert fa == fb and fa.startswith("sha256:") and len(fa) == 7 + 64
    # a loader of another kind of dataset: keyed by path, said so
    assert fingerprint.bundle_fingerprint(type("B", (), {"train": [], "test": [], "train_targets": [],
                                                         "test_targets": [], "train_domains": None,
                                                         "test_domains": None})()) is None


# ------------------------------------------------------------------ user datasets everywhere


def test_a_declared_dataset_is_checked_and_an_unknown_one_named(tmp_path):
    root = _data(tmp_path / "data")
    from pipeline.data import registry

    cfg = _cfg(root, tmp_path / "s")
    runner.check_datasets(cfg)
    # resolved through the config, never registered: the process's registry is unchanged
    assert "mydata" not in DATASETS
    assert getattr(registry.datasets_for(cfg.datasets)["mydata"], "declared").folder == "my_photos"
    bad = load_config(None, [f"data_root={root}", "scenarios=[{dataset: nothing_here, tasks: 2}]"])
    with pytest.raises(runner.DataCheckError, match=r"unknown dataset 'nothing_here'.*declare your own under"):
        runner.check_datasets(bad)


def test_a_python_registration_travels_with_the_config(tmp_path, monkeypatch):
    from ray import cloudpickle

    from pipeline.data.image_folder import register_image_folder

    import pipeline.data.registry as registry

    root = _data(tmp_path / "data")
    register_image_folder("pyset", ["a {} here."], folder="my_photos")
    cfg = load_config(None, [f"data_root={root}", "scenarios=[{dataset: pyset, tasks: 2}]"])
    blob = cloudpickle.dumps(cfg)  # as Ray ships it to a Train worker or evaluator
    del registry.DATASETS["pyset"]  # (what a fresh worker process lacks)
    got = pickle.loads(blob)
    assert got == cfg and hash(got) == hash(cfg)
    assert registry.load_dataset("pyset", root).templates == ["a {} here."]
    # a declared dataset is not shipped: every process registers it from the config itself
    declared = _cfg(root, tmp_path / "s")
    assert carried_loaders([n for s in declared.scenarios for n in s.members]) == {}
    # declared and registered in Python under one name: refused before Ray starts
    register_image_folder("mydata", folder="my_photos", overwrite=True)
    with pytest.raises(runner.DataCheckError, match="declared in the config and also registered in Python"):
        runner.check_datasets(declared)


@pytest.mark.slow
def test_user_datasets_run_end_to_end_through_train_workers_and_evaluators(tmp_path, ray_session, monkeypatch):
    """One dataset declared in the config file, one registered in Python before main(): a
    multi-dataset scenario over both, fine-tuned by a real Train worker group (num_workers=1)
    and evaluated by evaluation tasks, each a process that has neither registration by itself."""
    from jobs import run_benchmark
    from pipeline.data.image_folder import register_image_folder

    data = tmp_path / "data"
    write_image_folder(data / "declared_photos", classes=4, seed=1)
    write_image_folder(data / "python_photos", classes=3, seed=2)
    register_image_folder("from_python", ["a {} in python."], folder="python_photos")  # the README's way
    config = tmp_path / "user.yaml"
    config.write_text(yaml.safe_dump({
        "name": "user", "data_root": str(data), "storage": str(tmp_path / "storage"),
        "datasets": {"from_config": {"kind": "image_folder", "folder": "declared_photos",
                                     "templates": ["a photo of a {}.", "a {} shape."]}},
        "scenarios": [{"kind": "multi_dataset", "datasets": ["from_config", "from_python"]}],
        "methods": ["zero_shot", "seq_ft", "magmax"],
        "finetune": {"lr": 1e-3, "batch_size": 8, "epochs": 1, "warmup_steps": 1, "loader_workers": 0,
                     "train_transform": "eval"},
        "merge": {"sweep_lambdas": [0.5], "sweep_methods": ["magmax"]},
        "ray": {"num_workers": 1, "cpus_per_worker": 1, "eval_cpus": 0.5, "tune_sweep": False},
    }))
    monkeypatch.chdir(ROOT)
    assert run_benchmark.main(["--config", str(config), "--no-report"]) == 0
    run_dir = tmp_path / "storage" / "user"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["fine_tuned_tasks"] == 2 and summary["magmax"] is not None and not summary["failures"]
    record = json.loads((run_dir / runner.DATA_RECORD).read_text())["fingerprints"]
    assert set(record) == {"from_config", "from_python"}
    ckpts = sorted((tmp_path / "storage" / "checkpoints").rglob("task_*.safetensors"))
    assert len(ckpts) == 2
    # the same data and storage moved elsewhere: nothing is fine-tuned or evaluated again
    shutil.move(str(data), str(tmp_path / "moved_data"))
    shutil.move(str(tmp_path / "storage"), str(tmp_path / "moved_storage"))
    shutil.rmtree(tmp_path / "moved_storage" / "user" / "results")  # (so that the run has work to do)
    argv = ["--config", str(config), "--no-report", f"data_root={tmp_path / 'moved_data'}",
            f"storage={tmp_path / 'moved_storage'}"]
    assert run_benchmark.main(argv) == 0
    again = json.loads((tmp_path / "moved_storage" / "user" / "summary.json").read_text())
    assert again["fine_tuned_tasks"] == 0 and again["magmax"] == summary["magmax"]
