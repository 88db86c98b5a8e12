"""Range checks the type system cannot express, each naming its key."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

from pipeline import methods
from pipeline.config.schema import (DATASET_KINDS, KNOWN_ANALYSES, MERGE_POSTS, PLAIN_NAME, PROFILES, SCENARIO_KINDS,
                                    BenchmarkConfig, ConfigError, ScenarioConfig, scenario_methods)

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
    if not PLAIN_NAME.fullmatch(cfg.name) or cfg.name in (".", ".."):
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


def _records() -> Mapping[str, Any]:
    """The built-in datasets' records (pipeline.data.records): their class and domain counts make
    more tasks than classes (or domains) fail when the config is read rather than after Ray has
    started. Datasets registered at run time are checked when their scenario is built."""
    from pipeline.data.records import RECORDS  # (here: importing the config loads no dataset code)

    return RECORDS


def _domain_datasets() -> list[str]:
    return sorted(n for n, r in _records().items() if r.domains)


def _check_declared_datasets(cfg: BenchmarkConfig) -> None:
    """Declared datasets: plain unique names that shadow no built-in, a known kind, templates with
    a "{}" for the class name, a folder inside data_root; no domain-incremental scenario on one."""
    seen: set[str] = set()
    for i, d in enumerate(cfg.datasets):
        where = f"datasets.{d.name}" if d.name else f"datasets[{i}]"
        if not PLAIN_NAME.fullmatch(d.name):
            raise ConfigError(f"{where}: {d.name!r} is not a plain dataset name (letters, digits, '.', '_', '-')")
        if d.name in _records():
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
                              f"domain_incremental needs one of {_domain_datasets()}")


def _check_task_count(s: ScenarioConfig, where: str) -> None:
    if s.kind == "multi_dataset":
        return
    rec = _records().get(s.dataset)
    if s.kind == "domain_incremental":
        if rec is not None and rec.domains and s.tasks > rec.num_domains:
            raise ConfigError(f"{where}.tasks: {s.tasks} tasks, but {s.dataset} has only "
                              f"{rec.num_domains} domains (one task per domain)")
        if rec is not None and not rec.domains:
            raise ConfigError(f"{where}.kind: {s.dataset} has no domains; domain_incremental needs "
                              f"one of {_domain_datasets()}")
    elif rec is not None and s.tasks > rec.num_classes:
        raise ConfigError(f"{where}.tasks: {s.tasks} tasks is more than the {rec.num_classes} "
                          f"classes of {s.dataset}")
