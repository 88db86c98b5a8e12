"""Fine-tuning units on Ray Train: one ``TorchTrainer`` per chain of tasks.

Every finished task writes its image-tower checkpoint (safetensors) into the unit's
content-addressed folder under ``storage``, and the same folder is reported to Ray Train as the
run's checkpoint; on a worker failure ``FailureConfig`` restarts the worker group and the chain
resumes after the last finished task.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ray
import torch

from pipeline.config import BenchmarkConfig, ScenarioConfig
from pipeline.units import ChainUnit, checkpoint_path


def use_gpu(cfg: BenchmarkConfig) -> bool:
    """Never hard-code GPUs: "auto" asks the cluster (a GPU request on a CPU cluster waits forever)."""
    if cfg.ray.use_gpu == "auto":
        return ray.cluster_resources().get("GPU", 0) > 0
    return cfg.ray.use_gpu == "true"


def _train_loop(config: dict[str, Any]) -> None:
    """Ray Train worker function: run the chain, report each task's checkpoint."""
    import ray.train
    import ray.train.torch

    from pipeline.scenario import build_scenario
    from pipeline.units import run_chain

    cfg: BenchmarkConfig = config["cfg"]
    unit: ChainUnit = config["unit"]
    unit_dir = Path(config["unit_dir"])
    ctx = ray.train.get_context()
    world = ctx.get_world_size()
    rank = ctx.get_world_rank()
    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    device = ray.train.torch.get_device() if config["use_gpu"] else torch.device("cpu")
    scn = build_scenario(cfg, unit.scenario)

    def report(task: int, path: Path, stats: dict) -> None:
        metrics = {"task": task, "loss": stats["loss"]}
        if rank == 0:
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(unit_dir)))
        else:
            ray.train.report(metrics)

    wrap_visual = ray.train.torch.prepare_model if world > 1 else None
    wrap_loader = ray.train.torch.prepare_data_loader if world > 1 else None
    run_chain(scn, unit, unit_dir, device=device, on_task_done=report, wrap_visual=wrap_visual,
              wrap_loader=wrap_loader, is_writer=rank == 0)


def unit_finished(unit: ChainUnit, unit_dir: str | Path) -> bool:
    tasks = [unit.tasks[-1]] if unit.mode == "joint" else list(unit.tasks)
    return all(checkpoint_path(unit_dir, t).is_file() for t in tasks)


def fit_unit(cfg: BenchmarkConfig, unit: ChainUnit, unit_dir: str, storage_path: str) -> list[str]:
    """Fine-tune one unit with a ``TorchTrainer`` (skipped when all its checkpoints exist)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if unit_finished(unit, unit_dir):
        return _paths(unit, unit_dir)
    gpu = use_gpu(cfg)
    resources = {"CPU": cfg.ray.cpus_per_worker}
    if gpu:
        resources["GPU"] = cfg.ray.gpus_per_worker
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={"cfg": cfg, "unit": unit, "unit_dir": unit_dir, "use_gpu": gpu,
                           "threads": max(1, int(cfg.ray.cpus_per_worker))},
        scaling_config=ScalingConfig(num_workers=cfg.ray.num_workers, use_gpu=gpu,
                                     resources_per_worker=resources),
        # a fixed name per unit: a rerun with the same storage resumes instead of starting over
        run_config=RunConfig(name=f"ft-{unit.label}-{Path(unit_dir).name}", storage_path=storage_path,
                             failure_config=FailureConfig(max_failures=cfg.ray.max_failures)),
    )
    trainer.fit()
    if not unit_finished(unit, unit_dir):
        raise RuntimeError(f"unit {unit.label}: Train run ended without all checkpoints in {unit_dir}")
    return _paths(unit, unit_dir)


def _paths(unit: ChainUnit, unit_dir: str | Path) -> list[str]:
    tasks = [unit.tasks[-1]] if unit.mode == "joint" else list(unit.tasks)
    return [str(checkpoint_path(unit_dir, t)) for t in tasks]


@ray.remote(num_cpus=0.01, max_retries=0)
def fit_unit_task(cfg: BenchmarkConfig, unit: ChainUnit, unit_dir: str, storage_path: str) -> list[str]:
    """A Ray task that drives one TorchTrainer, so independent units fit concurrently."""
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    return fit_unit(cfg, unit, unit_dir, storage_path)


def scenario_units(cfg: BenchmarkConfig, scenario: ScenarioConfig, num_tasks: int) -> list[ChainUnit]:
    """The fine-tuning units a scenario needs for the configured methods."""
    methods = set(cfg.methods)
    tasks = tuple(range(num_tasks))
    units = []
    if methods & {"seq_ft", "magmax"}:
        units.append(ChainUnit(scenario, "seq", tasks))
    if methods & {"ind_ft", "maxabs", "avg", "ties", "randmix", "task_arithmetic"}:
        if cfg.ray.group_independent:
            units.append(ChainUnit(scenario, "ind", tasks))
        else:
            units.extend(ChainUnit(scenario, "ind", (t,)) for t in tasks)
    if methods & {"lwf", "lwf_magmax"}:
        units.append(ChainUnit(scenario, "lwf", tasks))
    if methods & {"ewc", "ewc_magmax"}:
        units.append(ChainUnit(scenario, "ewc", tasks))
    if "joint" in methods:
        units.append(ChainUnit(scenario, "joint", tasks))
    return units
