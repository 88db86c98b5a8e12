"""Planning of fine-tuning: the units of work (``ChainUnit``), their content-addressed
checkpoint keys and the recipe they train with.

A unit is what one Ray Train run executes (``pipeline.chain.run_chain``): for sequential, LwF
and EWC modes the tasks of one scenario in order, each starting from the previous weights; for
independent mode one or more tasks each starting from θ0; for joint mode all tasks at once.
Its key holds everything its weights depend on and nothing else, so equal work shares one folder.
Nothing here loads a model or data (beyond fingerprinting the dataset files for keys).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import BenchmarkConfig, ScenarioConfig
from pipeline.finetune import Recipe
from pipeline.storage import CheckpointStore
from pipeline.data import fingerprint
from pipeline.data.records import RECORDS

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
    rec = RECORDS.get(scenario.dataset)
    domains = rec.domains if rec is not None and scenario.kind == "domain_incremental" else None
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
    fps = {name: fingerprint.dataset_fingerprint(name, cfg.data_root, cfg.datasets) for name in scenario.members}
    if all(fp is not None and fp.startswith("sha256:") for fp in fps.values()):
        return "content", {"data": fps}
    data_root = cfg.data_root if "://" in cfg.data_root else str(Path(cfg.data_root).resolve())
    return ("unknown" if None in fps.values() else "path"), {"data_root": data_root}


def checkpoint_key(cfg: BenchmarkConfig, scenario: ScenarioConfig, mode: str) -> str:
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


# epochs of a dataset without a record (registered or declared at run time) and no finetune.epochs
FALLBACK_EPOCHS = 10


def task_epochs(cfg: BenchmarkConfig, scenario: ScenarioConfig, task: int | None) -> int:
    """Epochs of one task: ``finetune.epochs`` when set, else its dataset's record's (the paper's,
    design.md; the multi-dataset benchmark's own where they differ)."""
    if cfg.finetune.epochs:
        return cfg.finetune.epochs
    if scenario.kind != "multi_dataset":
        rec = RECORDS.get(scenario.dataset)
        return rec.epochs if rec is not None else FALLBACK_EPOCHS
    if task is None:
        raise ValueError(f"scenario {scenario.label}: a joint run over several datasets needs finetune.epochs > 0")
    name = scenario.datasets[task]
    rec = RECORDS.get(name)
    return rec.task_epochs(multi_dataset=True) if rec is not None else FALLBACK_EPOCHS
