"""Fine-tuning chains in plain torch: what one Ray Train run executes for a ``ChainUnit``.

For sequential, LwF and EWC modes the tasks of one scenario in order, each starting from the
previous weights; for independent mode one or more tasks each starting from θ0; for joint mode
all tasks at once. Every finished task leaves a safetensors checkpoint of the image tower in the
unit's content-addressed folder (``pipeline.units`` plans the units and their keys), and a rerun
starts after the last one it finds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from pipeline.finetune import EWC, LwF, frozen_copy, train_task, world_info
from pipeline.models import load_visual_state, visual_state
from pipeline.scenario import Scenario
from pipeline.storage import CheckpointStore, TrainState, say, shown
from pipeline.units import CHAINED, ChainUnit, recipe_from


def _steps(n: int, batch: int) -> int:
    """Optimizer steps per epoch: global batches of ``batch`` (the last one smaller), any worker count."""
    return max(1, -(-n // batch))


def run_chain(
    scn: Scenario,
    unit: ChainUnit,
    unit_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    on_task_done: Callable[[int, str, dict], None] | None = None,
    on_epoch_done: Callable[[int, int, float], None] | None = None,
    is_writer: bool = True,
    metadata: dict[str, str] | None = None,
) -> list[str]:
    """Fine-tune the unit's tasks, one checkpoint per task and an epoch state while a task runs.

    Whatever the store already holds is reused: finished tasks are loaded, and a task with an
    epoch state continues after its last finished epoch, so a restarted worker redoes at most
    one epoch. Returns the checkpoint locations of ``unit.outputs``.

    Under torch.distributed (a Ray Train worker group) each worker trains on its part of every
    global batch (``Scenario.train_loader``) and ``train_task`` sums the gradients, so the
    weights do not depend on the worker count; no DDP wrapper and no DistributedSampler.
    """
    cfg = scn.cfg
    store = CheckpointStore(unit_dir)
    f = cfg.finetune
    sequential = unit.mode in CHAINED
    start_from = "first" if unit.mode == "first" else f.start_from
    ewc = EWC(lam=f.ewc_lambda, fisher_mode=f.ewc_fisher) if unit.mode == "ewc" else None
    model = scn.classifier()
    rank, world = world_info()
    first_state: dict[str, torch.Tensor] | None = None
    paths: list[str] = []
    tasks = unit.outputs

    for i, task in enumerate(tasks):
        done = store.has(task)
        if done:
            state = store.load(task, scn.theta0)
            paths.append(store.task_file(task))
        if ewc is not None and i > 0 and not done and not ewc.fisher:
            _resume_ewc(ewc, scn, store, model, tasks[:i], device)
        if done:
            if sequential:
                _load(model, state)
            if task == tasks[0]:
                first_state = state
            continue

        # starting point: θ0 for independent, θ_{t-1} for sequential (Table 6: θ0 or θ1 alike)
        if unit.mode == "ind" or (sequential and start_from == "zero"):
            _load(model, scn.theta0)
        elif sequential and start_from == "first" and first_state is not None:
            _load(model, first_state)
        train_tasks = list(unit.tasks) if unit.mode == "joint" else [task]
        recipe = recipe_from(cfg, scn.epochs_for(None if unit.mode == "joint" else task))
        head, lmap = scn.train_head(None if unit.mode == "joint" else task)
        loader = scn.train_loader(train_tasks, cfg.seed * 1000 + task, f.batch_size,
                                  0 if scn.in_memory else f.loader_workers, rank=rank, world=world)
        regularizer = None
        if unit.mode == "lwf" and i > 0:
            # the teacher is the previous task's final model, also when this task resumes mid-way
            seen = sorted({c for t in tasks[:i] for c in scn.task_classes[t]})
            regularizer = LwF(frozen_copy(model), scn.head[seen], f.lwf_lambda, f.lwf_temperature)
        elif ewc is not None:
            regularizer = ewc
        resume = None
        saved = store.load_epoch(task, scn.theta0)
        if saved is not None and saved.epoch < recipe.epochs:
            _load(model, saved.weights)
            resume = (saved.epoch, saved.optimizer)

        def save_state(epochs_done: int, optimizer: torch.optim.Optimizer, task: int = task) -> None:
            if is_writer:
                store.save_epoch(task, TrainState(epochs_done, _state(model), optimizer.state_dict()))

        def epoch_done(epoch: int, loss: float, task: int = task) -> None:
            if on_epoch_done is not None:
                on_epoch_done(task, epoch, loss)

        torch.manual_seed(cfg.seed * 1000 + task)
        n = sum(len(scn.train_task_idx[t]) for t in train_tasks)
        stats = train_task(model, loader, head, recipe, steps_per_epoch=_steps(n, f.batch_size),
                           device=device, regularizer=regularizer, label_map=lmap, on_epoch_end=epoch_done,
                           save_state=save_state, resume=resume)
        if ewc is not None:
            _consolidate(ewc, scn, model, task, device)
            if is_writer:
                store.save_fisher(task, ewc.fisher)
        state = _state(model)
        if is_writer:
            store.save(task, state, metadata={"unit": unit.label, "task": str(task), **(metadata or {})})
            if ewc is not None:
                # only the last finished task's Fisher is needed to resume; none once the chain is done
                if i > 0:
                    store.drop_fisher(tasks[i - 1])
                if task == tasks[-1]:
                    store.drop_fisher(task)
        if task == tasks[0]:
            first_state = state
        paths.append(store.task_file(task))
        if on_task_done is not None:
            on_task_done(task, store.task_file(task), stats)
    return paths


def _consolidate(ewc: EWC, scn: Scenario, model, task: int, device: str | torch.device) -> None:
    """Fold ``task``'s Fisher into ``ewc`` from the weights ``model`` holds after the task."""
    f = scn.cfg.finetune
    head, lmap = scn.train_head(task)
    ewc.consolidate(model, _mapped(scn.train_loader([task], scn.cfg.seed, f.batch_size), lmap), head,
                    torch.device(device), f.ewc_fisher_batches, batch_size=f.batch_size,
                    micro_batch_size=f.micro_batch_size)


def _resume_ewc(ewc: EWC, scn: Scenario, store: CheckpointStore, model, finished: list[int],
                device: str | torch.device) -> None:
    """A chain resumed after ``finished``: the Fisher saved after the last of them, as an
    uninterrupted chain holds it. Without that file (a run from before it existed, or a damaged
    one) the Fisher is rebuilt task by task from their weights; the reference Fisher is then not
    exactly the uninterrupted one (the official loop starts from the last training step's
    gradient, which a checkpoint does not hold), and the log says so."""
    saved = store.load_fisher(finished[-1])
    if saved is not None:
        ewc.restore(model, saved)  # model holds the last finished task's weights
        return
    if ewc.fisher_mode == "reference":
        say(f"EWC: no saved Fisher after task {finished[-1]} in {shown(store.folder)}; rebuilding it from "
            "the finished tasks' weights, without their last training step's gradient (the official "
            "Fisher's first term): this chain's later tasks may differ slightly from an uninterrupted run")
    for prev in finished:
        _load(model, store.load(prev, scn.theta0))
        _consolidate(ewc, scn, model, prev, device)


def _mapped(loader, label_map):
    """Batches with dataset labels mapped to task-head rows (mapping done in the loop)."""
    return _MapLabels(loader, label_map)


class _MapLabels:
    def __init__(self, loader, label_map: torch.Tensor | None) -> None:
        self.loader, self.label_map = loader, label_map

    def __iter__(self):
        for images, labels in self.loader:
            yield images, labels if self.label_map is None else self.label_map[torch.as_tensor(labels)]

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(epoch)


def _unwrap(visual: torch.nn.Module) -> torch.nn.Module:
    return getattr(visual, "module", visual)


def _state(model) -> dict[str, torch.Tensor]:
    return visual_state(_unwrap(model.visual))


def _load(model, state: dict[str, torch.Tensor]) -> None:
    load_visual_state(_unwrap(model.visual), state)
