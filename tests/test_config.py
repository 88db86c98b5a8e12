import math

import pytest

from pipeline.config import BenchmarkConfig, ConfigError, config_hash, load_config, save_config, to_dict


def test_defaults_and_overrides(tmp_path):
    cfg = load_config(None, ["finetune.lr=1e-4", "scenarios.0.tasks=10", "merge.sweep_lambdas=[0.25,0.5]"])
    assert cfg.finetune.lr == pytest.approx(1e-4)
    assert cfg.scenarios[0].tasks == 10
    assert cfg.merge.sweep_lambdas == (0.25, 0.5)
    assert isinstance(cfg, BenchmarkConfig)


def test_yaml_file_and_scientific_floats(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\nfinetune:\n  lr: 1e-5\nscenarios:\n  - {dataset: cifar100, tasks: 20}\n")
    cfg = load_config(path)
    assert cfg.finetune.lr == pytest.approx(1e-5)
    assert cfg.scenarios[0].label == "cifar100/20"


@pytest.mark.parametrize("override,key", [
    ("finetune.lrr=1", "finetune.lrr"),
    ("bogus=1", "bogus"),
    ("scenarios.0.taks=3", "scenarios.0.taks"),
])
def test_unknown_keys_are_named(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_unknown_key_in_yaml_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("merge:\n  magmax_lambdaa: 0.5\n")
    with pytest.raises(ConfigError, match=r"merge\.magmax_lambdaa"):
        load_config(path)


@pytest.mark.parametrize("override,key", [
    ("finetune.batch_size=abc", "finetune.batch_size"),
    ("finetune.epochs=1.5", "finetune.epochs"),
    ("ray.group_independent=3", "ray.group_independent"),
    ("seed=x", "seed"),
])
def test_wrong_types_are_named(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


@pytest.mark.parametrize("override,key", [
    ("merge.magmax_lambda=2.5", "merge.magmax_lambda"),
    ("merge.ties_lambda=-0.1", "merge.ties_lambda"),
    ("merge.sweep_lambdas=[0.5,3.0]", r"merge.sweep_lambdas\[1\]"),
    ("methods=[magmax,nope]", r"methods\[1\]"),
    ("scenarios.0.tasks=0", r"scenarios\[0\].tasks"),
    ("finetune.precision=fp8", "finetune.precision"),
])
def test_out_of_range_values_are_named(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(None, [override])


def test_nan_rejected():
    with pytest.raises(ConfigError, match="finetune.lr"):
        load_config(None, ["finetune.lr=nan"])


def test_hash_is_stable_and_sensitive(tmp_path):
    a = load_config(None, [])
    b = load_config(None, [])
    c = load_config(None, ["seed=6"])
    assert config_hash(a) == config_hash(b) != config_hash(c)
    saved = save_config(a, tmp_path / "config.yaml")
    again = load_config(saved)
    assert to_dict(again) == to_dict(a)
    assert not math.isnan(again.finetune.lr)
