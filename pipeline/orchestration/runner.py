"""The benchmark driver: plan units, fine-tune on Ray Train, merge in actors, sweep on Tune, write Parquet.

Everything expensive is cached under ``storage`` (a local folder or a pyarrow URI): fine-tuned
checkpoints by content address (``checkpoints/<key>/task_NNN.safetensors``, shared by every run
and table that needs them), results per scenario and part
(``<run>/results/<scenario>/<part>.parquet``). A rerun skips whatever already exists, and a run
whose results all exist does not even start Ray. A unit that fails for good is recorded in its
scenario's ``failures.json``; the other units and scenarios finish, and a rerun retries it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import ray
import yaml

from pipeline import methods as method_table
from pipeline import storage
from pipeline.config import (BenchmarkConfig, ConfigError, ScenarioConfig, config_yaml, from_dict, redact,
                             result_identity)
from pipeline.data import DatasetNotFoundError, fingerprint, load_dataset, registry
from pipeline.data.demo_world import write_image_folder
from pipeline.data.synthetic import TINY_WRITERS, write_tiny_datasets
from pipeline.metrics import paired_difference
from pipeline.orchestration.lease import Leases
from pipeline.orchestration.plan import (
    num_tasks,
    scenario_units,
    Plan,
    build_plan,
    scenario_dir,
    scenario_done,
    verify_cached,
)
from pipeline.orchestration.progress.monitor import Monitor
from pipeline.orchestration.scenario_results import Folds, run_scenario, short_error, summarize
from pipeline.orchestration.train import UnitDriver, driving_options, fit_unit_task, unit_finished, use_gpu
from pipeline.results import read_run
from pipeline.units import ChainUnit

Log = Callable[[str], None]


def resolve_paths(cfg: BenchmarkConfig) -> BenchmarkConfig:
    """Absolute data and storage paths: Train workers and Tune trials run in scratch directories."""
    def absolute(p: str) -> str:
        return p if "://" in p else str(Path(p).expanduser().resolve())

    return replace(cfg, data_root=absolute(cfg.data_root), storage=absolute(cfg.storage))


def init_ray(cfg: BenchmarkConfig, log: Log = print) -> None:
    if ray.is_initialized():
        return
    # join a cluster only when told (ray.address, or RAY_ADDRESS as `ray job submit` sets it):
    # a bare ray.init() would also join any `ray start` cluster that happens to run on this machine
    told = cfg.ray.address or os.environ.get("RAY_ADDRESS") or ""
    address = told or "local"
    start = time.time()
    ray.init(address=address, include_dashboard=False, log_to_driver=False,
             configure_logging=True, logging_level="ERROR")
    where = f"joined {told} (gcs {ray.get_runtime_context().gcs_address})" if told else "started a private local cluster"
    log(f"ray: {where}, "
        f"{ray.cluster_resources().get('CPU', 0):.0f} CPUs, {ray.cluster_resources().get('GPU', 0):.0f} GPUs, "
        f"{len(ray.nodes())} node(s) ({time.time() - start:.1f}s)")
    if told and not state_api_available():
        log("warning: this cluster's dashboard (Ray's State API) does not answer. Ray Train needs it to "
            "release a lost Train controller's placement group: if a node that drives a unit dies, the "
            "retried unit can wait forever for the CPUs/GPUs that group still holds. Start the head with "
            "the dashboard on (the default; cluster.yaml keeps it on the head's loopback).")


def state_api_available() -> bool:
    """Whether the connected cluster's State API (served by the dashboard) answers."""
    from ray.util.state import list_nodes

    try:
        list_nodes(limit=1, timeout=10)
    except Exception:  # noqa: BLE001 - any failure means Train's cleaner cannot use it either
        return False
    return True


def prepare_data(cfg: BenchmarkConfig, log: Log = print) -> None:
    if cfg.demo_data and any(s.dataset == "demo_shapes" for s in cfg.scenarios):
        target = Path(cfg.data_root) / "demo_shapes"
        if not (target / "test").is_dir():
            log(f"writing the demo world to {target}")
        write_image_folder(target, seed=0)
    if cfg.profile == "tiny" and "://" not in cfg.data_root:
        wanted = {d for s in cfg.scenarios for d in s.members if d in TINY_WRITERS}
        written = write_tiny_datasets(cfg.data_root, wanted)
        if written:
            log(f"profile=tiny: generated {', '.join(written)} under {cfg.data_root}")


class DataCheckError(ConfigError):
    """A dataset the config needs is unknown or not where ``data_root`` says (found before Ray starts)."""


def check_datasets(cfg: BenchmarkConfig) -> None:
    """Every dataset the config reads is registered and laid out as its loader expects.

    The loaders list files and read metadata without decoding images, so this costs seconds, and
    a missing dataset is reported before Ray starts rather than from inside a Train worker. Each
    dataset's content fingerprint (file list with sizes, or array digests) is taken from the same
    load, for the checkpoint keys and the run's identity. A ``data_root`` URI is left to the workers.
    """
    if "://" in cfg.data_root:
        return
    twice = sorted(registry.carried_loaders([d.name for d in cfg.datasets]))
    if twice:
        raise DataCheckError(f"datasets.{twice[0]}: declared in the config and also registered in Python "
                             f"(register_dataset); keep one of the two")
    DATASETS = registry.datasets_for(cfg.datasets)  # (this process's registry and the config's declarations)
    seen: set[str] = set()
    for i, s in enumerate(cfg.scenarios):
        for name in s.members:
            if name in seen:
                continue
            seen.add(name)
            if name not in DATASETS:
                where = f"scenarios[{i}].dataset" + ("s" if s.kind == "multi_dataset" else "")
                raise DataCheckError(f"{where}: unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))} "
                                     f"(declare your own under `datasets:` or register it in Python)")
            try:
                fingerprint.remember(name, cfg.data_root,
                                     load_dataset(name, Path(cfg.data_root), declared=cfg.datasets), cfg.datasets)
            except DatasetNotFoundError as err:
                raise DataCheckError(f"data_root={cfg.data_root}: {err}") from None


# <run>/data.json: the fingerprints of the data the run's results were computed on
DATA_RECORD = "data.json"


def _data_fingerprints(cfg: BenchmarkConfig) -> dict[str, str | None]:
    """Each dataset's fingerprint (pipeline.data.fingerprint; None: not here)."""
    names = dict.fromkeys(n for s in cfg.scenarios for n in s.members)
    return {n: fingerprint.dataset_fingerprint(n, cfg.data_root, cfg.datasets) for n in names}


def _read_data_record(run_dir: str) -> dict[str, str] | None:
    path = storage.join(run_dir, DATA_RECORD)
    if not storage.exists(path):
        return None
    try:
        record = json.loads(storage.read_text(path))["fingerprints"]
        return {str(k): str(v) for k, v in record.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ConfigError(f"{path} is not a data record this version can read ({err}); choose another "
                          f"name= or storage=, or delete that run folder") from err


def record_data(cfg: BenchmarkConfig, run_dir: str) -> None:
    """Write the run's data record once every dataset's fingerprint is known (unchanged: not rewritten)."""
    fps = redact(_data_fingerprints(cfg))
    if None in fps.values():
        return
    saved = _read_data_record(run_dir) or {}
    if any(saved.get(n) != fp for n, fp in fps.items()):
        text = json.dumps({"fingerprints": {**saved, **fps}}, indent=2, sort_keys=True)
        storage.write_text(storage.join(run_dir, DATA_RECORD), text)


def check_run_dir(cfg: BenchmarkConfig, run_dir: str) -> None:
    """Refuse to mix results of two configs, or of two versions of the data, under one run name
    (a rerun would skip stale parts). The data is compared by content fingerprint where both the
    run's record and the data here are known; a run from before data records, by data_root."""
    path = storage.join(run_dir, "config.yaml")
    if not storage.exists(path):
        return
    try:
        # through the config classes, so keys added since (with their defaults) are no difference
        saved_cfg = from_dict(yaml.safe_load(storage.read_text(path)) or {})
    except ConfigError as err:
        raise ConfigError(f"{path} is not a config this version can read ({err}); choose another name= "
                          f"or storage=, or delete that run folder") from err
    saved = redact(result_identity(saved_cfg))
    mine = redact(result_identity(cfg))  # config.yaml is saved with URI credentials redacted
    diff = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
    record = _read_data_record(run_dir)
    if record is None:
        if redact(saved_cfg.data_root) != redact(cfg.data_root):
            diff.append("data_root")
    else:
        fps = redact(_data_fingerprints(cfg))
        diff += [f"data of {n}" for n, fp in fps.items() if fp is not None and n in record and record[n] != fp]
    if diff:
        raise ConfigError(f"{run_dir} holds results of a different config (differs in {diff}); "
                          f"choose another name= or storage=, or delete that run folder")


def _save_config(cfg: BenchmarkConfig, run_dir: str) -> None:
    """Write ``config.yaml`` (credentials redacted) unless the saved one already says the same.
    Where storage or data live is not part of what the run is, so a run folder moved or copied
    elsewhere (possibly read-only) keeps its file untouched."""
    path, text = storage.join(run_dir, "config.yaml"), config_yaml(cfg)
    if storage.exists(path):
        old = storage.read_text(path)
        if old == text:
            return
        where = ("storage", "data_root")
        strip = lambda t: {k: v for k, v in (yaml.safe_load(t) or {}).items() if k not in where}  # noqa: E731
        if strip(old) == strip(text):
            return
    storage.write_text(path, text)


def run_benchmark(cfg: BenchmarkConfig, log: Log = print) -> dict[str, Any]:
    """Run every scenario of ``cfg``; returns the summary of the first scenario (plus failures).
    With ``seeds``, the whole plan runs once per seed, each under ``<name>/seed-<s>``, and the
    summary holds each headline's mean and std over seeds and its paired test against MagMax."""
    if cfg.seeds:
        return run_seeds(cfg, log)
    return _run_one_seed(cfg, log)


def run_seeds(cfg: BenchmarkConfig, log: Log = print) -> dict[str, Any]:
    start = time.time()
    cfg = resolve_paths(cfg)
    run_dir = storage.join(cfg.storage, cfg.name)
    check_run_dir(cfg, run_dir)  # one multi-seed run per name: a single-seed run there is refused
    _save_config(cfg, run_dir)
    per_seed = {}
    for i, seed in enumerate(cfg.seeds):
        log(f"seed {seed} ({i + 1} of {len(cfg.seeds)})")
        per_seed[seed] = _run_one_seed(replace(cfg, seed=seed, seeds=(), name=f"{cfg.name}/seed-{seed}"), log)
    summary = seed_summary(per_seed)
    summary["wall_seconds"] = round(time.time() - start, 1)
    _write_summary(run_dir, summary, log, finished=True)  # (a seed that failed raised above)
    return summary


def seed_summary(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample std over seeds of every numeric headline, and each method's paired
    difference from MagMax over seeds with its two-sided paired t-test p-value; the same for
    every variant (``variants``: ``tsv`` and ``tsv_seq`` apart) under ``variants``."""
    seeds = sorted(per_seed)
    keys = [k for k, v in per_seed[seeds[0]].items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and k not in ("wall_seconds", "fine_tuned_tasks")]
    mean, std, vs = _over_seeds({k: [per_seed[s].get(k) for s in seeds] for k in keys})
    names = sorted({k for s in seeds for k in per_seed[s].get("variants", {})})
    v_mean, v_std, v_vs = _over_seeds({k: [per_seed[s].get("variants", {}).get(k) for s in seeds] for k in names})
    failures = [f for s in seeds for f in per_seed[s].get("failures", [])]
    return {"seeds": seeds, "mean": mean, "std": std, "vs_magmax": vs,
            "variants": {"mean": v_mean, "std": v_std, "vs_magmax": v_vs},
            "per_seed": {str(s): per_seed[s] for s in seeds}, "failures": failures}


def _over_seeds(values: dict[str, list[float | None]]) -> tuple[dict, dict, dict]:
    """Mean, sample std and paired test against ``magmax`` (MagMax on sequential fine-tuning) of
    each key measured at every seed."""
    full = {k: v for k, v in values.items() if all(x is not None for x in v)}
    mean = {k: round(float(np.mean(v)), 2) for k, v in full.items()}
    std = {k: round(float(np.std(v, ddof=1)), 2) if len(v) > 1 else 0.0 for k, v in full.items()}
    vs = {}
    if "magmax" in full:
        for k, v in full.items():
            if k in method_table.known() and k != "magmax":
                diff, p = paired_difference(v, full["magmax"])
                vs[k] = {"difference": round(diff, 2), "p_value": None if p is None else round(p, 4)}
    return mean, std, vs


def _run_one_seed(cfg: BenchmarkConfig, log: Log = print) -> dict[str, Any]:
    start = time.time()
    cfg = resolve_paths(cfg)
    run_dir = storage.join(cfg.storage, cfg.name)
    work = not all(scenario_done(run_dir, s) for s in cfg.scenarios)
    if work:
        # the data before anything else: its fingerprints are part of the run's identity and of
        # every checkpoint key (a finished run needs no data: what is not here is not compared)
        prepare_data(cfg, log)
        check_datasets(cfg)
    check_run_dir(cfg, run_dir)
    _save_config(cfg, run_dir)
    record_data(cfg, run_dir)
    plan = build_plan(cfg)
    failures: list[dict[str, str]] = []
    if all(plan.scenarios_done.values()):
        log(f"{cfg.name}: every scenario's results exist under {run_dir}; nothing to do")
    else:
        verify_cached(plan)  # a damaged checkpoint is moved aside and fine-tuned again below
        if not work:  # (results went missing after the check above)
            prepare_data(cfg, log)
            check_datasets(cfg)
        init_ray(cfg, log)
        outcomes = fit_units(cfg, plan, log)
        folds = Folds(run_dir)  # one MagMax actor for every scenario of the run
        try:
            for s in cfg.scenarios:
                if plan.scenarios_done[s.label]:
                    log(f"{s.label}: results exist in {scenario_dir(run_dir, s)}, skipping")
                    continue
                failures += run_scenario(cfg, s, run_dir, _scenario_paths(cfg, plan, s, outcomes), log, folds)
        finally:
            folds.close()
    summaries = [summarize(read_run(scenario_dir(run_dir, s))) for s in cfg.scenarios
                 if storage.exists(storage.join(scenario_dir(run_dir, s), "final.parquet"))]
    summary = dict(summaries[0]) if summaries else {}
    summary["wall_seconds"] = round(time.time() - start, 1)
    summary["fine_tuned_tasks"] = 0 if all(plan.scenarios_done.values()) else \
        sum(len(u.unit.outputs) - len(u.cached) for u in plan.pending)
    summary["failures"] = failures
    _write_summary(run_dir, summary, log, finished=not plan.pending and all(plan.scenarios_done.values()))
    return summary


def _write_summary(run_dir: str, summary: dict[str, Any], log: Log, *, finished: bool) -> None:
    """Write ``summary.json`` unless the one there says the same (its wall time aside), so a
    finished run on read-only storage reruns and reports; a failed write of a run that computed
    nothing new is said, not raised."""
    path = storage.join(run_dir, "summary.json")
    timeless = lambda d: {k: v for k, v in d.items() if k != "wall_seconds"}  # noqa: E731
    try:
        if storage.exists(path) and timeless(json.loads(storage.read_text(path))) == timeless(
                json.loads(json.dumps(summary))):
            return
    except ValueError:  # (a damaged summary is written again)
        pass
    try:
        storage.write_text(path, json.dumps(summary, indent=2))
    except OSError as err:
        if not finished:
            raise
        log(f"summary.json not rewritten ({type(err).__name__}: the storage is read-only?); the results stand")


def _capacity(cfg: BenchmarkConfig) -> int:
    """How many Train runs to keep in flight: more would only start controllers that wait."""
    if cfg.ray.max_concurrent_units:
        return cfg.ray.max_concurrent_units
    res = ray.cluster_resources()
    workers = max(1, cfg.ray.num_workers)
    slots = res.get("CPU", 1) // (cfg.ray.cpus_per_worker * workers)
    if use_gpu(cfg):
        slots = min(slots, res.get("GPU", 0) // (cfg.ray.gpus_per_worker * workers))
    return max(1, int(slots))


def fit_units(cfg: BenchmarkConfig, plan: Plan, log: Log = print) -> dict[int, list[str] | Exception]:
    """Fine-tune every pending unit of the plan, concurrently; one unit's failure stops only it.

    Each unit is fine-tuned under a lease (``pipeline.orchestration.lease``), so two drivers on
    one storage split the units between them instead of both training all of them.
    """
    outcomes: dict[int, list[str] | Exception] = {}
    for i, u in enumerate(plan.units):
        if u.done:
            outcomes[i] = [storage.join(u.folder, f"task_{t:03d}.safetensors") for t in u.unit.outputs]
    queue = [i for i, u in enumerate(plan.units) if not u.done]
    if not queue:
        return outcomes
    t0 = time.time()
    slots = _capacity(cfg)
    train_root = storage.join(cfg.storage, "ray_train")
    if cfg.ray.num_workers > 0:  # Train runs, all driven from one process (threads)
        driver = UnitDriver.options(**driving_options(cfg.ray.max_failures, slots)).remote()
        submit = driver.fit.remote
    else:  # in-process mode: each unit trains in a driving process of its own
        driver = None
        submit = fit_unit_task.options(**driving_options(cfg.ray.max_failures)).remote
    pending: dict[ray.ObjectRef, int] = {}
    leases = Leases(ttl_s=LEASE_TTL_S)
    told: set[int] = set()
    # progress (issue 13): live lines or timestamped log lines, and <run>/progress.json
    progress = Monitor(cfg, plan, log).start()
    log = progress.wrap(log)
    try:
        while queue or pending:
            # another driver on the same storage may hold a unit: take the others, wait for it
            for i in list(queue):
                if len(pending) >= slots:
                    break
                u = plan.units[i]
                if unit_finished(u.unit, u.folder):  # finished by another driver meanwhile
                    queue.remove(i)
                    outcomes[i] = [storage.join(u.folder, f"task_{t:03d}.safetensors") for t in u.unit.outputs]
                    progress.finished(i)
                elif leases.acquire(u.folder, lease_part(u.unit)):
                    queue.remove(i)
                    pending[submit(cfg, u.unit, u.folder, train_root)] = i
                    progress.started(i)
                elif i not in told:
                    told.add(i)
                    holder = leases.holder(u.folder, lease_part(u.unit)) or {}
                    log(f"unit {u.unit.label} is being fine-tuned by another driver ({holder.get('owner', '?')}); "
                        f"waiting for it")
            if not pending:
                time.sleep(LEASE_POLL_S)
                continue
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=LEASE_POLL_S)
            leases.renew()
            for ref in ready:
                i = pending.pop(ref)
                leases.release(plan.units[i].folder, lease_part(plan.units[i].unit))
                try:
                    outcomes[i] = ray.get(ref)
                    progress.finished(i)
                except Exception as err:  # recorded and reported, the other units go on
                    outcomes[i] = err
                    progress.failed(i, short_error(err))
                    log(f"unit {plan.units[i].unit.label} failed: {short_error(err)}")
    finally:
        leases.release_all()  # (a killed driver's leases expire after LEASE_TTL_S, or at once on its own host)
        progress.close()
        if driver is not None:
            ray.kill(driver)
    log(f"{len(plan.pending)} fine-tuning units run in {time.time() - t0:.1f}s")
    return outcomes


def lease_part(unit: ChainUnit) -> str:
    """The lease name of one Train run within its folder (packed runs share a folder)."""
    mode, outputs = unit.identity
    return f"{mode}-" + "_".join(map(str, outputs))


# A driver renews its units' leases every LEASE_POLL_S; a lease not renewed for LEASE_TTL_S (the
# driver died) lets another driver take the unit over.
LEASE_POLL_S = 5.0
LEASE_TTL_S = 300.0


def _scenario_paths(cfg: BenchmarkConfig, plan: Plan, scenario: ScenarioConfig,
                    outcomes: dict[int, list[str] | Exception]) -> dict[str, list[str] | Exception]:
    """Checkpoint paths per fine-tuning mode of one scenario (or the error that stopped a mode)."""

    index = {(u.unit.key(cfg), u.unit.identity): i for i, u in enumerate(plan.units)}
    paths: dict[str, list[str] | Exception] = {}
    for unit in scenario_units(cfg, scenario, num_tasks(scenario)):
        got = outcomes[index[(unit.key(cfg), unit.identity)]]
        if isinstance(paths.get(unit.mode), Exception):
            continue  # the mode already failed: its first error stands
        if isinstance(got, Exception):
            paths[unit.mode] = got
        else:
            paths.setdefault(unit.mode, []).extend(got)  # type: ignore[union-attr]
    return paths
