"""The benchmark driver: plan units, fine-tune on Ray Train, merge in actors, sweep on Tune, write Parquet.

Everything expensive is cached under ``storage``: fine-tuned checkpoints by content address
(``checkpoints/<key>/task_NNN.safetensors``), results per scenario and part
(``<run>/results/<scenario>/<part>.parquet``). A rerun skips whatever already exists.
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

from pipeline import analysis, merging, metrics
from pipeline.config import BenchmarkConfig, ScenarioConfig, config_hash, save_config
from pipeline.results import code_version, make_rows, read_run, unit_done, write_unit
from pipeline.task_vectors import load_tensors, task_vector

Log = Callable[[str], None]


def resolve_paths(cfg: BenchmarkConfig) -> BenchmarkConfig:
    """Absolute data and storage paths: Train workers and Tune trials run in scratch directories."""
    def absolute(p: str) -> str:
        return p if "://" in p else str(Path(p).expanduser().resolve())

    return replace(cfg, data_root=absolute(cfg.data_root), storage=absolute(cfg.storage))


def init_ray(cfg: BenchmarkConfig, log: Log = print) -> None:
    if ray.is_initialized():
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS") or None
    start = time.time()
    ray.init(address=address, include_dashboard=False, log_to_driver=False,
             configure_logging=True, logging_level="ERROR")
    log(f"ray: {'joined ' + address if address else 'local cluster'} "
        f"{ray.cluster_resources().get('CPU', 0):.0f} CPUs, {ray.cluster_resources().get('GPU', 0):.0f} GPUs "
        f"({time.time() - start:.1f}s)")


def prepare_data(cfg: BenchmarkConfig, log: Log = print) -> None:
    if cfg.demo_data and any(s.dataset == "demo_shapes" for s in cfg.scenarios):
        from pipeline.data.demo_world import write_image_folder

        target = Path(cfg.data_root) / "demo_shapes"
        if not (target / "test").is_dir():
            log(f"writing the demo world to {target}")
        write_image_folder(target, seed=0)


def run_benchmark(cfg: BenchmarkConfig, log: Log = print) -> dict[str, Any]:
    """Run every scenario of ``cfg``; returns the summary of the first scenario."""
    start = time.time()
    cfg = resolve_paths(cfg)
    run_dir = Path(cfg.storage) / cfg.name
    save_config(cfg, run_dir / "config.yaml")
    prepare_data(cfg, log)
    init_ray(cfg, log)
    summaries = [run_scenario(cfg, s, run_dir, log) for s in cfg.scenarios]
    summary = dict(summaries[0])
    summary["wall_seconds"] = round(time.time() - start, 1)
    tmp = run_dir / ".summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, run_dir / "summary.json")
    return summary


def _scenario_dir(run_dir: Path, scenario: ScenarioConfig) -> Path:
    return run_dir / "results" / scenario.label.replace("/", "_")


def run_scenario(cfg: BenchmarkConfig, scenario: ScenarioConfig, run_dir: Path, log: Log = print) -> dict:
    from pipeline.orchestration.evaluate import evaluate_many
    from pipeline.orchestration.magmax_actor import MagMaxActor
    from pipeline.orchestration.sweep import run_sweep
    from pipeline.orchestration.train import fit_unit_task, scenario_units
    from pipeline.scenario import build_scenario

    out_dir = _scenario_dir(run_dir, scenario)
    parts = {p: out_dir / f"{p}.parquet" for p in ("final", "matrix", "sweep", "analysis")}
    if all(unit_done(p) for p in parts.values()):
        log(f"{scenario.label}: results exist in {out_dir}, skipping")
        return summarize(read_run(out_dir))

    scn = build_scenario(cfg, scenario)
    T = scn.num_tasks
    common = {"run": cfg.name, "scenario": scenario.label, "dataset": scenario.dataset,
              "backbone": scn.clip.name, "seed": cfg.seed, "config_hash": config_hash(cfg),
              "code_version": code_version()}
    methods = set(cfg.methods)

    # 1. fine-tuning units, all launched at once; Ray runs them as capacity allows
    units = scenario_units(cfg, scenario, T)
    ckpt_root = Path(cfg.storage) / "checkpoints"
    train_root = str(Path(cfg.storage) / "ray_train")
    t0 = time.time()
    # at most as many Train runs in flight as the cluster can host workers for: more only
    # start controllers that wait and compete for the same cores
    per_unit = cfg.ray.cpus_per_worker * max(1, cfg.ray.num_workers)
    slots = max(1, int(ray.cluster_resources().get("CPU", 1) // per_unit))
    done: dict = {}
    pending: dict = {}
    queue = list(units)
    while queue or pending:
        while queue and len(pending) < slots:
            u = queue.pop(0)
            pending[fit_unit_task.remote(cfg, u, str(ckpt_root / u.key(cfg)), train_root)] = u
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            done[pending.pop(ref)] = ray.get(ref)
    paths: dict[str, list[str]] = {}
    for unit in units:
        paths.setdefault(unit.mode, []).extend(done[unit])
    log(f"{scenario.label}: {len(units)} fine-tuning units done in {time.time() - t0:.1f}s")

    # 2. task vectors and merges; the running MagMax vector lives in one actor per mode
    theta0 = scn.theta0
    tvs = {mode: [task_vector(load_tensors(p, theta0), theta0) for p in paths[mode]]
           for mode in ("seq", "ind", "lwf", "ewc") if mode in paths}
    theta0_ref = ray.put(theta0)
    running: dict[str, list[ray.ObjectRef]] = {}
    for mode, method in (("seq", "magmax"), ("ind", "maxabs"), ("lwf", "lwf_magmax"), ("ewc", "ewc_magmax")):
        if mode not in tvs or method not in methods:
            continue
        actor = MagMaxActor.options(name=f"magmax:{cfg.name}:{scenario.label}:{mode}", get_if_exists=True) \
            .remote(str(run_dir / "actors" / f"{scenario.label.replace('/', '_')}-{mode}"))
        running[method] = []
        for t, tv in enumerate(tvs[mode]):
            ray.get(actor.add.remote(f"task{t}", ray.put(tv)))
            running[method].append(actor.value.remote())
        # results of actor calls are owned by this driver: once they exist, the actor can go
        ray.wait(running[method], num_returns=len(running[method]), fetch_local=False)
        ray.kill(actor)

    m = cfg.merge
    merged: dict[str, ray.ObjectRef] = {k: v[-1] for k, v in running.items()}
    if "ind" in tvs:
        ind = tvs["ind"]
        merged["avg"] = ray.put(merging.average(ind))
        merged["ties"] = ray.put(merging.ties(ind, top_k=m.ties_top_k))
        merged["randmix"] = ray.put(merging.random_mix(ind, seed=cfg.seed))
        merged["task_arithmetic"] = ray.put(merging.task_arithmetic(ind))

    # 3. accuracy matrices and single-model results
    items: list[tuple[str, str, int, tuple]] = [("zero_shot", "none", -1, ("state", theta0_ref, 1.0))]
    if "joint" in paths:
        items.append(("joint", "joint", T - 1, ("path", paths["joint"][0], 1.0)))
    for mode, method in (("seq", "seq_ft"), ("lwf", "lwf"), ("ewc", "ewc"), ("ind", "ind_ft")):
        if mode in paths and mode != "ind":
            items += [(method, mode, t, ("path", p, 1.0)) for t, p in enumerate(paths[mode])]
    lam_of = {"magmax": m.magmax_lambda, "maxabs": m.maxabs_lambda, "lwf_magmax": m.magmax_lambda,
              "ewc_magmax": m.magmax_lambda}
    finetuning_of = {"magmax": "seq", "maxabs": "ind", "lwf_magmax": "lwf", "ewc_magmax": "ewc",
                     "avg": "ind", "ties": "ind", "randmix": "ind", "task_arithmetic": "ind"}
    for method, refs_t in running.items():
        items += [(method, finetuning_of[method], t, ("tau", r, lam_of[method])) for t, r in enumerate(refs_t)]
    if "ind" in tvs and "avg" in methods:
        for t in range(T):
            items.append(("avg", "ind", t, ("tau", ray.put(merging.average(tvs["ind"][: t + 1])), 1.0)))
    t0 = time.time()
    workers = max(1, int(ray.cluster_resources().get("CPU", 1) // max(cfg.ray.eval_cpus, 0.25)))
    chunks = [items[i::workers] for i in range(min(workers, len(items)))]
    evals = ray.get([evaluate_many.options(num_cpus=cfg.ray.eval_cpus).remote(cfg, scenario, [c[3] for c in chunk])
                     for chunk in chunks])
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
            if method in methods and method not in ("magmax", "maxabs", "avg"):
                final_rows.append({"method": method, "finetuning": ft, "lam": lam, "after_task": t,
                                   "role": "final", "metric": "accuracy", "value": overall})

    # 4. the (method, λ) grid on Tune: headline λ per method plus Figure 9's sweep
    trials = []
    defaults = {"magmax": m.magmax_lambda, "maxabs": m.maxabs_lambda, "ties": m.ties_lambda,
                "randmix": m.randmix_lambda, "avg": 1.0, "lwf_magmax": m.magmax_lambda,
                "ewc_magmax": m.magmax_lambda}
    for method, lam in defaults.items():
        if method in methods and method in merged:
            trials.append({"method": method, "lam": lam, "role": "final"})
    for method in m.sweep_methods:
        if method in merged:
            trials += [{"method": method, "lam": lam, "role": "sweep"} for lam in m.sweep_lambdas]
    t0 = time.time()
    swept = run_sweep(cfg, scenario, merged, trials, str(Path(cfg.storage) / "ray_tune"),
                      f"sweep-{cfg.name}-{scenario.label.replace('/', '_')}-{config_hash(cfg)}")
    log(f"{scenario.label}: {len(trials)} merge trials on Tune in {time.time() - t0:.1f}s")
    sweep_rows = []
    for tr in swept:
        row = {"method": tr["method"], "finetuning": finetuning_of[tr["method"]], "lam": tr["lam"],
               "after_task": T - 1, "role": tr["role"], "metric": "accuracy", "value": tr["accuracy"]}
        (final_rows if tr["role"] == "final" else sweep_rows).append(row)

    # 5. analyses
    analysis_rows = [{"method": "chance", "finetuning": "none", "role": "analysis", "metric": "chance",
                      "value": 100.0 / len(scn.data.classnames)}]
    for mode in ("ind", "seq"):
        if mode in tvs and len(tvs[mode]) > 1:
            analysis_rows.append({"method": "sign_conflicts", "finetuning": mode, "role": "analysis",
                                  "metric": "sign_conflicts",
                                  "value": analysis.sign_conflicts(tvs[mode], top_k=m.sign_conflict_top_k)})
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

    for part, rows in (("matrix", matrix_rows), ("sweep", sweep_rows), ("analysis", analysis_rows),
                       ("final", final_rows)):
        write_unit(make_rows(common, rows), parts[part])
    return summarize(read_run(out_dir))


def _matrix(rows: list[dict], method: str, T: int) -> np.ndarray:
    mat = np.full((T, T), np.nan)
    for r in rows:
        if r["method"] == method and r["eval_task"] >= 0 and r["after_task"] >= 0:
            mat[r["after_task"], r["eval_task"]] = r["value"]
    return mat


SUMMARY_KEYS = ("zero_shot", "joint", "seq_ft", "lwf", "ewc", "randmix", "maxabs", "avg", "ties", "magmax")


def summarize(df) -> dict[str, Any]:
    """The headline numbers of one scenario (the demo's summary.json)."""
    final = df[df.role == "final"]
    out: dict[str, Any] = {}
    chance = df[(df.role == "analysis") & (df.metric == "chance")]
    out["chance"] = round(float(chance.value.iloc[0]), 2) if len(chance) else None
    for key in SUMMARY_KEYS:
        rows = final[final.method == key]
        out[key] = round(float(rows.value.iloc[0]), 2) if len(rows) else None
    forg = df[(df.role == "analysis") & (df.metric == "first_task_forgetting") & (df.method == "seq_ft")]
    out["seq_ft_first_task_forgetting"] = round(float(forg.value.iloc[0]), 2) if len(forg) else None
    for mode in ("ind", "seq"):
        sc = df[(df.metric == "sign_conflicts") & (df.finetuning == mode)]
        out[f"sign_conflicts_{mode}"] = round(float(sc.value.iloc[0]), 4) if len(sc) else None
    return out
