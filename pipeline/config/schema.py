"""The config's schema: frozen dataclasses, their vocabularies and the profiles."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

class ConfigError(ValueError):
    """A config key is unknown, mistyped or out of range; the message names the key."""


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "local-dir:assets/tiny_clip"
    pretrained: str = ""            # open_clip tag (openai, laion400m_e32) or a weights file
    cache_dir: str = ""             # where open_clip keeps downloaded weights
    allow_download: bool = False    # the default path never touches the network


SCENARIO_KINDS = ("class_incremental", "domain_incremental", "multi_dataset")


@dataclass(frozen=True)
class ScenarioConfig:
    dataset: str = "demo_shapes"
    kind: str = "class_incremental"   # class_incremental | domain_incremental | multi_dataset
    tasks: int = 5                    # multi_dataset: the number of datasets (one task each)
    name: str = ""                    # defaults to "<dataset>/<tasks>", "<dataset>/dil" or "<N>datasets"
    class_order_seed: int = -1        # -1: the reference order (CIFAR100, ImageNet-R, CUB200, DomainNet: the official code's; else natural); else a seeded shuffle
    analyses: tuple[str, ...] = ()    # figure analyses of this scenario (pipeline.orchestration.figures.ANALYSES)
    # multi_dataset (Table 5): task t is the whole of datasets[t], trained and evaluated with that
    # dataset's own zero-shot head; ``dataset`` stays empty
    datasets: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()     # this scenario's methods; empty: the config's ``methods``

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.kind == "multi_dataset":
            return f"{len(self.datasets)}datasets"
        return f"{self.dataset}/dil" if self.kind == "domain_incremental" else f"{self.dataset}/{self.tasks}"

    @property
    def members(self) -> tuple[str, ...]:
        """Every dataset the scenario reads."""
        return self.datasets if self.kind == "multi_dataset" else (self.dataset,)


@dataclass(frozen=True)
class FinetuneConfig:
    """The paper's recipe (design.md); ``epochs`` 0 means the dataset's default."""

    lr: float = 1e-5
    weight_decay: float = 0.1
    batch_size: int = 128
    epochs: int = 0
    warmup_steps: int = 500
    grad_clip: float = 1.0
    loader_workers: int = 2
    precision: str = "fp32"          # fp32 (the official code) | bf16 | fp16 autocast; auto: bf16 on GPU, fp32 on CPU
    micro_batch_size: int = 0        # gradient accumulation: 0 = the whole part, halved after a CUDA out-of-memory error
    train_transform: str = "train"   # train: the backbone's train preprocessing (official); eval: the eval transform
    precrop_downscale: bool = True   # hold train images downscaled to the random crop's need (memory, decoded cache); false: crop the full image, as the official code
    decoded_cache: str = ""          # off | cpu | gpu: decode each split once per node into a memory-mapped cache; "" = MAGMAX_DECODED_CACHE, else off
    decoded_cache_dir: str = ""      # node-local folder of that cache; "" = MAGMAX_CACHE_DIR, else ~/.cache/magmax/decoded
    start_from: str = "previous"     # previous (theta_t-1), zero (theta_0), first (theta_1): Table 6
    lwf_lambda: float = 0.3
    lwf_temperature: float = 2.0
    ewc_lambda: float = 1e6
    ewc_fisher_batches: int = 0      # 0: the whole task's training set
    ewc_fisher: str = "empirical"    # empirical (textbook) | reference (the official code's computation)


@dataclass(frozen=True)
class MergeConfig:
    """Each method's lambda as in the paper (no per-method tuning)."""

    magmax_lambda: float = 0.5
    maxabs_lambda: float = 0.5
    ties_lambda: float = 0.55
    ties_top_k: float = 0.2
    ties_scope: str = "image_tower"  # image_tower | whole_model (the official code: text tower's zeros count in the threshold)
    ties_entries: str = "auto"       # exact: int(d*k) kept | official: int(d*k)+1 | auto: official under whole_model
    randmix_lambda: float = 1.0
    sweep_lambdas: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 21))
    sweep_methods: tuple[str, ...] = ("magmax", "maxabs", "ties", "randmix", "task_arithmetic")
    sign_conflict_top_k: float = 0.2
    post: str = ""                   # "" | lines: LiNeS depth scaling after every merge (then applied at λ = 1)
    lines_beta: float = 0.5          # LiNeS: the last block's extra scale (alpha is the official multi-task one)


@dataclass(frozen=True)
class RayConfig:
    address: str = ""               # "" = RAY_ADDRESS or a fresh local cluster
    num_workers: int = 1            # Ray Train workers per fine-tuning unit
    use_gpu: str = "auto"           # auto | true | false
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    max_failures: int = 2
    group_independent: bool = False  # one Train run for all independent tasks (saves start-up on small runs)
    eval_cpus: float = 0.5
    eval_gpus: float = -1.0          # GPU share per evaluation task / Tune trial; -1 = 0.25 when training uses GPUs
    max_concurrent_units: int = 0   # Train runs in flight; 0 = what the cluster holds now (raise it under an autoscaler)
    train_images_per_gpu_s: float = 0.0   # for --plan's estimate; 0 = the backbone's assumed figure
    eval_images_per_gpu_s: float = 0.0
    tune_sweep: bool = True         # the (method, λ) grid on Ray Tune; false: plain evaluation tasks (profile=tiny)
    train_poll_s: float = 0.25      # how often a Train controller polls its workers; each ray.train.report waits for a poll
    unit_startup_s: float = 0.0     # --plan: fixed seconds per Train run (workers, backbone, scenario); 0 = plan.STARTUP_S's figure
    pack_gpu_s: float = 600.0       # independent tasks under this many estimated GPU-s share Train runs of up to it; 0 = one run per task


DATASET_KINDS = ("image_folder",)


@dataclass(frozen=True)
class DatasetConfig:
    """A dataset the config declares itself (``datasets: {name: {kind: image_folder, ...}}``):
    ``<data_root>/<folder or name>/{train,test}/<class_name>/<image>``, class names the folder
    names with ``_`` read as spaces. Every process registers it from the config it receives."""

    name: str = ""
    kind: str = "image_folder"
    templates: tuple[str, ...] = ("a photo of a {}.",)   # zero-shot prompts; "{}" is the class name
    folder: str = ""                 # under data_root; "" = name


@dataclass(frozen=True)
class BenchmarkConfig:
    name: str = "demo"
    profile: str = "full"            # full | tiny: the same scenarios, methods and analyses on the tiny CLIP and generated data (PROFILES)
    seed: int = 5
    seeds: tuple[int, ...] = ()      # several: the whole plan once per seed, reported as mean ± std (replaces seed)
    data_root: str = "data"
    storage: str = "results"
    demo_data: bool = False          # generate the demo world into data_root if missing
    model: ModelConfig = field(default_factory=ModelConfig)
    scenarios: tuple[ScenarioConfig, ...] = (ScenarioConfig(),)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    merge: MergeConfig = field(default_factory=MergeConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    methods: tuple[str, ...] = ("zero_shot", "joint", "seq_ft", "lwf", "ewc", "randmix", "maxabs",
                                "avg", "ties", "magmax")
    eval_batch_size: int = 512
    max_eval_per_class: int = 0      # 0: the whole test set
    suite: tuple[str, ...] = ()      # further configs (paths relative to this file) run after this one with the same overrides
    # datasets declared here (a mapping name -> DatasetConfig fields in YAML), usable by name in scenarios
    datasets: tuple[DatasetConfig, ...] = ()

    def __reduce__(self) -> tuple:
        # Ray pickles the config into every Train worker, evaluation task and Tune trial. Datasets
        # the user registered in Python (pipeline.data.register_dataset) before the run exist only
        # in the driver, so their loaders travel with the config and are registered where it is
        # unpickled (cloudpickle, as Ray uses, ships closures and __main__ functions by value).
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return (_restore_config, (type(self), values, _carried_loaders(self)))


def _carried_loaders(cfg: BenchmarkConfig) -> dict[str, Any]:
    import sys

    registry = sys.modules.get("pipeline.data.registry")
    if registry is None:  # not imported: nothing can have been registered in this process
        return {}
    declared = {d.name for d in cfg.datasets}
    return registry.carried_loaders([n for s in cfg.scenarios for n in s.members if n not in declared])


def _restore_config(cls: type, values: dict[str, Any], loaders: dict[str, Any]) -> BenchmarkConfig:
    if loaders:
        # on use: the config loads no dataset code unless a run registered loaders in Python
        from pipeline.data.registry import adopt_loaders

        adopt_loaders(loaders)
    return cls(**values)


# What a profile replaces in a config (file values; command-line overrides still win). "tiny" runs
# any paper config's structure in CI on CPUs: the committed tiny CLIP, data generated in each
# dataset's real on-disk format (pipeline.data.synthetic, written into data_root on first use),
# one epoch, a short λ sweep, and the Train loop in-process (num_workers=0: no worker group to
# start, ~2 s instead of ~20 s per unit on 2 CPUs).
PROFILES: dict[str, dict[str, Any]] = {
    "full": {},
    "tiny": {
        "data_root": "data/tiny",
        "model": {"backbone": "local-dir:assets/tiny_clip", "pretrained": "", "cache_dir": "",
                  "allow_download": False},
        "finetune": {"lr": 1e-3, "batch_size": 16, "epochs": 1, "warmup_steps": 1, "loader_workers": 0,
                     "ewc_fisher_batches": 1},
        "merge": {"sweep_lambdas": [0.5, 1.0]},
        "ray": {"num_workers": 0, "use_gpu": "false", "cpus_per_worker": 1.0, "group_independent": True,
                # one CPU per evaluation: no more evaluation processes than Ray keeps alive when idle
                # (its soft limit is the CPU count), so the next scenario finds them warm
                "eval_cpus": 1.0, "eval_gpus": 0.0, "tune_sweep": False},
        "eval_batch_size": 256,
    },
}


# pipeline.orchestration.figures.ANALYSES (Figures 2, 5, 6, 7, 8, 12, 13)
KNOWN_ANALYSES = ("pruning", "kth_magnitude", "update_consistency", "contributions", "leave_one_out",
                  "layer_magnitudes", "entry_histograms")


MERGE_POSTS = ("", "lines")

PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def scenario_methods(cfg: BenchmarkConfig, scenario: ScenarioConfig) -> tuple[str, ...]:
    """The methods run on ``scenario``: its own list, else the config's."""
    return scenario.methods or cfg.methods
