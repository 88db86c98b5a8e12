"""Fine-tuning units on Ray Train: one Train run per unit of the plan.

The unit's content-addressed folder under ``storage`` is the source of truth: every finished
task leaves its safetensors checkpoint there and every finished epoch an epoch state. When a
worker or node is lost, ``FailureConfig`` restarts the worker group (and the driving actor is
restarted if its node went), and ``run_chain`` picks up after the last epoch in the folder. What
is reported to Ray Train per finished task is a small manifest (task, epochs, loss, node), so Ray
never copies model weights around.
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
    """Ray Train worker function: run the chain, report every task; returns a failure, if any."""
    # on use: ray.train takes seconds to import, and so does pipeline.scenario (every dataset's
    # loader); sweep, figures and the runner import this module for eval_resources/use_gpu only
    import ray.train
    import ray.train.torch

    from pipeline.chain import run_chain  # (on use, as above: the worker's side only)
    from pipeline.scenario import build_scenario

    cfg, unit = _unpack(config["job"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    device = ray.train.torch.get_device() if config["use_gpu"] else torch.device("cpu")
    if device.type == "cuda":  # (what TorchConfig's context does; one-worker runs go without it)
        torch.cuda.set_device(device)
    node = ray.get_runtime_context().get_node_id()
    scn = build_scenario(cfg, unit.scenario)
    # progress for the driver's display and progress.json (issue 13); rank 0 only, never raises
    tell = worker_reporter(cfg, unit, scn, config["unit_dir"]) if rank == 0 else None

    def epoch_done(task: int, epoch: int, loss: float) -> None:
        if tell is not None:
            tell(task, epoch, loss)

    def task_done(task: int, path: str, stats: dict) -> None:
        # one report per finished task, not per epoch: a report waits for the controller's next
        # poll (0.26 s each at ray.train_poll_s 0.25; 210 of them in the demo). The unit's folder,
        # not Train's checkpoint, is what a restart resumes from.
        metrics = {"task": task, "epochs": int(stats.get("epochs", 0)), "loss": float(stats.get("loss", float("nan"))),
                   "node": node}
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
        run_chain(scn, unit, config["unit_dir"], device=device, on_epoch_done=epoch_done, on_task_done=task_done,
                  is_writer=rank == 0, metadata={"node": node, "workers": str(world)})
    except NonFiniteLossError as err:
        # deterministic: restarting the worker group would only repeat it
        return {"error": f"{type(err).__name__}: {err}"}
    return None


def unit_finished(unit: ChainUnit, unit_dir: str) -> bool:
    store = CheckpointStore(unit_dir)
    return all(store.has(t) for t in unit.outputs)


def fit_unit(cfg: BenchmarkConfig, unit: ChainUnit, unit_dir: str, storage_path: str) -> list[str]:
    """Fine-tune one unit with a Ray Train run (skipped when all its checkpoints exist).

    A one-worker run goes through Train's plain ``DataParallelTrainer``: no process group to set
    up, and its controller (which waits on the head for the whole run) never imports torch,
    0.18 instead of 0.65 GB there (``bench/head_memory.py``). Several workers need
    ``TorchTrainer``'s process group. Either way the config and unit reach the workers as one
    object-store ref, so the controller, which holds the run's ``train_loop_config``, does not
    unpickle them (they import the merging code and torch).
    """
    from ray.train import BackendConfig, FailureConfig, RunConfig, ScalingConfig  # on use: slow to import
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

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
    job = ray.put((cfg, unit)) if cfg.ray.num_workers > 0 else (cfg, unit)
    kwargs: dict[str, Any] = dict(
        train_loop_config={"job": job, "unit_dir": unit_dir, "use_gpu": gpu,
                           "threads": max(1, int(cfg.ray.cpus_per_worker))},
        scaling_config=ScalingConfig(num_workers=cfg.ray.num_workers, use_gpu=gpu,
                                     resources_per_worker=resources),
        # a fixed name per unit: a rerun with the same storage resumes instead of starting over
        run_config=RunConfig(name=f"ft-{unit.label}-{storage_name(unit_dir)}", storage_path=storage_path,
                             failure_config=FailureConfig(max_failures=cfg.ray.max_failures)),
    )
    if cfg.ray.num_workers > 1:
        from ray.train.torch import TorchTrainer

        trainer: Any = TorchTrainer(_train_loop, **kwargs)
    else:
        trainer = DataParallelTrainer(_train_loop, backend_config=BackendConfig(), **kwargs)
    result = trainer.fit()
    failure = getattr(result, "return_value", None)
    if isinstance(failure, dict) and failure.get("error"):
        raise UnitFailedError(f"unit {unit.label}: {failure['error']}")
    if not unit_finished(unit, unit_dir):
        raise UnitFailedError(f"unit {unit.label}: Train run ended without all checkpoints in {unit_dir}")
    return [store.task_file(t) for t in unit.outputs]


@ray.remote(num_cpus=0)
def fit_unit_task(cfg: BenchmarkConfig, unit: ChainUnit, unit_dir: str, storage_path: str) -> list[str]:
    """A Ray task that fine-tunes one unit in its own process: the in-process mode
    (``ray.num_workers: 0``), where the training runs in the driving process itself.

    It asks for no CPU beyond what the loop declares, so it also waits on a head that has none.
    Submitted with ``driving_options``: on the driver's node, rerun elsewhere if its node dies (the
    unit resumes from its folder); application errors are not retried.
    """
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    return fit_unit(cfg, unit, unit_dir, storage_path)


@ray.remote(num_cpus=0)
class UnitDriver:
    """Drives every Train run of a driver from one process on the driver's node, one thread per
    unit in flight (each thread calls ``fit`` and waits on that run's controller).

    One process instead of one per unit: the head then holds, per unit in flight, only the run's
    Train controller (torch-free for one-worker runs), not a second process that imports torch
    (0.65 GB each; ``bench/head_memory.py``). Created with ``driving_options``: pinned to the
    driver's node; if its process dies, Ray restarts it there and retries the calls in flight, and
    each unit resumes from its folder (the runs' controllers, owned by this process, go with it);
    application errors are not retried.
    """

    def __init__(self) -> None:
        os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")

    def fit(self, cfg: BenchmarkConfig, unit: ChainUnit, unit_dir: str, storage_path: str) -> list[str]:
        return fit_unit(cfg, unit, unit_dir, storage_path)


def driving_options(max_failures: int, concurrency: int | None = None) -> dict[str, Any]:
    """Ray options of what drives units: on the driver's node, retried if it dies.
    Without ``concurrency``, a ``fit_unit_task``'s; with it, the ``UnitDriver`` actor's (that many
    units in flight at once).

    Train's controller lives beside the process that calls ``fit``. On the driver's node (the head,
    under ``ray job submit``) a lost GPU node takes only Train workers, which ``FailureConfig``
    replaces; the head going down ends the job anyway.
    """
    node = ray.get_runtime_context().get_node_id()
    if concurrency is None:
        return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=node, soft=True),
                "max_retries": max_failures, "retry_exceptions": False}
    # hard for the actor: a soft affinity let Ray place it (and so every controller) on a worker node
    # of a head with no CPU; the driver's node outlives the driver's runs anyway
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=node, soft=False),
            "max_concurrency": max(1, concurrency), "max_restarts": max_failures,
            "max_task_retries": max_failures}


def _unpack(job: Any) -> tuple[BenchmarkConfig, ChainUnit]:
    return ray.get(job) if isinstance(job, ray.ObjectRef) else job
