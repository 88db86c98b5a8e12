"""One scenario's results from its fine-tuned checkpoints: merge -> evaluate -> sweep -> rows.

Which methods exist, what each merges, at which λ and under which row name comes from the
method table (``pipeline.methods``); this module only runs the stages:

1. task vectors of every fine-tuning mode, and MagMax folded after each task in the run's actor;
2. every merge of the table the scenario asks for (or sweeps);
3. the accuracy matrices (models after each task, running merges, prefix merges) and zero-shot;
4. the (method, λ) trials: each merge's headline λ plus Figure 9's grid, on Tune or as tasks;
5. analyses (sign conflicts, forgetting, the figures' rows), then one Parquet per part.

The driver plans from metadata (``pipeline.scenario_meta``: θ0, task count, chance; no image is
decoded here) and holds ObjectRefs only: every task vector is made from its checkpoint in a Ray
task, and the merges, folds, evaluations and analyses that read vectors run in Ray tasks too
(``pipeline.orchestration.merge_tasks``), so no task vector is ever fetched into this process.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import ray

from pipeline import analysis, merging, metrics, storage
from pipeline import methods as method_table
from pipeline.config import (BenchmarkConfig, ScenarioConfig, config_hash, redact, result_identity,
                             scenario_methods)
from pipeline.data import fingerprint
from pipeline.methods import MergeContext
from pipeline.orchestration.evaluate import evaluate_many, put_eval_data
from pipeline.orchestration.figures import evaluate_items, figure_rows
from pipeline.orchestration.magmax_actor import MagMaxActor
from pipeline.orchestration.merge_tasks import fold_running, merge_task, post_process_task, task_vector_from
from pipeline.orchestration.plan import FAILURES_FILE, scenario_dir
from pipeline.orchestration.sweep import run_sweep
from pipeline.orchestration.train import eval_resources
from pipeline.results import code_version, make_rows, write_unit
from pipeline.scenario_meta import scenario_meta
from pipeline.storage import read_tensors
from pipeline.task_vectors import task_vector

Log = Callable[[str], None]
# an evaluation: (method, fine-tuning, after task) -> what to evaluate: ("state" | "path" | "tau", payload, λ)
Item = tuple[str, str, int, tuple[str, Any, float]]


@dataclass
class Inputs:
    """What the merges read: checkpoint paths and task vectors per fine-tuning mode. In the driver
    ``tvs`` and ``theta0`` are ObjectRefs (``_inputs``); ``_analysis_task`` resolves them."""

    paths: dict[str, list[str]]
    tvs: dict[str, list[Any]]
    theta0: Any
    num_tasks: int


class Folds:
    """The run's MagMax actor, started on first use and shared by every scenario and mode."""

    def __init__(self, run_dir: str) -> None:
        self.root = storage.join(run_dir, "actors")
        self._actor: Any = None

    def actor(self) -> Any:
        if self._actor is None:
            self._actor = MagMaxActor.remote(self.root)
        return self._actor

    def close(self) -> None:
        if self._actor is not None:
            ray.kill(self._actor)
            self._actor = None


def run_scenario(cfg: BenchmarkConfig, scenario: ScenarioConfig, run_dir: str,
                 unit_paths: dict[str, list[str] | Exception], log: Log, folds: Folds) -> list[dict[str, str]]:
    """Merge, evaluate and sweep one scenario from its fine-tuned checkpoints; write its Parquet.

    Methods whose fine-tuning failed are left out and the failure is written to the scenario's
    ``failures.json`` (removed again once a rerun succeeds). Returns the failures. ``folds`` is the
    run's MagMax actor (``Folds``: the caller ends it after its last scenario).
    """
    names = scenario_methods(cfg, scenario)
    failed = {mode: err for mode, err in unit_paths.items() if isinstance(err, Exception)}
    failures = [{"scenario": scenario.label, "mode": mode, "methods": sorted(method_table.methods_of_mode(mode, names)),
                 "error": short_error(err)} for mode, err in failed.items()]
    methods = [n for n in names if method_table.get(n).finetuning not in failed]
    meta = scenario_meta(cfg, scenario)  # (no data: the evaluations ship their test images themselves)
    backbone, chance, ctx = meta.backbone, meta.chance, MergeContext(cfg.merge, cfg.seed, _trim(cfg, meta.untouched))
    inputs = _inputs({m: p for m, p in unit_paths.items() if not isinstance(p, Exception)}, ray.put(meta.theta0),
                     meta.num_tasks)
    del meta  # θ0 lives in the object store from here on
    data = put_eval_data(cfg, scenario)

    wanted = [*methods, *(n for n in cfg.merge.sweep_methods if n not in methods)]
    running = _fold_running(scenario, wanted, inputs, ctx, folds)
    merged = {**{n: refs[-1] for n, refs in running.items()}, **_merge(wanted, inputs, ctx)}
    workers = eval_workers(cfg)
    results = _evaluate(cfg, scenario, _matrix_items(methods, inputs, running, merged, ctx), workers, data, log)
    matrix_rows, final_rows = _matrix_rows(results, methods, scenario, inputs.num_tasks)
    trials = _trials(cfg, methods, merged)
    swept = _sweep(cfg, scenario, merged, trials, workers, data, log)
    sweep_rows = []
    for tr in swept:
        key = {"method": tr["method"], "finetuning": method_table.get(tr["method"]).finetuning, "lam": tr["lam"],
               "after_task": inputs.num_tasks - 1}
        if tr["role"] == "final":
            final_rows += final_accuracy_rows(scenario, key, tr["accuracy"], tr["per_task"])
        else:
            sweep_rows.append({**key, "role": "sweep", "metric": "accuracy", "value": tr["accuracy"]})
    analysis_rows = ray.get(_analysis_task.remote(cfg, scenario, inputs, ctx, chance, matrix_rows))

    common = {"run": cfg.name, "scenario": scenario.label, "backbone": backbone, "seed": cfg.seed,
              "config_hash": config_hash(cfg), "code_version": code_version()}
    out_dir = scenario_dir(run_dir, scenario)
    for part, rows in (("matrix", matrix_rows), ("sweep", sweep_rows), ("analysis", analysis_rows),
                       ("final", final_rows)):
        # rows name the scenario's dataset, except a multi-dataset scenario's final rows
        rows = [{"dataset": scenario.dataset or scenario.label, **r, "method": _row_name(r["method"])} for r in rows]
        write_unit(make_rows(common, rows), storage.join(out_dir, f"{part}.parquet"))
    failures_path = storage.join(out_dir, FAILURES_FILE)
    if failures:
        storage.write_text(failures_path, json.dumps(failures, indent=2))
    else:
        storage.delete(failures_path)
    return failures


def short_error(err: Exception) -> str:
    """One line of ``err`` for logs, ``progress.json`` and ``failures.json``: credentials in any
    URI it quotes (a Ray error may quote a storage path) become ``***``."""
    text = str(err).strip().splitlines()
    tail = [line for line in text if "Error" in line]
    return redact(tail[-1] if tail else text[-1] if text else type(err).__name__)[:500]


def _row_name(name: str) -> str:
    try:
        return method_table.get(name).row_name
    except KeyError:  # analysis rows (chance, sign_conflicts, figure rows) are not methods
        return name


def _inputs(paths: dict[str, list[str]], theta0: ray.ObjectRef, num_tasks: int) -> Inputs:
    """Each mode's task vectors, made from storage in Ray tasks: refs owned by the driver."""
    tvs = {mode: [task_vector_from.remote(p, theta0) for p in paths[mode]]
           for mode in ("seq", "ind", "lwf", "ewc", "first") if mode in paths}
    return Inputs(paths, tvs, theta0, num_tasks)


def _trim(cfg: BenchmarkConfig, untouched: int) -> dict[str, Any]:
    # TIES's trimming scope (merge.ties_scope): the official task vectors span the whole CLIP state
    # dict, so its entries outside the image tower (never trained: zeros, ``untouched`` of them,
    # ScenarioMeta) may count in the threshold
    return merging.trim_options(cfg.merge.ties_scope, cfg.merge.ties_entries, untouched)


def _fold_running(scenario: ScenarioConfig, wanted: Sequence[str], inputs: Inputs, ctx: MergeContext,
                  folds: Folds) -> dict[str, list[ray.ObjectRef]]:
    """Each running merge folded task by task: its value after task t. MagMax folds in the run's
    restartable actor (``folds``), which persists its state; each continual merge folds in one Ray
    task (``fold_running``) that returns a ref per prefix."""
    chosen = [method_table.get(n) for n in wanted]
    chosen = [m for m in chosen if m.kind == "running" and m.finetuning in inputs.tvs]
    running: dict[str, list[ray.ObjectRef]] = {}
    for m in chosen:
        if not m.actor:
            continue
        mode = m.finetuning
        actor, key = folds.actor(), f"{scenario.label.replace('/', '_')}-{mode}"
        ray.get(actor.reset.remote(key))
        running[m.name] = []
        for t, (path, tv) in enumerate(zip(inputs.paths[mode], inputs.tvs[mode])):
            # the tag is the checkpoint's content address: a restarted actor skips what it folded
            # (tv is a ref: Ray resolves it in the actor, never here)
            ray.get(actor.add.remote(key, f"{storage.name(storage.parent(path))}/{t}", tv))
            running[m.name].append(actor.value.remote(key))
        # results of actor calls are owned by this driver: they outlive the actor's next key
        ray.wait(running[m.name], num_returns=len(running[m.name]), fetch_local=False)
        actor.release.remote()
    for m in chosen:
        if m.actor:
            continue
        tvs = inputs.tvs[m.finetuning]
        refs = fold_running.options(num_returns=len(tvs)).remote(m, ctx, tvs)
        running[m.name] = [refs] if len(tvs) == 1 else list(refs)  # (one return: a bare ref)
    if ctx.merge.post:
        for m in chosen:
            if m.actor:  # (the actor's values, post-processed in tasks: the actor folds MagMax only)
                tvs = inputs.tvs[m.finetuning]
                running[m.name] = [post_process_task.remote(ctx.merge, r, *tvs[: t + 1])
                                   for t, r in enumerate(running[m.name])]
    return running


def _merge(wanted: Sequence[str], inputs: Inputs, ctx: MergeContext) -> dict[str, ray.ObjectRef]:
    """Every merge asked for (or swept) whose fine-tuning exists, over all T task vectors."""
    merged = {}
    for name in wanted:
        m = method_table.get(name)
        if m.kind == "merge" and m.finetuning in inputs.tvs:
            merged[name] = merge_task.remote(m, ctx, *inputs.tvs[m.finetuning])
    return merged


def _matrix_items(methods: Sequence[str], inputs: Inputs, running: dict[str, list[ray.ObjectRef]],
                  merged: dict[str, ray.ObjectRef],
                  ctx: MergeContext) -> list[Item]:
    """Zero-shot, Joint, and after every task: each fine-tuned model, running merge and prefix merge."""
    T = inputs.num_tasks
    items: list[Item] = [("zero_shot", "none", -1, ("state", inputs.theta0, 1.0))]
    if "joint" in inputs.paths:
        items.append(("joint", "joint", T - 1, ("path", inputs.paths["joint"][0], 1.0)))
    for m in method_table.table():
        # a fine-tuning's own models are evaluated whenever it ran (Figure 4 reads Seq-FT beside MagMax)
        if m.kind == "model" and m.matrix and m.finetuning in inputs.paths:
            items += [(m.name, m.finetuning, t, ("path", p, 1.0)) for t, p in enumerate(inputs.paths[m.finetuning])]
    for name, refs in running.items():
        m = method_table.get(name)
        if m.matrix and name in methods:
            lam = m.default_lambda(ctx.merge)
            items += [(name, m.finetuning, t, ("tau", r, lam)) for t, r in enumerate(refs)]
    for name in methods:
        m = method_table.get(name)
        if m.kind == "merge" and m.matrix and m.finetuning in inputs.tvs:
            tvs, lam = inputs.tvs[m.finetuning], m.default_lambda(ctx.merge)
            # after the last task the prefix is every vector: the merge already made (_merge)
            prefix = [merge_task.remote(m, ctx, *tvs[: t + 1]) for t in range(T - 1)] + [merged[name]]
            items += [(name, m.finetuning, t, ("tau", ref, lam)) for t, ref in enumerate(prefix)]
    return items


def eval_workers(cfg: BenchmarkConfig) -> int:
    """How many evaluation tasks the cluster runs side by side."""
    res = eval_resources(cfg)
    cluster = ray.cluster_resources()
    workers = int(cluster.get("CPU", 1) // max(res["CPU"], 0.25))
    if res["GPU"] > 0:
        workers = min(workers, int(cluster.get("GPU", 0) // res["GPU"]))
    return max(1, workers)


def _evaluate(cfg: BenchmarkConfig, scenario: ScenarioConfig, items: list[Item], workers: int,
              data: ray.ObjectRef, log: Log) -> dict[tuple[str, str, int], tuple[float, list[float], float]]:
    """``data``: ``put_eval_data``'s test images and model, shipped once, not rebuilt per worker."""
    t0 = time.time()
    res = eval_resources(cfg)
    chunks = [items[i::workers] for i in range(min(workers, len(items)))]
    evals = ray.get([evaluate_many.options(num_cpus=res["CPU"], num_gpus=res["GPU"])
                     .remote(cfg, scenario, [c[3] for c in chunk], [data]) for chunk in chunks])
    results = {}
    for chunk, got in zip(chunks, evals):
        for item, r in zip(chunk, got):
            results[item[:3]] = (*r, float(item[3][2]) if item[3][0] == "tau" else math.nan)
    log(f"{scenario.label}: {len(items)} evaluations in {time.time() - t0:.1f}s")
    return results


def _matrix_rows(results: dict, methods: Sequence[str], scenario: ScenarioConfig,
                 T: int) -> tuple[list[dict], list[dict]]:
    matrix_rows, final_rows = [], []
    for (method, ft, t), (overall, per_task, lam) in results.items():
        for c, acc in enumerate(per_task):
            matrix_rows.append({"method": method, "finetuning": ft, "lam": lam, "after_task": t,
                                "eval_task": c, "role": "matrix", "metric": "accuracy", "value": acc})
        matrix_rows.append({"method": method, "finetuning": ft, "lam": lam, "after_task": t, "eval_task": -1,
                            "role": "matrix", "metric": "accuracy", "value": overall})
        # merges get their final row from their headline λ trial (one row per key)
        if (t == T - 1 or method == "zero_shot") and method in methods and not method_table.get(method).merged:
            final_rows += final_accuracy_rows(scenario, {"method": method, "finetuning": ft, "lam": lam,
                                                         "after_task": t}, overall, per_task)
    return matrix_rows, final_rows


def _trials(cfg: BenchmarkConfig, methods: Sequence[str], merged: dict[str, Any]) -> list[dict[str, Any]]:
    """Each merge's headline λ, then Figure 9's grid."""
    trials = [{"method": m.name, "lam": m.default_lambda(cfg.merge), "role": "final"}
              for m in method_table.table() if m.name in methods and m.name in merged]
    for name in cfg.merge.sweep_methods:
        if name in merged:
            trials += [{"method": name, "lam": lam, "role": "sweep"} for lam in cfg.merge.sweep_lambdas]
    return trials


def sweep_name(cfg: BenchmarkConfig, scenario: ScenarioConfig, trials: list[dict[str, Any]]) -> str:
    """The folder of a scenario's sweep records, named by what its results depend on: the config
    minus where storage and data are and how Ray runs (``result_identity``), the content
    fingerprints of the scenario's datasets, and the trial grid. So a storage folder moved
    elsewhere, or the same data under another path, finds its records; changed data never does."""
    data = redact({n: fingerprint.dataset_fingerprint(n, cfg.data_root, cfg.datasets) for n in scenario.members})
    key = config_hash([redact(result_identity(cfg)), data, trials])
    return f"sweep-{cfg.name.replace('/', '_')}-{scenario.label.replace('/', '_')}-{key}"


def _sweep(cfg: BenchmarkConfig, scenario: ScenarioConfig, merged: dict[str, Any], trials: list[dict[str, Any]],
           workers: int, data: ray.ObjectRef, log: Log) -> list[dict[str, Any]]:
    t0 = time.time()  # (data: as in _evaluate, so that no trial decodes the dataset again)
    if cfg.ray.tune_sweep:
        # named by config and trial grid: a rerun reads the records of this grid's finished trials;
        # one Tune trial per evaluation slot, each evaluating a group of (method, λ) pairs
        swept = run_sweep(cfg, scenario, merged, trials, storage.join(cfg.storage, "ray_tune"),
                          sweep_name(cfg, scenario, trials), groups=workers, data=data)
    else:
        # the same trials as evaluation tasks: their warm workers skip Tune's per-scenario actors
        grid = [("tau", merged[tr["method"]], tr["lam"]) for tr in trials]
        res = eval_resources(cfg)
        done = ray.get([evaluate_many.options(num_cpus=res["CPU"], num_gpus=res["GPU"])
                        .remote(cfg, scenario, grid[i::workers], [data]) for i in range(min(workers, len(grid)))])
        swept = [{}] * len(trials)
        for i, got in enumerate(done):
            for j, (overall, per_task) in zip(range(i, len(trials), workers), got):
                swept[j] = {**trials[j], "accuracy": overall, "per_task": per_task}
    log(f"{scenario.label}: {len(trials)} merge trials {'on Tune ' if cfg.ray.tune_sweep else ''}"
        f"in {time.time() - t0:.1f}s")
    return swept


@ray.remote
def _analysis_task(cfg: BenchmarkConfig, scenario: ScenarioConfig, inputs: Inputs, ctx: MergeContext,
                   chance: float, matrix_rows: list[dict]) -> list[dict[str, Any]]:
    """``_analysis_rows`` in a worker: the task vectors it reads (ind and seq; refs in ``inputs``)
    are fetched here, not in the driver; its figure evaluations are tasks of their own."""
    tvs = {mode: ray.get(inputs.tvs[mode]) for mode in ("ind", "seq") if mode in inputs.tvs}
    return _analysis_rows(cfg, scenario, replace(inputs, tvs=tvs, theta0=ray.get(inputs.theta0)), ctx, chance,
                          matrix_rows)


def _analysis_rows(cfg: BenchmarkConfig, scenario: ScenarioConfig, inputs: Inputs, ctx: MergeContext,
                   chance: float, matrix_rows: list[dict]) -> list[dict[str, Any]]:
    T = inputs.num_tasks
    rows: list[dict[str, Any]] = [{"method": "chance", "finetuning": "none", "role": "analysis", "metric": "chance",
                                   "value": chance}]
    for mode in ("ind", "seq"):
        if mode in inputs.tvs and len(inputs.tvs[mode]) > 1:
            rows.append({"method": "sign_conflicts", "finetuning": mode, "role": "analysis",
                         "metric": "sign_conflicts", "x": float(cfg.merge.sign_conflict_top_k), "x_kind": "top_k",
                         "value": analysis.sign_conflicts(inputs.tvs[mode], top_k=cfg.merge.sign_conflict_top_k,
                                                          **ctx.trim)})
    for method in dict.fromkeys(r["method"] for r in matrix_rows):  # (first-seen order: a set's varies by process)
        mat = _matrix(matrix_rows, method, T)
        if method == "zero_shot" or np.isnan(mat[np.tril_indices(T)]).any():
            continue  # forgetting needs a row after every task (not joint or zero-shot)
        ft = next(r["finetuning"] for r in matrix_rows if r["method"] == method)
        rows.append({"method": method, "finetuning": ft, "role": "analysis",
                     "metric": "first_task_forgetting", "value": metrics.first_task_forgetting(mat)})
        rows.append({"method": method, "finetuning": ft, "role": "analysis", "metric": "average_forgetting",
                     "value": float(np.nanmean(metrics.forgetting(mat))) if T > 1 else 0.0})
    if scenario.analyses:
        joint_tv = (task_vector(read_tensors(inputs.paths["joint"][0], inputs.theta0), inputs.theta0)
                    if "joint" in inputs.paths else None)
        rows += figure_rows(cfg, scenario, inputs.tvs, joint_tv, lambda items: evaluate_items(cfg, scenario, items))
    return rows


def final_accuracy_rows(scenario: ScenarioConfig, key: dict[str, Any], overall: float,
                        per_task: list[float]) -> list[dict[str, Any]]:
    """A method's final accuracy; a multi-dataset scenario has one row per dataset (Table 5's
    columns, ``dataset`` naming it) and leaves the mean over datasets to the report."""
    if scenario.kind != "multi_dataset":
        return [{**key, "role": "final", "metric": "accuracy", "value": overall}]
    return [{**key, "dataset": name, "role": "final", "metric": "accuracy", "value": acc}
            for name, acc in zip(scenario.datasets, per_task)]


def _matrix(rows: list[dict], method: str, T: int) -> np.ndarray:
    mat = np.full((T, T), np.nan)
    for r in rows:
        if r["method"] == method and r["eval_task"] >= 0 and r["after_task"] >= 0:
            mat[r["after_task"], r["eval_task"]] = r["value"]
    return mat


def summarize(df) -> dict[str, Any]:
    """The headline numbers of one scenario (the demo's summary.json): each method's final
    accuracy in its headline variant (Tables 4 and 6 add randmix/seq, magmax/first... under the
    paper's names), or in the only variant that ran (``tsv_seq`` alone gives ``tsv``); a
    multi-dataset scenario's headline is the mean of its per-dataset rows. ``variants``: every
    variant that ran, under its config name (the method table's name for its row and fine-tuning)."""
    final = df[df.role == "final"]
    out: dict[str, Any] = {}
    chance = df[(df.role == "analysis") & (df.metric == "chance")]
    out["chance"] = round(float(chance.value.iloc[0]), 2) if len(chance) else None
    for key in method_table.summary_keys(sorted(set(final.method))):
        rows = final[final.method == key]
        headline = method_table.headline_finetuning(key)
        if headline is not None and (rows.finetuning == headline).any():
            rows = rows[rows.finetuning == headline]
        elif rows.finetuning.nunique() > 1:
            rows = rows.iloc[:0]  # several variants, none the headline: no single number to show
        out[key] = round(float(rows.value.mean()), 2) if len(rows) else None
    # every variant under its config name (``tsv`` and ``tsv_seq``, ``magmax`` and ``magmax_ind``...)
    names = {(m.row_name, m.finetuning): m.name for m in method_table.table()}
    variants = final.groupby(["method", "finetuning"], sort=False)["value"].mean()
    out["variants"] = {names.get(k, f"{k[0]}_{k[1]}"): round(float(v), 2) for k, v in variants.items()}
    forg = df[(df.role == "analysis") & (df.metric == "first_task_forgetting") & (df.method == "seq_ft")]
    out["seq_ft_first_task_forgetting"] = round(float(forg.value.iloc[0]), 2) if len(forg) else None
    for mode in ("ind", "seq"):
        sc = df[(df.metric == "sign_conflicts") & (df.finetuning == mode)]
        out[f"sign_conflicts_{mode}"] = round(float(sc.value.iloc[0]), 4) if len(sc) else None
    return out
