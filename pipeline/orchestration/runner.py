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
import math
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import ray
import yaml

from pipeline import analysis, merging, metrics, storage
from pipeline.config import (BenchmarkConfig, ConfigError, ScenarioConfig, config_hash, config_yaml, from_dict,
                             redact, scenario_methods, to_dict)
from pipeline.orchestration.plan import (
    FAILURES_FILE,
    MODE_METHODS,
    Plan,
    build_plan,
    scenario_dir,
    scenario_done,
    verify_cached,
)
from pipeline.results import code_version, make_rows, read_run, write_unit
from pipeline.task_vectors import task_vector

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
        from pipeline.data.demo_world import write_image_folder

        target = Path(cfg.data_root) / "demo_shapes"
        if not (target / "test").is_dir():
            log(f"writing the demo world to {target}")
        write_image_folder(target, seed=0)
    if cfg.profile == "tiny" and "://" not in cfg.data_root:
        from pipeline.data.synthetic import TINY_WRITERS, write_tiny_datasets

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
    from pipeline.data import DatasetNotFoundError, fingerprint, load_dataset, registry
    from pipeline.scenario import register_builtin_extras

    if "://" in cfg.data_root:
        return
    DATASETS = registry.DATASETS  # (the registry's current table, also where a test replaced it)
    twice = sorted(registry.carried_loaders([d.name for d in cfg.datasets]))
    if twice:
        raise DataCheckError(f"datasets.{twice[0]}: declared in the config and also registered in Python "
                             f"(register_dataset); keep one of the two")
    register_builtin_extras(cfg)
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
                fingerprint.remember(name, cfg.data_root, load_dataset(name, Path(cfg.data_root)))
            except DatasetNotFoundError as err:
                raise DataCheckError(f"data_root={cfg.data_root}: {err}") from None


# <run>/data.json: the fingerprints of the data the run's results were computed on
DATA_RECORD = "data.json"


def _data_fingerprints(cfg: BenchmarkConfig) -> dict[str, str | None]:
    """Each dataset's fingerprint (pipeline.data.fingerprint; None: not here)."""
    from pipeline.data import fingerprint
    from pipeline.scenario import register_builtin_extras

    register_builtin_extras(cfg)
    names = dict.fromkeys(n for s in cfg.scenarios for n in s.members)
    return {n: fingerprint.dataset_fingerprint(n, cfg.data_root) for n in names}


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


def _result_identity(cfg: BenchmarkConfig) -> dict:
    """The config minus what cannot change results: how Ray runs it, where storage and data are
    (the data's content is compared through the run's data record instead)."""
    tree = to_dict(cfg)
    tree.pop("ray")
    tree.pop("storage")  # a run folder copied or mounted elsewhere is the same run
    tree.pop("data_root")  # the same data under another path is the same data
    for entry in tree["datasets"]:
        entry.pop("folder")  # (where a declared dataset lies under data_root: its content counts)
    return tree


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
    saved = redact(_result_identity(saved_cfg))
    mine = redact(_result_identity(cfg))  # config.yaml is saved with URI credentials redacted
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
    """Run every scenario of ``cfg``; returns the summary of the first scenario (plus failures)."""
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
        for s in cfg.scenarios:
            if plan.scenarios_done[s.label]:
                log(f"{s.label}: results exist in {scenario_dir(run_dir, s)}, skipping")
                continue
            failures += run_scenario(cfg, s, run_dir, _scenario_paths(cfg, plan, s, outcomes), log)
    summaries = [summarize(read_run(scenario_dir(run_dir, s))) for s in cfg.scenarios
                 if storage.exists(storage.join(scenario_dir(run_dir, s), "final.parquet"))]
    summary = dict(summaries[0]) if summaries else {}
    summary["wall_seconds"] = round(time.time() - start, 1)
    summary["fine_tuned_tasks"] = 0 if all(plan.scenarios_done.values()) else \
        sum(len(u.unit.outputs) - len(u.cached) for u in plan.pending)
    summary["failures"] = failures
    try:
        storage.write_text(storage.join(run_dir, "summary.json"), json.dumps(summary, indent=2))
    except OSError as err:
        if plan.pending or not all(plan.scenarios_done.values()):
            raise
        log(f"summary.json not rewritten ({type(err).__name__}: the storage is read-only?); the results stand")
    return summary


def _capacity(cfg: BenchmarkConfig) -> int:
    """How many Train runs to keep in flight: more would only start controllers that wait."""
    if cfg.ray.max_concurrent_units:
        return cfg.ray.max_concurrent_units
    from pipeline.orchestration.train import use_gpu

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
    from pipeline.orchestration.lease import Leases
    from pipeline.orchestration.train import driving_options, fit_unit_task, unit_finished

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
    driving = fit_unit_task.options(**driving_options(cfg.ray.max_failures))
    pending: dict[ray.ObjectRef, int] = {}
    leases = Leases(ttl_s=LEASE_TTL_S)
    told: set[int] = set()
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
                elif leases.acquire(u.folder):
                    queue.remove(i)
                    pending[driving.remote(cfg, u.unit, u.folder, train_root)] = i
                elif i not in told:
                    told.add(i)
                    holder = leases.holder(u.folder) or {}
                    log(f"unit {u.unit.label} is being fine-tuned by another driver ({holder.get('owner', '?')}); "
                        f"waiting for it")
            if not pending:
                time.sleep(LEASE_POLL_S)
                continue
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=LEASE_POLL_S)
            leases.renew()
            for ref in ready:
                i = pending.pop(ref)
                leases.release(plan.units[i].folder)
                try:
                    outcomes[i] = ray.get(ref)
                except Exception as err:  # recorded and reported, the other units go on
                    outcomes[i] = err
                    log(f"unit {plan.units[i].unit.label} failed: {_short(err)}")
    finally:
        leases.release_all()  # (a killed driver's leases expire after LEASE_TTL_S instead)
    log(f"{len(plan.pending)} fine-tuning units run in {time.time() - t0:.1f}s")
    return outcomes


# A driver renews its units' leases every LEASE_POLL_S; a lease not renewed for LEASE_TTL_S (the
# driver died) lets another driver take the unit over.
LEASE_POLL_S = 5.0
LEASE_TTL_S = 300.0


def _short(err: Exception) -> str:
    text = str(err).strip().splitlines()
    tail = [line for line in text if "Error" in line]
    return (tail[-1] if tail else text[-1] if text else type(err).__name__)[:500]


def _scenario_paths(cfg: BenchmarkConfig, plan: Plan, scenario: ScenarioConfig,
                    outcomes: dict[int, list[str] | Exception]) -> dict[str, list[str] | Exception]:
    """Checkpoint paths per fine-tuning mode of one scenario (or the error that stopped a mode)."""
    from pipeline.orchestration.plan import num_tasks
    from pipeline.orchestration.train import scenario_units

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


def run_scenario(cfg: BenchmarkConfig, scenario: ScenarioConfig, run_dir: str,
                 unit_paths: dict[str, list[str] | Exception], log: Log = print) -> list[dict[str, str]]:
    """Merge, evaluate and sweep one scenario from its fine-tuned checkpoints; write its Parquet.

    Methods whose fine-tuning failed are left out and the failure is written to the scenario's
    ``failures.json`` (removed again once a rerun succeeds). Returns the failures.
    """
    from pipeline.orchestration.evaluate import evaluate_many
    from pipeline.orchestration.magmax_actor import MagMaxActor
    from pipeline.orchestration.sweep import run_sweep
    from pipeline.orchestration.train import eval_resources
    from pipeline.scenario import build_scenario
    from pipeline.storage import read_tensors

    out_dir = scenario_dir(run_dir, scenario)
    parts = {p: storage.join(out_dir, f"{p}.parquet") for p in ("final", "matrix", "sweep", "analysis")}
    failed = {mode: err for mode, err in unit_paths.items() if isinstance(err, Exception)}
    failures = [{"scenario": scenario.label, "mode": mode, "methods": sorted(set(scenario_methods(cfg, scenario)) & MODE_METHODS[mode]),
                 "error": _short(err)} for mode, err in failed.items()]
    paths: dict[str, list[str]] = {m: p for m, p in unit_paths.items() if not isinstance(p, Exception)}
    scn = build_scenario(cfg, scenario)
    T = scn.num_tasks
    common = {"run": cfg.name, "scenario": scenario.label,
              "backbone": scn.clip.name, "seed": cfg.seed, "config_hash": config_hash(cfg),
              "code_version": code_version()}
    methods = set(scenario_methods(cfg, scenario)) - {m for mode in failed for m in MODE_METHODS[mode]}

    # 2. task vectors and merges; the running MagMax vector lives in one actor per mode
    theta0 = scn.theta0
    tvs = {mode: [task_vector(read_tensors(p, theta0), theta0) for p in paths[mode]]
           for mode in ("seq", "ind", "lwf", "ewc", "first") if mode in paths}
    theta0_ref = ray.put(theta0)
    running: dict[str, list[ray.ObjectRef]] = {}
    actors = {}
    for mode, method in (("seq", "magmax"), ("ind", "maxabs"), ("lwf", "lwf_magmax"), ("ewc", "ewc_magmax"),
                         ("first", "magmax_first")):
        if mode in tvs and method in methods:
            state_dir = storage.join(run_dir, "actors", f"{scenario.label.replace('/', '_')}-{mode}")
            # a scenario run again (after a failure) folds from the first task: an actor resumed
            # from the last run's state would skip every fold and give the final vector for each t
            storage.delete(storage.join(state_dir, "running_magmax.safetensors"))
            # all created before the first fold, so their processes start side by side
            actors[method] = (mode, MagMaxActor.options(name=f"magmax:{cfg.name}:{scenario.label}:{mode}",
                                                        get_if_exists=True).remote(state_dir))
    for method, (mode, actor) in actors.items():
        running[method] = []
        for t, (path, tv) in enumerate(zip(paths[mode], tvs[mode])):
            # the tag is the checkpoint's content address: a restarted actor skips what it folded
            ray.get(actor.add.remote(f"{storage.name(storage.parent(path))}/{t}", ray.put(tv)))
            running[method].append(actor.value.remote())
        # results of actor calls are owned by this driver: once they exist, the actor can go
        ray.wait(running[method], num_returns=len(running[method]), fetch_local=False)
        ray.kill(actor)

    m = cfg.merge
    # TIES's trimming scope (merge.ties_scope): the official task vectors span the whole CLIP state
    # dict, so its entries outside the image tower (never trained: zeros) may count in the threshold
    untouched = (sum(v.numel() for v in scn.clip.model.state_dict().values() if v.is_floating_point())
                 - sum(t.numel() for t in theta0.values()))
    trim = merging.trim_options(m.ties_scope, m.ties_entries, untouched)
    merged: dict[str, ray.ObjectRef] = {k: v[-1] for k, v in running.items()}
    if "ind" in tvs:
        ind = tvs["ind"]
        merged["avg"] = ray.put(merging.average(ind))
        merged["ties"] = ray.put(merging.ties(ind, top_k=m.ties_top_k, **trim))
        merged["randmix"] = ray.put(merging.random_mix(ind, seed=cfg.seed))
        merged["task_arithmetic"] = ray.put(merging.task_arithmetic(ind))
    if "seq" in tvs:
        # Table 4: the same merges over sequentially fine-tuned vectors
        seq = tvs["seq"]
        for method, merge in (("avg_seq", lambda: merging.average(seq)),
                              ("ties_seq", lambda: merging.ties(seq, top_k=m.ties_top_k, **trim)),
                              ("randmix_seq", lambda: merging.random_mix(seq, seed=cfg.seed))):
            if method in methods:
                merged[method] = ray.put(merge())

    # 3. accuracy matrices and single-model results
    items: list[tuple[str, str, int, tuple]] = [("zero_shot", "none", -1, ("state", theta0_ref, 1.0))]
    if "joint" in paths:
        items.append(("joint", "joint", T - 1, ("path", paths["joint"][0], 1.0)))
    for mode, method in (("seq", "seq_ft"), ("lwf", "lwf"), ("ewc", "ewc"), ("ind", "ind_ft")):
        if mode in paths and mode != "ind":
            items += [(method, mode, t, ("path", p, 1.0)) for t, p in enumerate(paths[mode])]
    lam_of = {"magmax": m.magmax_lambda, "maxabs": m.maxabs_lambda, "lwf_magmax": m.magmax_lambda,
              "ewc_magmax": m.magmax_lambda, "magmax_first": m.magmax_lambda}
    finetuning_of = {"magmax": "seq", "maxabs": "ind", "lwf_magmax": "lwf", "ewc_magmax": "ewc",
                     "avg": "ind", "ties": "ind", "randmix": "ind", "task_arithmetic": "ind",
                     "magmax_first": "first", "avg_seq": "seq", "ties_seq": "seq", "randmix_seq": "seq"}
    for method, refs_t in running.items():
        if method == "magmax_first":
            continue  # Table 6 reads its final row only; a second MagMax matrix would make Figure 4 ambiguous
        items += [(method, finetuning_of[method], t, ("tau", r, lam_of[method])) for t, r in enumerate(refs_t)]
    if "ind" in tvs and "avg" in methods:
        for t in range(T):
            items.append(("avg", "ind", t, ("tau", ray.put(merging.average(tvs["ind"][: t + 1])), 1.0)))
    t0 = time.time()
    res = eval_resources(cfg)
    cluster = ray.cluster_resources()
    workers = int(cluster.get("CPU", 1) // max(res["CPU"], 0.25))
    if res["GPU"] > 0:
        workers = min(workers, int(cluster.get("GPU", 0) // res["GPU"]))
    workers = max(1, workers)
    chunks = [items[i::workers] for i in range(min(workers, len(items)))]
    evals = ray.get([evaluate_many.options(num_cpus=res["CPU"], num_gpus=res["GPU"])
                     .remote(cfg, scenario, [c[3] for c in chunk]) for chunk in chunks])
    results = {}
    for chunk, res in zip(chunks, evals):
        for item, r in zip(chunk, res):
            results[item[:3]] = (*r, float(item[3][2]) if item[3][0] == "tau" else math.nan)
    log(f"{scenario.label}: {len(items)} evaluations in {time.time() - t0:.1f}s")

    matrix_rows, final_rows = [], []
    for (method, ft, t), (overall, per_task, lam) in results.items():
        for c, acc in enumerate(per_task):
            matrix_rows.append({"method": method, "finetuning": ft, "lam": lam, "after_task": t,
                                "eval_task": c, "role": "matrix", "metric": "accuracy", "value": acc})
        matrix_rows.append({"method": method, "finetuning": ft, "lam": lam, "after_task": t, "eval_task": -1,
                            "role": "matrix", "metric": "accuracy", "value": overall})
        if t == T - 1 or method == "zero_shot":
            # merges get their final row from the headline trial below (one row per key)
            if method in methods and method not in ("magmax", "maxabs", "avg", "lwf_magmax", "ewc_magmax",
                                                     "magmax_first"):
                final_rows += _final_rows(scenario, {"method": method, "finetuning": ft, "lam": lam,
                                                     "after_task": t}, overall, per_task)

    # 4. the (method, λ) grid on Tune: headline λ per method plus Figure 9's sweep
    trials = []
    defaults = {"magmax": m.magmax_lambda, "maxabs": m.maxabs_lambda, "ties": m.ties_lambda,
                "randmix": m.randmix_lambda, "avg": 1.0, "lwf_magmax": m.magmax_lambda,
                "ewc_magmax": m.magmax_lambda, "magmax_first": m.magmax_lambda, "randmix_seq": m.randmix_lambda,
                "avg_seq": 1.0, "ties_seq": m.ties_lambda}
    for method, lam in defaults.items():
        if method in methods and method in merged:
            trials.append({"method": method, "lam": lam, "role": "final"})
    for method in m.sweep_methods:
        if method in merged:
            trials += [{"method": method, "lam": lam, "role": "sweep"} for lam in m.sweep_lambdas]
    t0 = time.time()
    if cfg.ray.tune_sweep:
        # named by config and trial grid: a rerun reads the records of this grid's finished trials
        swept = run_sweep(cfg, scenario, merged, trials, storage.join(cfg.storage, "ray_tune"),
                          f"sweep-{cfg.name}-{scenario.label.replace('/', '_')}-{config_hash([cfg, trials])}")
    else:
        # the same trials as evaluation tasks: their warm workers skip Tune's per-scenario actors
        grid = [("tau", merged[tr["method"]], tr["lam"]) for tr in trials]
        resources = eval_resources(cfg)
        done = ray.get([evaluate_many.options(num_cpus=resources["CPU"], num_gpus=resources["GPU"])
                        .remote(cfg, scenario, grid[i::workers]) for i in range(min(workers, len(grid)))])
        swept = [None] * len(trials)
        for i, got in enumerate(done):
            for j, (overall, per_task) in zip(range(i, len(trials), workers), got):
                swept[j] = {**trials[j], "accuracy": overall, "per_task": per_task}
    log(f"{scenario.label}: {len(trials)} merge trials {'on Tune ' if cfg.ray.tune_sweep else ''}"
        f"in {time.time() - t0:.1f}s")
    sweep_rows = []
    for tr in swept:
        key = {"method": tr["method"], "finetuning": finetuning_of[tr["method"]], "lam": tr["lam"], "after_task": T - 1}
        if tr["role"] == "final":
            final_rows += _final_rows(scenario, key, tr["accuracy"], tr["per_task"])
        else:
            sweep_rows.append({**key, "role": "sweep", "metric": "accuracy", "value": tr["accuracy"]})

    # 5. analyses
    analysis_rows = [{"method": "chance", "finetuning": "none", "role": "analysis", "metric": "chance",
                      "value": scn.chance}]
    for mode in ("ind", "seq"):
        if mode in tvs and len(tvs[mode]) > 1:
            analysis_rows.append({"method": "sign_conflicts", "finetuning": mode, "role": "analysis",
                                  "metric": "sign_conflicts",
                                  "value": analysis.sign_conflicts(tvs[mode], top_k=m.sign_conflict_top_k,
                                                                   **trim)})
    for method in {r["method"] for r in matrix_rows}:
        mat = _matrix(matrix_rows, method, T)
        if method == "zero_shot" or np.isnan(mat[np.tril_indices(T)]).any():
            continue  # forgetting needs a row after every task (not joint or zero-shot)
        ft = next(r["finetuning"] for r in matrix_rows if r["method"] == method)
        analysis_rows.append({"method": method, "finetuning": ft, "role": "analysis",
                              "metric": "first_task_forgetting", "value": metrics.first_task_forgetting(mat)})
        analysis_rows.append({"method": method, "finetuning": ft, "role": "analysis",
                              "metric": "average_forgetting",
                              "value": float(np.nanmean(metrics.forgetting(mat))) if T > 1 else 0.0})

    if scenario.analyses:
        from pipeline.orchestration.figures import evaluate_items, figure_rows

        joint_tv = task_vector(read_tensors(paths["joint"][0], theta0), theta0) if "joint" in paths else None
        analysis_rows += figure_rows(cfg, scenario, tvs, joint_tv, lambda items: evaluate_items(cfg, scenario, items))

    for part, rows in (("matrix", matrix_rows), ("sweep", sweep_rows), ("analysis", analysis_rows),
                       ("final", final_rows)):
        # rows name the scenario's dataset, except a multi-dataset scenario's final rows (_final_rows)
        rows = [{"dataset": scenario.dataset or scenario.label, **r,
                 "method": PUBLIC_NAMES.get(r["method"], r["method"])} for r in rows]
        write_unit(make_rows(common, rows), parts[part])
    failures_path = storage.join(out_dir, FAILURES_FILE)
    if failures:
        storage.write_text(failures_path, json.dumps(failures, indent=2))
    else:
        storage.delete(failures_path)
    return failures


def _final_rows(scenario: ScenarioConfig, key: dict[str, Any], overall: float,
                per_task: list[float]) -> list[dict[str, Any]]:
    """A method's final accuracy; a multi-dataset scenario has one row per dataset (Table 5's
    columns, ``dataset`` naming it) and leaves the mean over datasets to the report."""
    if scenario.kind != "multi_dataset":
        return [{**key, "role": "final", "metric": "accuracy", "value": overall}]
    return [{**key, "dataset": name, "role": "final", "metric": "accuracy", "value": acc}
            for name, acc in zip(scenario.datasets, per_task)]


# config method keys whose results rows carry the paper's method name (their finetuning tells them apart)
PUBLIC_NAMES = {"magmax_first": "magmax", "randmix_seq": "randmix", "avg_seq": "avg", "ties_seq": "ties"}


def _matrix(rows: list[dict], method: str, T: int) -> np.ndarray:
    mat = np.full((T, T), np.nan)
    for r in rows:
        if r["method"] == method and r["eval_task"] >= 0 and r["after_task"] >= 0:
            mat[r["after_task"], r["eval_task"]] = r["value"]
    return mat


HEADLINE_FINETUNING = {"magmax": "seq", "randmix": "ind", "avg": "ind", "ties": "ind"}
SUMMARY_KEYS = ("zero_shot", "joint", "seq_ft", "lwf", "ewc", "randmix", "maxabs", "avg", "ties", "magmax")


def summarize(df) -> dict[str, Any]:
    """The headline numbers of one scenario (the demo's summary.json)."""
    final = df[df.role == "final"]
    out: dict[str, Any] = {}
    chance = df[(df.role == "analysis") & (df.metric == "chance")]
    out["chance"] = round(float(chance.value.iloc[0]), 2) if len(chance) else None
    for key in SUMMARY_KEYS:
        rows = final[final.method == key]
        if key in HEADLINE_FINETUNING:
            # Tables 4 and 6 add randmix/seq, magmax/first...: the headline is Table 1's variant
            rows = rows[rows.finetuning == HEADLINE_FINETUNING[key]]
        # (a multi-dataset scenario has one final row per dataset: its headline is their mean)
        out[key] = round(float(rows.value.mean()), 2) if len(rows) else None
    forg = df[(df.role == "analysis") & (df.metric == "first_task_forgetting") & (df.method == "seq_ft")]
    out["seq_ft_first_task_forgetting"] = round(float(forg.value.iloc[0]), 2) if len(forg) else None
    for mode in ("ind", "seq"):
        sc = df[(df.metric == "sign_conflicts") & (df.finetuning == mode)]
        out[f"sign_conflicts_{mode}"] = round(float(sc.value.iloc[0]), 4) if len(sc) else None
    return out
