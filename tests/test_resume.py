"""Nothing lost, nothing done twice: epoch-level resume, content-addressed sharing, the MagMax actor."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch

from pipeline.config import load_config
from pipeline.merging import magmax
from pipeline.storage import CheckpointStore, read_tensors
from pipeline.chain import run_chain
from pipeline.units import ChainUnit, checkpoint_key


@pytest.fixture(scope="module")
def scn(demo_data_root):
    from pipeline.scenario import build_scenario

    cfg = load_config("configs/demo.yaml", [f"data_root={demo_data_root}", "demo_data=false", "finetune.epochs=3",
                                            "finetune.batch_size=50", "scenarios.0.tasks=5"])
    return build_scenario(cfg, cfg.scenarios[0])


class Crash(RuntimeError):
    pass


def _crash_at(task: int, epoch: int):
    def hook(t: int, e: int, loss: float) -> None:
        if (t, e) == (task, epoch):
            raise Crash(f"worker lost in task {t} epoch {e + 1}")
    return hook


def _with_fisher(scn, fisher: str):
    """The same scenario with ``finetune.ewc_fisher`` set (the chain reads it from ``scn.cfg``)."""
    from dataclasses import replace

    other = copy.copy(scn)
    other.cfg = replace(scn.cfg, finetune=replace(scn.cfg.finetune, ewc_fisher=fisher))
    return other


@pytest.mark.parametrize("mode", ["seq", "lwf", "ewc", "ewc_reference"])
def test_a_chain_killed_mid_task_resumes_to_the_same_weights(scn, tmp_path, mode):
    if mode.startswith("ewc"):
        # the reference Fisher starts from the last training step's gradient: a resumed chain
        # must read the Fisher saved after task 0, it cannot rebuild it from the weights
        scn = _with_fisher(scn, "reference" if mode == "ewc_reference" else "empirical")
        mode = "ewc"
    unit = ChainUnit(scn.scenario, mode, (0, 1))
    clean = run_chain(scn, unit, tmp_path / "clean")

    store = CheckpointStore(tmp_path / "faulty")
    with pytest.raises(Crash):
        run_chain(scn, unit, store.folder, on_epoch_done=_crash_at(1, 1))
    assert store.has(0) and not store.has(1)
    assert os.path.exists(store.fisher_file(0)) == (mode == "ewc")
    saved = store.load_epoch(1, scn.theta0)
    assert saved is not None and saved.epoch == 1  # the second epoch was lost, the first kept

    epochs_run = []
    resumed = run_chain(scn, unit, store.folder, on_epoch_done=lambda t, e, loss: epochs_run.append((t, e)))
    assert epochs_run == [(1, 1), (1, 2)]  # only what was lost is redone
    assert not os.path.exists(store.epoch_file(1))
    assert not any(os.path.exists(store.fisher_file(t)) for t in (0, 1))  # a finished chain keeps none
    for a, b in zip(clean, resumed):
        want, got = read_tensors(a), read_tensors(b)
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-6, atol=1e-7, msg=key)


def test_an_ewc_chain_without_its_saved_fisher_rebuilds_it_and_says_so(scn, tmp_path, capsys):
    scn = _with_fisher(scn, "reference")
    unit = ChainUnit(scn.scenario, "ewc", (0, 1))
    store = CheckpointStore(tmp_path / "u")
    with pytest.raises(Crash):
        run_chain(scn, unit, store.folder, on_epoch_done=_crash_at(1, 0))
    os.remove(store.fisher_file(0))  # as a run written before the Fisher was kept
    run_chain(scn, unit, store.folder)
    assert store.has(1)
    assert "EWC: no saved Fisher after task 0" in capsys.readouterr().err


def test_a_finished_chain_is_not_trained_again(scn, tmp_path):
    unit = ChainUnit(scn.scenario, "ind", (0, 1))
    run_chain(scn, unit, tmp_path / "u")
    epochs_run = []
    run_chain(scn, unit, tmp_path / "u", on_epoch_done=lambda t, e, loss: epochs_run.append((t, e)))
    assert epochs_run == []


def test_checkpoint_keys_share_exactly_what_is_the_same(scn):
    from dataclasses import replace

    cfg = scn.cfg
    s = scn.scenario
    key = lambda c, mode, sc=s: checkpoint_key(c, sc, mode)  # noqa: E731
    other_start = replace(cfg, finetune=replace(cfg.finetune, start_from="zero"))
    # the starting point matters for chains, not for independent fine-tuning (Table 6 shares it)
    assert key(cfg, "seq") != key(other_start, "seq")
    assert key(cfg, "ind") == key(other_start, "ind")
    # how Ray runs a unit and how results are evaluated do not change the weights
    assert key(cfg, "seq") == key(replace(cfg, name="x", ray=replace(cfg.ray, num_workers=4),
                                          eval_batch_size=7, merge=replace(cfg.merge, magmax_lambda=0.3)), "seq")
    assert key(cfg, "ind") != key(replace(cfg, seed=6), "ind")
    assert key(cfg, "lwf") != key(replace(cfg, finetune=replace(cfg.finetune, lwf_lambda=0.5)), "lwf")
    assert key(cfg, "seq") == key(replace(cfg, finetune=replace(cfg.finetune, lwf_lambda=0.5)), "seq")
    # a scenario's display name is not part of what it is
    assert key(cfg, "seq") == key(cfg, "seq", replace(s, name="renamed"))
    assert key(cfg, "seq") != key(cfg, "seq", replace(s, tasks=10))
    # ChainUnit.key groups independent tasks however they are split into Train runs
    assert ChainUnit(s, "ind", (0,)).key(cfg) == ChainUnit(s, "ind", (0, 1, 2)).key(cfg)


def test_store_on_a_uri_round_trips(tmp_path, scn):
    from pipeline.storage import TrainState

    store = CheckpointStore(f"file://{tmp_path}/remote/unit")
    weights = {k: v + 1 for k, v in scn.theta0.items()}
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.ones(3))])
    opt.param_groups[0]["params"][0].grad = torch.ones(3)
    opt.step()
    store.save_epoch(0, TrainState(2, weights, opt.state_dict()))
    back = store.load_epoch(0, scn.theta0)
    assert back.epoch == 2
    torch.testing.assert_close(back.optimizer["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    store.save(0, weights, {"task": "0"})
    assert store.has(0) and store.load_epoch(0, scn.theta0) is None  # epoch state dropped once done
    assert store.metadata(0)["task"] == "0"
    torch.testing.assert_close(store.load(0, scn.theta0), weights)
    assert (tmp_path / "remote" / "unit" / "task_000.safetensors").is_file()


def test_a_torn_epoch_state_costs_an_epoch_not_the_run(scn, tmp_path):
    store = CheckpointStore(tmp_path)
    (tmp_path / "task_000.epoch.safetensors").write_bytes(b"\x00\x01 torn")
    assert store.load_epoch(0, scn.theta0) is None


def _four_task_vectors() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [{"w": torch.randn(64, 8, generator=g), "b": torch.randn(8, generator=g)} for _ in range(4)]


def test_the_magmax_state_survives_a_restart_and_folds_a_retry_once(tmp_path):
    # the actor's logic without Ray: a "restart" is a new MagMaxState on the same root folder
    from pipeline.orchestration.magmax_actor import MagMaxState

    tvs = _four_task_vectors()
    root = str(tmp_path / "actors")
    state = MagMaxState(root)
    assert state.add("s-seq", "t0", tvs[0]) == 1
    assert state.add("s-seq", "t1", tvs[1]) == 2
    state = MagMaxState(root)  # restarted: the key's persisted state is reloaded on its next call
    assert state.folded_tags("s-seq") == ["t0", "t1"]
    assert state.add("s-seq", "t1", tvs[1]) == 2  # a retried fold is not folded twice
    assert state.add("s-seq", "t2", tvs[2]) == 3
    # another key in between (the next mode or scenario) neither sees nor changes this one
    assert state.add("s-lwf", "t0", tvs[3]) == 1
    assert state.folded_tags("s-lwf") == ["t0"]
    state = MagMaxState(root)
    assert state.add("s-seq", "t3", tvs[3]) == 4
    assert state.folded_tags("s-seq") == ["t0", "t1", "t2", "t3"]
    got, want = state.value("s-seq"), magmax(tvs)
    assert set(got) == set(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key
    got["w"].zero_()  # value() hands out copies: the running state is not the caller's to change
    assert torch.equal(state.value("s-seq")["w"], want["w"])
    lone = state.value("s-lwf")
    for key in want:
        assert torch.equal(lone[key], tvs[3][key]), key
    # a scenario run again starts its key from nothing, on storage too
    state.reset("s-seq")
    assert state.folded_tags("s-seq") == [] and MagMaxState(root).folded_tags("s-seq") == []
    assert MagMaxState(str(tmp_path / "fresh")).folded_tags("s-seq") == []
    state.release()
    assert state.key is None


@pytest.mark.slow
def test_killing_the_magmax_actor_mid_sequence_keeps_the_merged_vector(ray_session, tmp_path):
    import ray

    from pipeline.orchestration.magmax_actor import MagMaxActor
    from pipeline.orchestration.runner import state_api_available

    tvs = _four_task_vectors()
    actor = MagMaxActor.remote(str(tmp_path / "actors"))
    assert ray.get(actor.add.remote("s-seq", "t0", tvs[0])) == 1
    assert ray.get(actor.add.remote("s-seq", "t1", tvs[1])) == 2
    ray.kill(actor, no_restart=False)  # Ray restarts it; the key's persisted state is reloaded
    assert ray.get(actor.add.remote("s-seq", "t1", tvs[1])) == 2  # a retried fold is not folded twice
    assert ray.get(actor.add.remote("s-seq", "t2", tvs[2])) == 3
    ray.kill(actor, no_restart=False)
    assert ray.get(actor.add.remote("s-seq", "t3", tvs[3])) == 4
    assert ray.get(actor.folded_tags.remote("s-seq")) == ["t0", "t1", "t2", "t3"]
    got = ray.get(actor.value.remote("s-seq"))
    want = magmax(tvs)
    for key in want:
        assert torch.equal(got[key], want[key]), key
    ray.kill(actor)
    # the suite's session runs without a dashboard: the real probe says so (the driver's warning
    # that follows from it is checked without Ray below)
    assert state_api_available() is False


def test_a_run_folder_refuses_results_of_another_config(scn, tmp_path):
    from dataclasses import replace

    import yaml

    from pipeline.config import ConfigError, to_dict
    from pipeline.orchestration.runner import check_run_dir

    cfg = scn.cfg
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    check_run_dir(cfg, str(tmp_path))
    check_run_dir(replace(cfg, ray=replace(cfg.ray, num_workers=3)), str(tmp_path))  # how it runs: fine
    with pytest.raises(ConfigError, match=r"different config \(differs in \['finetune'\]\)"):
        check_run_dir(replace(cfg, finetune=replace(cfg.finetune, lr=0.5)), str(tmp_path))
    # a config saved before a key existed is the same config when the key has its default
    older = to_dict(cfg)
    del older["finetune"]["ewc_fisher_batches"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(older))
    check_run_dir(cfg, str(tmp_path))


def test_plan_shares_units_and_sees_the_cache(scn, tmp_path):
    from dataclasses import replace

    from pipeline.config import ScenarioConfig
    from pipeline.orchestration.plan import build_plan, format_plan

    cfg = replace(scn.cfg, storage=str(tmp_path), scenarios=(
        ScenarioConfig(dataset="demo_shapes", tasks=2, class_order_seed=1993),
        ScenarioConfig(dataset="demo_shapes", tasks=2, class_order_seed=1993, name="same-again"),
        ScenarioConfig(dataset="demo_shapes", tasks=4, class_order_seed=1993)))
    plan = build_plan(cfg)
    # the renamed scenario shares all 5; the 4-task scenario shares Joint (one per dataset)
    assert plan.requested == 3 * 5 and len(plan.units) == 2 * 5 - 1
    assert all(not u.cached for u in plan.units)
    seq = next(u for u in plan.units if u.unit.mode == "seq" and u.unit.scenario.tasks == 2)
    assert seq.scenarios == ["demo_shapes/2", "same-again"]
    CheckpointStore(seq.folder).save(0, scn.theta0, {})
    again = build_plan(cfg)
    assert next(u for u in again.units if u.folder == seq.folder).cached == [0]
    text = format_plan(again)
    assert "9 (15 requested by scenario; 6 shared)" in text and "GPU-hours left" in text
    train_h, eval_h, unknown = again.gpu_hours_left()
    assert train_h > 0 and eval_h > 0 and unknown == []


class _Planted:
    """A pickle that, when loaded, creates a file: proof that storage content ran as code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.slow
def test_an_interrupted_sweep_resumes_from_its_records_and_runs_no_pickle(scn, ray_session, tmp_path):
    import pickle

    from pipeline.orchestration.sweep import run_sweep

    tau = {k: torch.zeros_like(v) for k, v in scn.theta0.items()}
    trials = [{"method": "magmax", "lam": lam, "role": "sweep"} for lam in (0.25, 0.5)] + \
             [{"method": "ties", "lam": 0.5, "role": "sweep"}]
    # the first attempt dies on the TIES trial (its merged vector never arrived)
    with pytest.raises(RuntimeError, match="sweep trial .* failed"):
        run_sweep(scn.cfg, scn.scenario, {"magmax": tau}, trials, str(tmp_path), "sweep-test")
    exp = tmp_path / "sweep-test"
    records = sorted((exp / "trials").glob("*.json"))
    assert len(records) == 2  # the two finished trials
    stamps = {p.name: p.stat().st_mtime_ns for p in records}

    # Tune's own state (pickles of the config) never reaches storage: only the JSON records
    assert sorted(p.relative_to(exp).parts[0] for p in exp.rglob("*") if p.is_file()) == ["trials"] * 2

    # whoever can write the storage plants pickles wherever Tune would keep its state
    marker = tmp_path / "planted-pickle-ran"
    payload = pickle.dumps(_Planted(str(marker)))
    tune_dirs = [exp / "tune-planted", exp / "tune-planted" / "trial_0"]
    for d in tune_dirs:
        d.mkdir(parents=True, exist_ok=True)
    for d in [exp, *tune_dirs]:
        for name in ("tuner.pkl", "trainable.pkl", "experiment_state.pkl"):
            (d / name).write_bytes(payload)
        for found in d.rglob("*.pkl"):
            found.write_bytes(payload)

    out = run_sweep(scn.cfg, scn.scenario, {"magmax": tau, "ties": tau}, trials, str(tmp_path), "sweep-test")
    assert not marker.exists(), "a pickle from storage was loaded"
    assert sorted((t["method"], t["lam"]) for t in out) == [("magmax", 0.25), ("magmax", 0.5), ("ties", 0.5)]
    assert len({t["accuracy"] for t in out}) == 1  # a zero task vector is θ0 whatever λ
    after = {p.name: p.stat().st_mtime_ns for p in (exp / "trials").glob("*.json")}
    assert len(after) == 3
    for name, stamp in stamps.items():  # the finished trials were read, not run again
        assert after[name] == stamp, name


def test_a_damaged_sweep_record_is_evaluated_again_not_trusted(tmp_path):
    from pipeline.orchestration.sweep import _record_path, read_record

    trial = {"method": "magmax", "lam": 0.5, "role": "sweep"}
    assert read_record(str(tmp_path), trial) is None
    path = Path(_record_path(str(tmp_path), trial))
    path.write_text('{"method": "magmax", "lam": 0.5, "role": "sweep", "accuracy": 12.5, "per_task": [10, 15]}')
    assert read_record(str(tmp_path), trial) == {**trial, "accuracy": 12.5, "per_task": [10.0, 15.0]}
    path.write_text('{"method": "magmax", "lam": 0.5, "role": "sw')  # truncated
    assert read_record(str(tmp_path), trial) is None
    path.write_text('{"method": "ties", "lam": 0.5, "role": "sweep", "accuracy": 1, "per_task": []}')
    assert read_record(str(tmp_path), trial) is None  # a record of another trial


def test_a_cluster_without_its_state_api_is_noticed(monkeypatch):
    """The driver's own warning (init_ray) when the cluster it joins has no State API; no Ray runs:
    init_ray's Ray calls are stand-ins, the probe (state_api_available) is the real one, and only
    Ray's State API call under it answers as a cluster with or without its dashboard would."""
    from types import SimpleNamespace

    import ray.util.state

    from pipeline.orchestration import runner

    joined = []
    fake_ray = SimpleNamespace(
        is_initialized=lambda: False, init=lambda **kw: joined.append(kw["address"]),
        get_runtime_context=lambda: SimpleNamespace(gcs_address="10.0.0.1:6379"),
        cluster_resources=lambda: {"CPU": 4.0}, nodes=lambda: [{}, {}])
    monkeypatch.setattr(runner, "ray", fake_ray)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    probes = []

    def no_dashboard(**kw):
        probes.append(kw)
        raise ConnectionError("Failed to connect to API server")

    monkeypatch.setattr(ray.util.state, "list_nodes", no_dashboard)
    told = SimpleNamespace(ray=SimpleNamespace(address="10.0.0.1:6379"))
    lines: list[str] = []
    runner.init_ray(told, log=lines.append)
    assert joined == ["10.0.0.1:6379"] and len(probes) == 1
    warning = [line for line in lines if line.startswith("warning:")]
    assert len(warning) == 1, lines
    assert "dashboard (Ray's State API) does not answer" in warning[0]
    assert "retried unit can wait forever" in warning[0] and "Start the head with the dashboard on" in warning[0]

    # a cluster whose dashboard answers: no warning
    monkeypatch.setattr(ray.util.state, "list_nodes", lambda **kw: probes.append(kw) or [])
    lines.clear()
    runner.init_ray(told, log=lines.append)
    assert len(probes) == 2 and not [line for line in lines if "State API" in line], lines
    # a private local cluster (nothing told): nothing to probe, nothing said
    lines.clear()
    runner.init_ray(SimpleNamespace(ray=SimpleNamespace(address="")), log=lines.append)
    assert joined[-1] == "local" and len(probes) == 2 and not [line for line in lines if "State API" in line]
