"""Fine-tuning units on Ray Train: one ``TorchTrainer`` per unit of the plan.

The unit's content-addressed folder under ``storage`` is the source of truth: every finished
task leaves its safetensors checkpoint there and every finished epoch an epoch state. When a
worker or node is lost, ``FailureConfig`` restarts the worker group (and the driver-side Ray task
is retried if its node went), and ``run_chain`` picks up after the last epoch in the folder. What
is reported to Ray Train per epoch is a small manifest (task, epoch, loss, node), so Ray never
copies model weights around.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import ray
import torch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipeline.storage import CheckpointStore
from pipeline.storage import name as storage_name
from pipeline.config import BenchmarkConfig, redact
from pipeline.finetune import NonFiniteLossError
from pipeline.orchestration.progress.monitor import worker_reporter
from pipeline.units import ChainUnit


# how often a Train controller polls its workers; read from the process that calls ``fit``
TRAIN_POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"


class UnitFailedError(RuntimeError):
    """A unit stopped for a reason a retry cannot fix (e.g. a non-finite loss)."""


def use_gpu(cfg: BenchmarkConfig) -> bool:
    """Never hard-code GPUs: "auto" asks the cluster (a GPU request on a CPU cluster waits forever)."""
    if cfg.ray.use_gpu == "auto":
        return ray.cluster_resources().get("GPU", 0) > 0
    return cfg.ray.use_gpu == "true"


def eval_resources(cfg: BenchmarkConfig) -> dict[str, float]:
    """Resources of one evaluation task or Tune trial: a GPU share wherever training has GPUs."""
    gpus = cfg.ray.eval_gpus if cfg.ray.eval_gpus >= 0 else (0.25 if use_gpu(cfg) else 0.0)
    return {"CPU": cfg.ray.eval_cpus, "GPU": gpus}


def _train_loop(config: dict[str, Any]) -> dict[str, Any] | None:
    """Ray Train worker function: run the chain, report every epoch; returns a failure, if any."""
    # on use: ray.train takes seconds to import, and so does pipeline.scenario (every dataset's
    # loader); sweep, figures and the runner import this module for eval_resources/use_gpu only
    import ray.train
    import ray.train.torch

    from pipeline.chain import run_chain  # (on use, as above: the worker's side only)
    from pipeline.scenario import build_scenario

    cfg: BenchmarkConfig = config["cfg"]
    unit: ChainUnit = config["unit"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    device = ray.train.torch.get_device() if config["use_gpu"] else torch.device("cpu")
    node = ray.get_runtime_context().get_node_id()
    scn = build_scenario(cfg, unit.scenario)
    # progress for the driver's display and progress.json (issue 13); rank 0 only, never raises
    tell = worker_reporter(cfg, unit, scn, config["unit_dir"]) if rank == 0 else None

    def report(task: int, epoch: int, loss: float) -> None:
        if tell is not None:
            tell(task, epoch, loss)
        metrics = {"task": task, "epoch": epoch + 1, "loss": loss, "node": node}
        if rank != 0:
            ray.train.report(metrics)
            return
        # metrics are only kept with a checkpoint (Train V2): a manifest, never the weights
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "manifest.json").write_text(json.dumps({**metrics, "store": redact(config["unit_dir"])}))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    # no prepare_model / prepare_data_loader: DistributedSampler would change the data order and
    # the per-worker batch, and DDP's averaging would weight unequal parts equally. run_chain splits
    # every global batch across the group Ray Train set up and train_task sums the gradients.
    try:
        run_chain(scn, unit, config["unit_dir"], device=device, on_epoch_done=report,
                  is_writer=rank == 0, metadata={"node": node, "workers": str(world)})
    except NonFiniteLossError as err:
        # deterministic: restarting the worker group would only repeat it
        return {"error": f"{type(err).__name__}: {err}"}
    return None


def unit_finished(unit: ChainUnit, unit_dir: str) -> bool:
    store = CheckpointStore(unit_dir)
    return all(store.has(t) for t in unit.outputs)


def fit_unit(cfg: BenchmarkConfig, unit: ChainUnit, unit_dir: str, storage_path: str) -> list[str]:
    """Fine-tune one unit with a ``TorchTrainer`` (skipped when all its checkpoints exist)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig  # on use: slow to import (see _train_loop)
    from ray.train.torch import TorchTrainer

    store = CheckpointStore(unit_dir)
    if unit_finished(unit, unit_dir):
        return [store.task_file(t) for t in unit.outputs]
    # each per-epoch report waits for the controller's next poll (Ray's default 2 s: 2.0 s per report
    # measured, 0.26 s at 0.25 s; bench/finetune.py). Read from this process, handed to the controller.
    os.environ[TRAIN_POLL_ENV] = str(cfg.ray.train_poll_s)
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
        run_config=RunConfig(name=f"ft-{unit.label}-{storage_name(unit_dir)}", storage_path=storage_path,
                             failure_config=FailureConfig(max_failures=cfg.ray.max_failures)),
    )
    result = trainer.fit()
    failure = getattr(result, "return_value", None)
    if isinstance(failure, dict) and failure.get("error"):
        raise UnitFailedError(f"unit {unit.label}: {failure['error']}")
    if not unit_finished(unit, unit_dir):
        raise UnitFailedError(f"unit {unit.label}: Train run ended without all checkpoints in {unit_dir}")
    return [store.task_file(t) for t in unit.outputs]


@ray.remote(num_cpus=0)
def fit_unit_task(cfg: BenchmarkConfig, unit: ChainUnit, unit_dir: str, storage_path: str) -> list[str]:
    """A Ray task that drives one TorchTrainer, so independent units fit concurrently.

    It only waits, so it asks for no CPU, which also lets it wait on a head that has none.
    ``driving_options`` places it, and with it the unit's Train controller, on the driver's node.
    Submitted with ``max_retries``: if its node dies anyway, Ray reruns it elsewhere and the unit
    resumes from its folder; application errors are not retried.
    """
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    return fit_unit(cfg, unit, unit_dir, storage_path)


def driving_options(max_failures: int) -> dict[str, Any]:
    """Ray options of the task that drives a unit: on the driver's node (soft), retried on node loss.

    Train's controller lives beside the task that calls ``fit``. On the driver's node (the head,
    under ``ray job submit``) a lost GPU node takes only Train workers, which ``FailureConfig``
    replaces; the head going down ends the job anyway. The cost is memory there: each unit in
    flight keeps its driving task and controller on that node.
    """
    here = ray.get_runtime_context().get_node_id()
    return {"max_retries": max_failures, "retry_exceptions": False,
            "scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=here, soft=True)}
