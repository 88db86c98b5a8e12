"""One config system: frozen dataclasses <- YAML + ``key=value`` overrides.

Unknown keys and wrong types are rejected with the dotted key named; the resolved config is
saved beside the results and its hash identifies a run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from pipeline import methods


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

_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (converting YAML lists to tuples)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        return _build(tp, value, key)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            value = [value]
        inner = args[0]
        return tuple(_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} matches none of {tp}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected null, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            # PyYAML reads 1e-5 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if number != number or number in (float("inf"), float("-inf")):
                raise ConfigError(f"{key}: {value!r} is not a finite number")
            return number
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def _build(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else key
            raise ConfigError(f"unknown config key {where!r}; known keys here: {sorted(names)}")
    if cls is ScenarioConfig and data.get("kind") == "multi_dataset":
        data = _multi_dataset_fields(data, prefix)
    if cls is BenchmarkConfig and isinstance(data.get("datasets"), Mapping):
        data = {**data, "datasets": _declared_datasets(data["datasets"])}
    kwargs = {}
    for key, value in data.items():
        where = f"{prefix}.{key}" if prefix else key
        kwargs[key] = _coerce(value, hints[key], where)
    return cls(**kwargs)


def _multi_dataset_fields(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A multi_dataset scenario's ``tasks`` is its number of datasets; ``dataset`` is unused."""
    datasets = data.get("datasets")
    if not isinstance(datasets, (list, tuple)) or not datasets:
        raise ConfigError(f"{where}.datasets: a multi_dataset scenario needs a list of datasets, one per "
                          f"task (e.g. [cars, mnist, eurosat, svhn, resisc45, sun397, dtd, gtsrb])")
    if data.get("dataset", "") not in ("", None):
        raise ConfigError(f"{where}.dataset: a multi_dataset scenario names its datasets in "
                          f"{where}.datasets; leave dataset out")
    if "tasks" in data and data["tasks"] != len(datasets):
        raise ConfigError(f"{where}.tasks: {data['tasks']!r}, but a multi_dataset scenario has one task per "
                          f"dataset and {where}.datasets has {len(datasets)}; set tasks={len(datasets)} "
                          f"or leave tasks out")
    if len(set(datasets)) != len(datasets):
        raise ConfigError(f"{where}.datasets: {list(datasets)} names a dataset twice")
    return {**data, "dataset": "", "tasks": len(datasets)}


def _declared_datasets(mapping: Mapping[str, Any]) -> list[Any]:
    """``datasets: {name: {kind: ..., templates: [...]}}`` as the list of entries the dataclass holds
    (the saved config.yaml has the list form, with each entry's ``name``: both are read)."""
    out = []
    for name, entry in mapping.items():
        if entry is None:
            entry = {}
        if not isinstance(entry, Mapping):
            raise ConfigError(f"datasets.{name}: expected a mapping (kind, templates, folder), "
                              f"got {type(entry).__name__}")
        if "name" in entry and entry["name"] != name:
            raise ConfigError(f"datasets.{name}.name: {entry['name']!r} differs from its key {name!r}")
        out.append({**entry, "name": name})
    return out


def to_dict(cfg: Any) -> Any:
    """Plain (JSON/YAML-able) form of a config."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    return cfg


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = node[_list_index(node, part, dotted, parts[:i])]
            continue
        if part not in node or not isinstance(node[part], (dict, list)):
            node[part] = {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(node, last, dotted, parts[:-1])] = value
    else:
        node[last] = value


def _list_index(node: list, part: str, dotted: str, before: Sequence[str]) -> int:
    where = ".".join(before)
    if not part.isdigit():
        raise ConfigError(f"{dotted}: {where} is a list; expected an index after it, got {part!r}")
    if int(part) >= len(node):
        raise ConfigError(f"{dotted}: {where} has {len(node)} entr{'y' if len(node) == 1 else 'ies'} "
                          f"(indices 0..{len(node) - 1}); there is no {where}.{part}")
    return int(part)


def parse_overrides(overrides: Sequence[str]) -> list[tuple[str, Any]]:
    """``key=value`` pairs; values are parsed as YAML (so ``lr=1e-4``, ``tasks=[5,10]`` work)."""
    out = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        if isinstance(value, float) and raw.strip().lower() in ("nan", ".nan"):
            raise ConfigError(f"{key}: NaN is not a valid value")
        out.append((key.strip(), value))
    return out


def scenario_methods(cfg: BenchmarkConfig, scenario: ScenarioConfig) -> tuple[str, ...]:
    """The methods run on ``scenario``: its own list, else the config's."""
    return scenario.methods or cfg.methods


def validate(cfg: BenchmarkConfig) -> BenchmarkConfig:
    """Range checks the type system cannot express, each naming its key."""
    m = cfg.merge
    for key in ("magmax_lambda", "maxabs_lambda", "ties_lambda", "randmix_lambda"):
        lam = getattr(m, key)
        if not 0.0 <= lam <= 2.0:
            raise ConfigError(f"merge.{key}: lambda {lam} is outside [0, 2]")
    for i, lam in enumerate(m.sweep_lambdas):
        if not 0.0 <= lam <= 2.0:
            raise ConfigError(f"merge.sweep_lambdas[{i}]: lambda {lam} is outside [0, 2]")
    if not 0.0 < m.ties_top_k <= 1.0:
        raise ConfigError(f"merge.ties_top_k: {m.ties_top_k} is outside (0, 1]")
    for i, name in enumerate(cfg.methods):
        if name not in methods.known():
            raise ConfigError(f"methods[{i}]: unknown method {name!r}; known: {methods.known()}")
    for i, s in enumerate(cfg.scenarios):
        if s.kind not in SCENARIO_KINDS:
            raise ConfigError(f"scenarios[{i}].kind: {s.kind!r} is not one of {', '.join(SCENARIO_KINDS)}")
        if s.kind != "multi_dataset" and s.datasets:
            raise ConfigError(f"scenarios[{i}].datasets: only a multi_dataset scenario reads several datasets "
                              f"(this one is {s.kind}; its dataset is scenarios[{i}].dataset)")
        for j, name in enumerate(s.methods):
            if name not in methods.known():
                raise ConfigError(f"scenarios[{i}].methods[{j}]: unknown method {name!r}; known: {methods.known()}")
        if s.kind == "multi_dataset" and "joint" in scenario_methods(cfg, s) and cfg.finetune.epochs == 0:
            raise ConfigError(f"methods: joint on the multi_dataset scenario {s.label!r} needs finetune.epochs > 0 "
                              f"(its datasets have different default epochs)")
        if s.tasks < 1:
            raise ConfigError(f"scenarios[{i}].tasks: must be >= 1, got {s.tasks}")
        for j, name in enumerate(s.analyses):
            if name not in KNOWN_ANALYSES:
                raise ConfigError(f"scenarios[{i}].analyses[{j}]: unknown analysis {name!r}; "
                                  f"known: {list(KNOWN_ANALYSES)}")
        _check_task_count(s, f"scenarios[{i}]")
    _check_declared_datasets(cfg)
    if not 0.0 < m.sign_conflict_top_k <= 1.0:
        raise ConfigError(f"merge.sign_conflict_top_k: {m.sign_conflict_top_k} is outside (0, 1]")
    for i, name in enumerate(m.sweep_methods):
        if name not in methods.sweepable():
            raise ConfigError(f"merge.sweep_methods[{i}]: {name!r} is not a merge with a λ to sweep; "
                              f"choose from {methods.sweepable()}")
    if m.post not in MERGE_POSTS:
        raise ConfigError(f"merge.post: {m.post!r} is not one of {list(MERGE_POSTS)}")
    if not 0.0 <= m.lines_beta <= 2.0:
        raise ConfigError(f"merge.lines_beta: {m.lines_beta} is outside [0, 2]")
    if len(set(cfg.seeds)) != len(cfg.seeds):
        raise ConfigError(f"seeds: each seed once, got {list(cfg.seeds)}")
    f = cfg.finetune
    if f.decoded_cache not in ("", "off", "cpu", "gpu"):
        raise ConfigError(f"finetune.decoded_cache: {f.decoded_cache!r} is not one of off, cpu, gpu")
    if not f.precrop_downscale and f.decoded_cache not in ("", "off"):
        raise ConfigError("finetune.decoded_cache keeps train images downscaled for the random crop; "
                          "it needs finetune.precrop_downscale=true")
    if f.lr <= 0:
        raise ConfigError(f"finetune.lr: must be > 0, got {f.lr}")
    if f.batch_size < 1:
        raise ConfigError(f"finetune.batch_size: must be >= 1, got {f.batch_size}")
    for key in ("epochs", "warmup_steps", "loader_workers", "ewc_fisher_batches"):
        if getattr(f, key) < 0:
            raise ConfigError(f"finetune.{key}: must be >= 0, got {getattr(f, key)}")
    for key in ("weight_decay", "grad_clip", "lwf_lambda", "ewc_lambda"):
        if getattr(f, key) < 0:
            raise ConfigError(f"finetune.{key}: must be >= 0, got {getattr(f, key)}")
    if f.lwf_temperature <= 0:
        raise ConfigError(f"finetune.lwf_temperature: must be > 0, got {f.lwf_temperature}")
    if cfg.eval_batch_size < 1:
        raise ConfigError(f"eval_batch_size: must be >= 1, got {cfg.eval_batch_size}")
    if cfg.max_eval_per_class < 0:
        raise ConfigError(f"max_eval_per_class: must be >= 0 (0 = the whole test set), got {cfg.max_eval_per_class}")
    if cfg.seed < 0:
        raise ConfigError(f"seed: must be >= 0, got {cfg.seed}")
    if not _PLAIN_NAME.fullmatch(cfg.name) or cfg.name in (".", ".."):
        raise ConfigError(f"name: {cfg.name!r} is not a plain folder name (letters, digits, '.', '_', '-'; "
                          f"it becomes <storage>/<name>)")
    for key in ("storage", "data_root"):
        if not getattr(cfg, key).strip():
            raise ConfigError(f"{key}: must not be empty")
    if cfg.ray.cpus_per_worker <= 0 or cfg.ray.eval_cpus <= 0:
        key = "cpus_per_worker" if cfg.ray.cpus_per_worker <= 0 else "eval_cpus"
        raise ConfigError(f"ray.{key}: must be > 0 (Ray rejects tasks that ask for no CPU), "
                          f"got {getattr(cfg.ray, key)}")
    if cfg.ray.gpus_per_worker < 0:
        raise ConfigError(f"ray.gpus_per_worker: must be >= 0, got {cfg.ray.gpus_per_worker}")
    if f.precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ConfigError(f"finetune.precision: {f.precision!r} is not fp32, bf16, fp16 or auto")
    if f.micro_batch_size < 0:
        raise ConfigError(f"finetune.micro_batch_size: must be >= 0 (0 = automatic), got {f.micro_batch_size}")
    if f.train_transform not in ("train", "eval"):
        raise ConfigError(f"finetune.train_transform: {f.train_transform!r} is not train or eval")
    if f.ewc_fisher not in ("empirical", "reference"):
        raise ConfigError(f"finetune.ewc_fisher: {f.ewc_fisher!r} is not empirical or reference")
    if m.ties_scope not in ("image_tower", "whole_model"):
        raise ConfigError(f"merge.ties_scope: {m.ties_scope!r} is not image_tower or whole_model")
    if m.ties_entries not in ("auto", "exact", "official"):
        raise ConfigError(f"merge.ties_entries: {m.ties_entries!r} is not auto, exact or official")
    if f.start_from not in ("previous", "zero", "first"):
        raise ConfigError(f"finetune.start_from: {f.start_from!r} is not previous, zero or first")
    if cfg.profile not in PROFILES:
        raise ConfigError(f"profile: {cfg.profile!r} is not one of {sorted(PROFILES)}")
    if cfg.ray.use_gpu not in ("auto", "true", "false"):
        raise ConfigError(f"ray.use_gpu: {cfg.ray.use_gpu!r} is not auto, true or false")
    if cfg.ray.num_workers < 0:
        raise ConfigError(f"ray.num_workers: must be >= 0, got {cfg.ray.num_workers}")
    if cfg.ray.max_concurrent_units < 0:
        raise ConfigError(f"ray.max_concurrent_units: must be >= 0, got {cfg.ray.max_concurrent_units}")
    if not (cfg.ray.eval_gpus == -1.0 or 0.0 <= cfg.ray.eval_gpus <= 1.0):
        raise ConfigError(f"ray.eval_gpus: {cfg.ray.eval_gpus} is neither -1 (auto) nor in [0, 1]")
    if cfg.ray.max_failures < 0:
        raise ConfigError(f"ray.max_failures: must be >= 0, got {cfg.ray.max_failures}")
    if cfg.ray.train_poll_s <= 0:
        raise ConfigError(f"ray.train_poll_s: must be > 0, got {cfg.ray.train_poll_s}")
    for key in ("unit_startup_s", "pack_gpu_s"):
        if getattr(cfg.ray, key) < 0:
            raise ConfigError(f"ray.{key}: must be >= 0, got {getattr(cfg.ray, key)}")
    return cfg


# Sizes of the built-in datasets, so that more tasks than classes (or domains) fails when the
# config is read rather than after Ray has started. Datasets registered at run time are checked
# when their scenario is built (pipeline.scenario.build_scenario).
_NUM_CLASSES = {"cifar100": 100, "imagenet_r": 200, "domainnet": 345, "cub200": 200, "cars": 196,
                "dtd": 47, "eurosat": 10, "gtsrb": 43, "mnist": 10, "svhn": 10, "resisc45": 45,
                "sun397": 397, "demo_shapes": 100}
_NUM_DOMAINS = {"domainnet": 6, "imagenet_r": 15}


def _check_declared_datasets(cfg: BenchmarkConfig) -> None:
    """Declared datasets: plain unique names that shadow no built-in, a known kind, templates with
    a "{}" for the class name, a folder inside data_root; no domain-incremental scenario on one."""
    seen: set[str] = set()
    for i, d in enumerate(cfg.datasets):
        where = f"datasets.{d.name}" if d.name else f"datasets[{i}]"
        if not _PLAIN_NAME.fullmatch(d.name):
            raise ConfigError(f"{where}: {d.name!r} is not a plain dataset name (letters, digits, '.', '_', '-')")
        if d.name in _NUM_CLASSES:
            raise ConfigError(f"{where}: {d.name!r} is a built-in dataset; declare yours under another name")
        if d.name in seen:
            raise ConfigError(f"{where}: declared twice")
        seen.add(d.name)
        if d.kind not in DATASET_KINDS:
            raise ConfigError(f"{where}.kind: {d.kind!r} is not one of {', '.join(DATASET_KINDS)}")
        if not d.templates:
            raise ConfigError(f"{where}.templates: needs at least one template, e.g. 'a photo of a {{}}.'")
        for j, t in enumerate(d.templates):
            if t.count("{}") != 1 or re.search(r"\{(?!\})|(?<!\{)\}", t):
                raise ConfigError(f"{where}.templates[{j}]: {t!r} must hold '{{}}' (the class name) once "
                                  f"and no other braces")
        folder = Path(d.folder or d.name)
        if folder.is_absolute() or ".." in folder.parts:
            raise ConfigError(f"{where}.folder: {d.folder!r} must be a path inside data_root")
    for i, s in enumerate(cfg.scenarios):
        if s.kind == "domain_incremental" and s.dataset in seen:
            raise ConfigError(f"scenarios[{i}].kind: the declared dataset {s.dataset!r} has no domains; "
                              f"domain_incremental needs one of {sorted(_NUM_DOMAINS)}")


def _check_task_count(s: ScenarioConfig, where: str) -> None:
    if s.kind == "multi_dataset":
        return
    if s.kind == "domain_incremental":
        if s.dataset in _NUM_DOMAINS and s.tasks > _NUM_DOMAINS[s.dataset]:
            raise ConfigError(f"{where}.tasks: {s.tasks} tasks, but {s.dataset} has only "
                              f"{_NUM_DOMAINS[s.dataset]} domains (one task per domain)")
        if s.dataset in _NUM_CLASSES and s.dataset not in _NUM_DOMAINS:
            raise ConfigError(f"{where}.kind: {s.dataset} has no domains; domain_incremental needs "
                              f"one of {sorted(_NUM_DOMAINS)}")
    elif s.dataset in _NUM_CLASSES and s.tasks > _NUM_CLASSES[s.dataset]:
        raise ConfigError(f"{where}.tasks: {s.tasks} tasks is more than the {_NUM_CLASSES[s.dataset]} "
                          f"classes of {s.dataset}")


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> BenchmarkConfig:
    """Defaults <- YAML file <- overrides, type-checked and validated."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        tree = read_yaml(path)
    try:
        return _resolve(tree, overrides)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}" if path is not None else str(err)) from None


def _resolve(tree: dict[str, Any], overrides: Sequence[str]) -> BenchmarkConfig:
    if overrides:
        # apply overrides on the full default tree so list entries (scenarios.0.tasks) resolve
        base = to_dict(_build(BenchmarkConfig, tree))
        parsed = parse_overrides(overrides)
        for key, value in parsed:
            _check_path(key)
            _set_dotted(base, key, value)
        tree = base
    else:
        parsed = []
    profile = tree.get("profile", "full")
    if isinstance(profile, str) and PROFILES.get(profile):
        # the profile replaces what the file says; what the command line says still wins
        tree = to_dict(_build(BenchmarkConfig, tree))
        _merge_tree(tree, PROFILES[profile])
        for key, value in parsed:
            _set_dotted(tree, key, value)
    return validate(_build(BenchmarkConfig, tree))


def read_yaml(path: Path) -> dict[str, Any]:
    """A config file's mapping; a bad file is one line naming the file (and line) and the problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}); save the config as UTF-8") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror})") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}:{where}: YAML syntax error: {problem}") from None
    if loaded is None:
        raise ConfigError(f"{path}: the file is empty; a config is a mapping of keys (see configs/demo.yaml)")
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    return loaded


def load_suite(path: str | Path, overrides: Sequence[str] = ()) -> list[BenchmarkConfig]:
    """The config at ``path`` followed by every config of its ``suite`` (recursively, each once),
    all with the same ``overrides``; suite paths are relative to the file that names them."""
    out: list[BenchmarkConfig] = []
    seen: set[Path] = set()

    def visit(p: Path, named_in: str) -> None:
        p = p.resolve()
        if p in seen:
            return
        if not p.is_file():
            raise ConfigError(f"{named_in}: suite config {p} does not exist")
        seen.add(p)
        cfg = load_config(p, overrides)
        out.append(cfg)
        for i, sub in enumerate(cfg.suite):
            visit(p.parent / sub, f"{p.name}: suite[{i}]")

    visit(Path(path), "--config")
    names = [c.name for c in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"suite of {path}: several configs are named {dupes}; each needs its own name")
    return out


def _merge_tree(tree: dict, patch: Mapping[str, Any]) -> None:
    for key, value in patch.items():
        if isinstance(value, Mapping) and isinstance(tree.get(key), dict):
            _merge_tree(tree[key], value)
        else:
            tree[key] = value


def _check_path(dotted: str) -> None:
    cls: Any = BenchmarkConfig
    for part in dotted.split("."):
        if cls is None:
            return
        if part.isdigit():
            continue
        if not dataclasses.is_dataclass(cls):
            raise ConfigError(f"unknown config key {dotted!r}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if part not in fields:
            raise ConfigError(f"unknown config key {dotted!r}; known keys here: {sorted(fields)}")
        tp = typing.get_type_hints(cls)[part]
        if typing.get_origin(tp) is tuple:
            tp = typing.get_args(tp)[0]
        cls = tp if dataclasses.is_dataclass(tp) else None


def config_hash(cfg: Any) -> str:
    """A short stable hash of a config (or any config part)."""
    blob = json.dumps(to_dict(cfg), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def save_config(cfg: BenchmarkConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML, atomically, with credentials redacted.

    A URI may carry credentials (``s3://KEY:SECRET@bucket/runs``, ``?secret_key=...``); the saved
    copy is a record that lands beside the results, so those parts become ``***``. Credentials
    belong in the environment (``AWS_ACCESS_KEY_ID``, ...), which is never written.
    """
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(config_yaml(cfg))
    os.replace(tmp, path)
    return path


def config_yaml(cfg: BenchmarkConfig) -> str:
    """The resolved config as YAML text, credentials redacted (what ``save_config`` writes)."""
    return yaml.safe_dump(redact(to_dict(cfg)), sort_keys=False)


# user:password@ (the password may hold unescaped '/' or '+', as AWS secret keys do) or user@
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?:[^/@\s:]*:[^@\s]*|[^/@\s:]+)@")
_SECRET_PARAM = re.compile(
    r"(?P<key>[?&;](?:[A-Za-z0-9_-]*(?:secret|token|password|passwd|credential|signature|access_key)"
    r"[A-Za-z0-9_-]*|sig|key))=(?P<value>[^&;#\s]*)", re.IGNORECASE)


def redact(value: Any) -> Any:
    """``value`` (a string, or lists/dicts of them) with URI credentials replaced by ``***``."""
    if isinstance(value, str):
        value = _USERINFO.sub(lambda m: f"{m['scheme']}***@", value)
        return _SECRET_PARAM.sub(lambda m: f"{m['key']}=***", value)
    if isinstance(value, Mapping):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    return value


def from_dict(tree: Mapping[str, Any]) -> BenchmarkConfig:
    """A config from its plain form (e.g. a saved ``config.yaml``), defaults filled in and validated."""
    return validate(_build(BenchmarkConfig, tree))
