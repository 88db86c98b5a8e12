"""Units of work in plain torch: a fine-tuning chain and the evaluation of a set of weights.

A chain is what one Ray Train run executes: for sequential, LwF and EWC modes the tasks of one
scenario in order, each starting from the previous weights; for independent mode one or more
tasks each starting from θ0; for joint mode all tasks at once. Every finished task leaves a
safetensors checkpoint of the image tower in the unit's content-addressed folder, and a rerun
starts after the last one it finds.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from pipeline.config import BenchmarkConfig, ScenarioConfig
from pipeline.evaluation import accuracy, predict
from pipeline.finetune import EWC, LwF, Recipe, frozen_copy, train_task, world_info
from pipeline.models import load_visual_state, visual_state
from pipeline.scenario import Scenario
from pipeline.storage import CheckpointStore, TrainState

MODES = ("seq", "ind", "lwf", "ewc", "joint", "first")
# "first" is a sequential chain whose task t starts from θ_1 (Table 6), whatever finetune.start_from
# says; it is the same chain as "seq" under start_from=first and shares its checkpoints.
CHAINED = ("seq", "lwf", "ewc", "first")


@dataclass(frozen=True)
class ChainUnit:
    """A set of fine-tuned checkpoints one Train run produces (its folder is content-addressed)."""

    scenario: ScenarioConfig
    mode: str                      # seq | ind | lwf | ewc | joint | first
    tasks: tuple[int, ...]         # task indices this unit trains (joint: all, trained at once)

    def key(self, cfg: BenchmarkConfig) -> str:
        """Content address of the unit's folder: everything its weights depend on, nothing else.

        Independent tasks share one folder per scenario (one file per task), so however they are
        grouped into Train runs they are trained once; only the chained modes depend on the
        starting point, and only LwF/EWC on their own hyper-parameters.
        """
        return checkpoint_key(cfg, self.scenario, self.mode)

    @property
    def label(self) -> str:
        if self.mode == "joint" and joint_spans_dataset(self.scenario):
            return f"{self.scenario.dataset}-joint"
        suffix = ""
        if self.mode == "ind" and len(self.tasks) == 1:
            suffix = f"-t{self.tasks[0]}"
        elif self.mode == "ind" and self.tasks != tuple(range(_task_count(self.scenario))):
            # a pack of some of the tasks (plan.pack_independent): its own label, and so its own Train run name
            first, last = self.tasks[0], self.tasks[-1]
            contiguous = self.tasks == tuple(range(first, last + 1))
            suffix = f"-t{first}-{last}" if contiguous else "-t" + "+".join(map(str, self.tasks))
        return f"{self.scenario.label.replace('/', '_')}-{self.mode}{suffix}"

    @property
    def outputs(self) -> list[int]:
        """The tasks that leave a checkpoint (joint: one, numbered 0 whatever the task count)."""
        return [0] if self.mode == "joint" else list(self.tasks)

    @property
    def identity(self) -> tuple[str, tuple[int, ...]]:
        """What makes two units the same work, given equal keys: mode and output files."""
        return self.mode, tuple(self.outputs)


def _task_count(scenario: ScenarioConfig) -> int:
    """The scenario's tasks (a domain-incremental one has at most its dataset's domains; as plan.num_tasks)."""
    from pipeline.scenario import DOMAIN_ORDERS

    domains = DOMAIN_ORDERS.get(scenario.dataset) if scenario.kind == "domain_incremental" else None
    return min(scenario.tasks, len(domains)) if domains else scenario.tasks


def joint_spans_dataset(scenario: ScenarioConfig) -> bool:
    """Whether Joint trains on the whole dataset whatever the scenario's task count: a
    class-incremental split covers every class, so its union is the full train set."""
    return scenario.kind == "class_incremental"


# datasets whose reference class order is the official code's permutation (pipeline.data.class_orders)
OFFICIAL_ORDER_DATASETS = ("imagenet_r", "cub200", "domainnet")


def data_determinant(cfg: BenchmarkConfig, scenario: ScenarioConfig) -> tuple[str, dict]:
    """What a key says about the data: ``("content", {"data": {dataset: fingerprint}})``, the
    fingerprints of every dataset the scenario reads (pipeline.data.fingerprint), so the same
    data anywhere shares checkpoints and changed data never does.

    Where the content cannot be read the key holds data_root's path, exactly as keys did before
    fingerprints: ``"path"`` for a data_root URI or a loader of another kind (then that is the
    real key), ``"unknown"`` when a dataset is not registered or not under data_root here (a
    ``--plan`` without the data: its cache state is unknown; a run checks the data first).
    """
    from pipeline.data import fingerprint
    from pipeline.scenario import register_builtin_extras

    register_builtin_extras(cfg)
    fps = {name: fingerprint.dataset_fingerprint(name, cfg.data_root) for name in scenario.members}
    if all(fp is not None and fp.startswith("sha256:") for fp in fps.values()):
        return "content", {"data": fps}
    data_root = cfg.data_root if "://" in cfg.data_root else str(Path(cfg.data_root).resolve())
    return ("unknown" if None in fps.values() else "path"), {"data_root": data_root}


def checkpoint_key(cfg: BenchmarkConfig, scenario: ScenarioConfig, mode: str) -> str:
    from pipeline.scenario import task_epochs

    f = cfg.finetune
    start_from = f.start_from
    if mode == "first":
        mode, start_from = "seq", "first"
    recipe = {"lr": f.lr, "weight_decay": f.weight_decay, "batch_size": f.batch_size,
              "epochs": [task_epochs(cfg, scenario, t) for t in range(len(scenario.datasets))]
              if scenario.kind == "multi_dataset" else task_epochs(cfg, scenario, None),
              "warmup_steps": f.warmup_steps, "grad_clip": f.grad_clip, "precision": f.precision,
              "train_transform": f.train_transform}
    if not f.precrop_downscale and f.train_transform == "train":
        recipe["precrop_downscale"] = False  # (only then: existing keys stay as they were)
    if mode in ("seq", "lwf", "ewc"):
        recipe["start_from"] = start_from
    if mode == "lwf":
        recipe.update(lwf_lambda=f.lwf_lambda, lwf_temperature=f.lwf_temperature)
    if mode == "ewc":
        recipe.update(ewc_lambda=f.ewc_lambda, ewc_fisher_batches=f.ewc_fisher_batches)
        if f.ewc_fisher != "empirical":  # (only then: existing empirical keys stay as they were)
            recipe["ewc_fisher"] = f.ewc_fisher
    determinants = {
        "backbone": [cfg.model.backbone, cfg.model.pretrained], **data_determinant(cfg, scenario)[1],
        "dataset": scenario.dataset, "kind": scenario.kind, "tasks": scenario.tasks,
        "class_order_seed": scenario.class_order_seed, "mode": mode, "recipe": recipe, "seed": cfg.seed,
    }
    if scenario.kind == "class_incremental" and scenario.class_order_seed < 0 \
            and scenario.dataset in OFFICIAL_ORDER_DATASETS:
        # their reference order became the official code's permutation (was the natural order)
        determinants["class_order"] = "official"
    if mode == "joint" and joint_spans_dataset(scenario):
        # Joint trains once on the whole (sorted) train set: the split and the class order do not
        # reach its weights, so every task count of a dataset shares one Joint checkpoint
        del determinants["tasks"], determinants["class_order_seed"]
    if scenario.kind == "multi_dataset":
        # (only here, so that the keys of existing single-dataset checkpoints stay as they were)
        determinants["datasets"] = list(scenario.datasets)
    blob = json.dumps(determinants, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def checkpoint_path(unit_dir: str | Path, task: int) -> str:
    return CheckpointStore(unit_dir).task_file(task)


def recipe_from(cfg: BenchmarkConfig, epochs: int) -> Recipe:
    f = cfg.finetune
    return Recipe(lr=f.lr, weight_decay=f.weight_decay, epochs=epochs, warmup_steps=f.warmup_steps,
                  grad_clip=f.grad_clip, precision=f.precision, micro_batch_size=f.micro_batch_size)


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
            # resumed mid-chain: rebuild the Fisher of the finished tasks before going on
            for prev in tasks[:i]:
                _load(model, store.load(prev, scn.theta0))
                head, lmap = scn.train_head(prev)
                ewc.consolidate(model, _mapped(scn.train_loader([prev], cfg.seed, f.batch_size), lmap),
                                head, torch.device(device), f.ewc_fisher_batches, batch_size=f.batch_size)
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
            ewc.consolidate(model, _mapped(scn.train_loader([task], cfg.seed, f.batch_size), lmap), head,
                            torch.device(device), f.ewc_fisher_batches, batch_size=f.batch_size)
        state = _state(model)
        if is_writer:
            store.save(task, state, metadata={"unit": unit.label, "task": str(task), **(metadata or {})})
        if task == tasks[0]:
            first_state = state
        paths.append(store.task_file(task))
        if on_task_done is not None:
            on_task_done(task, store.task_file(task), stats)
    return paths


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


@dataclass
class EvalData:
    """What an ``Evaluator`` reads, without the scenario's training data or the dataset files:
    built once where the scenario is (the driver) and shipped through Ray's object store, so an
    evaluation worker or Tune trial does not decode the dataset and load the backbone again."""

    model: torch.nn.Module                   # ImageClassifier over θ0
    theta0: dict[str, torch.Tensor]
    head: torch.Tensor
    images: torch.Tensor                     # decoded, eval-transformed test images (test-loader order)
    labels: torch.Tensor
    groups: list[np.ndarray]                 # positions of each task's test samples
    task_classes: list[list[int]]
    multi_dataset: bool
    batch_size: int


class Evaluator:
    """Evaluation of image-tower weights on a scenario's test set, held in memory when the
    scenario's images are (else read from disk on every call).

    Task-agnostic over all classes, except in a multi-dataset scenario, where each dataset's
    test samples are classified with its own head and the overall figure is the datasets' mean.
    """

    def __init__(self, scn: Scenario | None, device: str | torch.device = "cpu", *,
                 data: EvalData | None = None) -> None:
        self.scn = scn
        self.device = torch.device(device)
        self.images = self.labels = self.loader = None
        if data is not None:  # (Evaluator.from_data)
            self.model, self.theta0, self.head = data.model, data.theta0, data.head
            self.images, self.labels, self.groups = data.images, data.labels, data.groups
            self.task_classes, self.multi_dataset, self.batch_size = (data.task_classes, data.multi_dataset,
                                                                      data.batch_size)
            return
        assert scn is not None
        self.model, self.theta0, self.head = scn.classifier(), scn.theta0, scn.head
        self.task_classes, self.multi_dataset, self.batch_size = (scn.task_classes, scn.multi_dataset,
                                                                  scn.cfg.eval_batch_size)
        self.loader = scn.test_loader(scn.cfg.eval_batch_size, 0 if scn.in_memory else scn.cfg.finetune.loader_workers)
        if scn.in_memory:  # decoded once, then every evaluation is forward passes only
            xs, ys = zip(*self.loader)
            self.images, self.labels = torch.cat(xs), torch.cat([torch.as_tensor(y) for y in ys])
        self.groups = scn.test_eval_groups()

    @classmethod
    def from_data(cls, data: EvalData, device: str | torch.device = "cpu") -> "Evaluator":
        return cls(None, device, data=data)

    def data(self) -> EvalData | None:
        """This evaluator's inputs to ship to other processes (None: its images are read from disk)."""
        if self.images is None:
            return None
        _load(self.model, self.theta0)  # (whatever it evaluated last: it travels as the model over θ0)
        return EvalData(self.model, self.theta0, self.head, self.images, self.labels, self.groups,
                        self.task_classes, self.multi_dataset, self.batch_size)

    def _batches(self, positions: np.ndarray | None = None):
        """Test batches (of ``positions`` in test-loader order, else all), from memory or disk."""
        bs = self.batch_size
        if self.images is not None:
            images, labels = self.images, self.labels
            if positions is not None:
                idx = torch.as_tensor(positions)
                images, labels = images[idx], labels[idx]
            return ((images[i:i + bs], labels[i:i + bs]) for i in range(0, len(labels), bs))
        if positions is None:
            return self.loader
        return torch.utils.data.DataLoader(torch.utils.data.Subset(self.loader.dataset, positions.tolist()),
                                           batch_size=bs, shuffle=False, num_workers=self.loader.num_workers)

    def __call__(self, state: dict[str, torch.Tensor]) -> tuple[float, list[float]]:
        """(accuracy over the whole test set, accuracy per task), in percent."""
        _load(self.model, state)
        if self.multi_dataset:
            per_task = []
            for t, group in enumerate(self.groups):
                # each dataset's images classified over its own head rows only
                classes = np.asarray(self.task_classes[t])
                preds, labels = predict(self.model, self._batches(group), self.head[torch.as_tensor(classes)],
                                       self.device)
                per_task.append(accuracy(classes[preds], labels))
            return float(np.mean(per_task)), per_task
        preds, labels = predict(self.model, self._batches(), self.head, self.device)
        per_task = [accuracy(preds[g], labels[g]) for g in self.groups]
        return accuracy(preds, labels), per_task
