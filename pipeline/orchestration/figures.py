"""Analysis rows of Figures 2, 5, 6, 7, 8, 12 and 13 for one scenario, in the report's row vocabulary.

A scenario asks for them with ``scenarios[i].analyses`` (``ANALYSES``); the runner calls
``figure_rows`` once per scenario with the task vectors it already holds. Analyses that need
accuracies (pruning, k-th magnitude, leave-one-out) evaluate their merged vectors with the same
evaluation tasks as the accuracy matrices; the others are pure tensor statistics. The row
layouts are those of ``pipeline.report``'s "Row vocabulary" (``pipeline.analysis_rows`` builds most):
a figure's abscissa goes to ``x``/``x_kind``; ``lam`` is the λ an evaluated vector was applied with.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import ray
import torch

from pipeline import analysis, merging
from pipeline.analysis import PRUNE_KEEP
from pipeline.analysis_rows import (
    consistency_entries,
    contribution_entries,
    histogram_entries,
    layer_magnitude_entries,
)
from pipeline.config import BenchmarkConfig, ScenarioConfig
from pipeline.orchestration.evaluate import evaluate_many
from pipeline.orchestration.train import eval_resources

ANALYSES: dict[str, str] = {
    "pruning": "Figure 2: keep a share of a task vector's entries by highest/lowest/random magnitude",
    "kth_magnitude": "Figure 5: merge by the k-th highest magnitude, norms equalised",
    "update_consistency": "Figure 6: magnitude against consistency of update directions",
    "contributions": "Figure 7: share of parameters each task vector contributes to MagMax",
    "leave_one_out": "Figure 8: accuracy when one task vector is left out of MagMax",
    "layer_magnitudes": "Figure 12: mean |τ_MagMax| by layer type and block, after each task",
    "entry_histograms": "Figure 13: distributions of task-vector entries",
}
# Figure 2's x axis: shares of the entries kept

TaskVector = dict[str, torch.Tensor]
Evaluate = Callable[[list[tuple[str, Any, float]]], list[tuple[float, list[float]]]]


def evaluate_items(cfg: BenchmarkConfig, scenario: ScenarioConfig,
                   items: list[tuple[str, Any, float]]) -> list[tuple[float, list[float]]]:
    """Evaluate ``(kind, payload, lam)`` items on evaluation tasks, as many side by side as fit."""
    if not items:
        return []
    res = eval_resources(cfg)
    cluster = ray.cluster_resources()
    workers = int(cluster.get("CPU", 1) // max(res["CPU"], 0.25))
    if res["GPU"] > 0:
        workers = min(workers, int(cluster.get("GPU", 0) // res["GPU"]))
    workers = max(1, min(workers, len(items)))
    # payloads go through the object store once, not once per chunk
    items = [(k, ray.put(p) if isinstance(p, dict) else p, lam) for k, p, lam in items]
    done = ray.get([evaluate_many.options(num_cpus=res["CPU"], num_gpus=res["GPU"])
                    .remote(cfg, scenario, items[i::workers]) for i in range(workers)])
    out: list[Any] = [None] * len(items)
    for i, got in enumerate(done):
        for j, r in zip(range(i, len(items), workers), got):
            out[j] = r
    return out


def figure_rows(cfg: BenchmarkConfig, scenario: ScenarioConfig, tvs: Mapping[str, Sequence[TaskVector]],
                joint_tv: TaskVector | None, evaluate: Evaluate) -> list[dict[str, Any]]:
    """Rows (without the run's common columns) of every analysis ``scenario.analyses`` names.

    ``tvs``: task vectors per fine-tuning mode ("ind", "seq"); ``joint_tv``: Joint's, which
    Figure 2 prunes (the paper prunes one model fine-tuned on the whole dataset; without Joint,
    the last sequential vector stands in).
    """
    wanted = set(scenario.analyses)
    lam = float(cfg.merge.magmax_lambda)
    modes = [m for m in ("ind", "seq") if len(tvs.get(m, ())) > 1]
    rows: list[dict[str, Any]] = []
    last = {m: len(tvs[m]) - 1 for m in modes}

    if "pruning" in wanted:
        tv = joint_tv if joint_tv is not None else (tvs["seq"][-1] if tvs.get("seq") else None)
        if tv is not None:
            grid = [(mode, keep) for mode in ("highest", "lowest", "random") for keep in PRUNE_KEEP]
            accs = evaluate([("tau", analysis.magnitude_prune(tv, keep, mode, seed=cfg.seed), 1.0)
                             for mode, keep in grid])
            rows += [{"role": "analysis", "metric": "prune_accuracy", "method": mode, "finetuning":
                      "joint" if joint_tv is not None else "seq", "lam": 1.0, "x": float(keep),
                      "x_kind": "share_kept", "eval_task": -1, "after_task": -1, "value": acc[0]}
                     for (mode, keep), acc in zip(grid, accs)]

    if "kth_magnitude" in wanted:
        for mode in modes:
            ks, merged = zip(*analysis.kth_magnitude_merges(tvs[mode]))
            accs = evaluate([("tau", tv, lam) for tv in merged])
            rows += [{"role": "analysis", "metric": "kth_accuracy", "method": "kth_magnitude", "finetuning": mode,
                      "lam": lam, "x": float(k), "x_kind": "kth", "eval_task": -1, "after_task": last[mode],
                      "value": acc[0]}
                     for k, acc in zip(ks, accs)]

    if "update_consistency" in wanted and "seq" in modes:
        for t in range(len(tvs["seq"])):
            rows += consistency_entries(analysis.update_consistency(tvs["seq"], reference=t), after_task=t)

    if "contributions" in wanted:
        for mode in modes:
            rows += contribution_entries(analysis.contributions(tvs[mode]), finetuning=mode)

    if "leave_one_out" in wanted:
        for mode in modes:
            merges = [merging.magmax(list(tvs[mode])), *analysis.leave_one_out(tvs[mode])]
            accs = evaluate([("tau", tv, lam) for tv in merges])
            for left_out, (overall, per_task) in zip(range(-1, len(tvs[mode])), accs):
                # the all-task merge has no x; the others name the task vector left out
                common = {"role": "analysis", "metric": "leave_one_out_accuracy", "method": "magmax",
                          "finetuning": mode, "after_task": len(tvs[mode]) - 1, "lam": lam,
                          "x": float(left_out) if left_out >= 0 else math.nan,
                          "x_kind": "left_out" if left_out >= 0 else ""}
                rows.append({**common, "eval_task": -1, "value": overall})
                rows += [{**common, "eval_task": c, "value": acc} for c, acc in enumerate(per_task)]

    if "layer_magnitudes" in wanted and "seq" in modes:
        running = merging.RunningMagMax()
        for t, tv in enumerate(tvs["seq"]):
            running.add(tv)
            rows += layer_magnitude_entries(analysis.mean_magnitude_by_layer(running.value), after_task=t)

    if "entry_histograms" in wanted:
        for mode in modes:
            edges = analysis.histogram_edges(tvs[mode])
            for t, tv in enumerate(tvs[mode]):
                rows += histogram_entries(analysis.entry_histogram(tv, edges), method="task_vector",
                                          finetuning=mode, after_task=t)
            rows += histogram_entries(analysis.entry_histogram(merging.magmax(list(tvs[mode])), edges),
                                      method="magmax", finetuning=mode, after_task=last[mode])
    return rows
