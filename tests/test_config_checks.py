"""Every bad value is refused when the config is read, in one line that names the key or file."""

from __future__ import annotations

import pytest

from pipeline.config import ConfigError, load_config


@pytest.mark.parametrize("override, key", [
    ("finetune.epochs=-1", "finetune.epochs"),
    ("finetune.warmup_steps=-5", "finetune.warmup_steps"),
    ("finetune.grad_clip=-1", "finetune.grad_clip"),
    ("finetune.lwf_temperature=0", "finetune.lwf_temperature"),
    ("finetune.ewc_fisher=fancy", "finetune.ewc_fisher"),
    ("finetune.micro_batch_size=-2", "finetune.micro_batch_size"),
    ("finetune.train_transform=random", "finetune.train_transform"),
    ("eval_batch_size=0", "eval_batch_size"),
    ("max_eval_per_class=-1", "max_eval_per_class"),
    ("name=../../x", "name"),
    ("name=.", "name"),
    ("name=a/b", "name"),
    ("storage=", "storage"),
    ("data_root=", "data_root"),
    ("merge.sweep_methods=[magmax,magmaxx]", r"merge.sweep_methods\[1\]"),
    ("merge.sweep_methods=[joint]", r"merge.sweep_methods\[0\]"),
    ("merge.sign_conflict_top_k=5", "merge.sign_conflict_top_k"),
    ("merge.ties_scope=text_tower", "merge.ties_scope"),
    ("merge.ties_entries=more", "merge.ties_entries"),
    ("ray.eval_cpus=0", "ray.eval_cpus"),
    ("scenarios.3.tasks=2", r"scenarios.3.tasks: scenarios has 1 entry"),
    ("scenarios.x.tasks=2", "unknown config key 'scenarios.x.tasks'"),
    ("finetune.lr=[1,", r"finetune.lr: the value '\[1,' is not valid YAML at character 4"),
    ("finetune={lr: 1", "finetune: the value .* is not valid YAML"),
    ("name=d\udce9mo", "name: the value is not UTF-8 text"),  # (bytes the shell passed, not UTF-8)
])
def test_a_bad_value_names_its_key(override, key):
    with pytest.raises(ConfigError, match=key) as err:
        load_config("configs/demo.yaml", [override])
    assert "\n" not in str(err.value)


def test_good_values_pass():
    cfg = load_config("configs/demo.yaml", ["name=run-1.b", "finetune.ewc_fisher=reference",
                                            "merge.sweep_methods=[magmax,ties_seq]", "merge.ties_scope=whole_model"])
    assert cfg.name == "run-1.b" and cfg.merge.sweep_methods == ("magmax", "ties_seq")


@pytest.mark.parametrize("content, expected", [
    (b"", "the file is empty"),
    (b"# only a comment\n", "the file is empty"),
    (b"name: demo\nfinetune: {lr: 1e-5\n", r"line \d+, column \d+: YAML syntax error"),
    (b"name: d\xe9mo\n", "not UTF-8"),
    (b"- a\n- b\n", "top level must be a mapping"),
    (b"finetune:\n  lrr: 1\n", "unknown config key 'finetune.lrr'"),
])
def test_a_bad_file_is_named_in_one_line(tmp_path, content, expected):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=expected) as err:
        load_config(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_missing_or_unknown_dataset_is_found_before_ray_starts(tmp_path, demo_data_root, monkeypatch):
    from pipeline.orchestration import runner

    started = []
    monkeypatch.setattr(runner, "init_ray", lambda *a, **k: started.append(1))
    cfg = load_config("configs/demo.yaml", [f"data_root={tmp_path / 'nothing'}", "demo_data=false",
                                            f"storage={tmp_path / 'out'}"])
    with pytest.raises(runner.DataCheckError, match=r"dataset 'demo_shapes'.*\n.*searched: .*nothing"):
        runner.run_benchmark(cfg, log=lambda *_: None)
    cfg = load_config("configs/demo.yaml", [f"data_root={demo_data_root}", "demo_data=false",
                                            "scenarios.0.dataset=my_data", f"storage={tmp_path / 'out2'}"])
    with pytest.raises(runner.DataCheckError, match=r"scenarios\[0\].dataset: unknown dataset 'my_data'"):
        runner.run_benchmark(cfg, log=lambda *_: None)
    assert not started  # (another test may have started Ray in this process: init_ray is what is watched)
    runner.check_datasets(load_config("configs/demo.yaml", [f"data_root={demo_data_root}"]))  # present: passes


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    from jobs import run_benchmark
    from pipeline.orchestration import runner

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_benchmark", interrupted)
    assert run_benchmark.main(["--config", "configs/demo.yaml"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "interrupted; rerun the same command to resume"


def test_a_bad_config_exits_2_with_one_line(tmp_path, capsys):
    from jobs import run_benchmark

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: demo\nfinetune: {lr: 1e-5\n")
    assert run_benchmark.main(["--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(bad) in err and "YAML syntax error" in err
