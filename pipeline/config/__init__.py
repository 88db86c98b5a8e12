"""One config system: frozen dataclasses <- YAML + ``key=value`` overrides.

Unknown keys and wrong types are rejected with the dotted key named; the resolved config is
saved beside the results and its hash identifies a run. The schema is in ``schema``, reading
and overrides in ``parse``, the range checks in ``checks``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from pipeline.config.checks import validate
from pipeline.config.parse import build, check_path, merge_tree, parse_overrides, read_yaml, set_dotted, to_dict
from pipeline.config.schema import (DATASET_KINDS, KNOWN_ANALYSES, MERGE_POSTS, PROFILES, SCENARIO_KINDS,
                                    BenchmarkConfig, ConfigError, DatasetConfig, FinetuneConfig, MergeConfig,
                                    ModelConfig, RayConfig, ScenarioConfig, scenario_methods)
from pipeline.storage.paths import redact

__all__ = ["BenchmarkConfig", "ConfigError", "DatasetConfig", "FinetuneConfig", "MergeConfig", "ModelConfig",
           "RayConfig", "ScenarioConfig", "DATASET_KINDS", "KNOWN_ANALYSES", "MERGE_POSTS", "PROFILES",
           "SCENARIO_KINDS", "config_hash", "config_yaml", "from_dict", "load_config", "load_suite",
           "parse_overrides", "read_yaml", "redact", "result_identity", "save_config", "scenario_methods", "to_dict",
           "validate"]


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
        base = to_dict(build(BenchmarkConfig, tree))
        parsed = parse_overrides(overrides)
        for key, value in parsed:
            check_path(key)
            set_dotted(base, key, value)
        tree = base
    else:
        parsed = []
    profile = tree.get("profile", "full")
    if isinstance(profile, str) and PROFILES.get(profile):
        # the profile replaces what the file says; what the command line says still wins
        tree = to_dict(build(BenchmarkConfig, tree))
        merge_tree(tree, PROFILES[profile])
        for key, value in parsed:
            set_dotted(tree, key, value)
    return validate(build(BenchmarkConfig, tree))


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


def config_hash(cfg: Any) -> str:
    """A short stable hash of a config (or any config part)."""
    blob = json.dumps(to_dict(cfg), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def result_identity(cfg: BenchmarkConfig) -> dict:
    """The config minus what cannot change results: how Ray runs it, where storage and data are
    (the data's content is compared through its fingerprint instead)."""
    tree = to_dict(cfg)
    tree.pop("ray")
    tree.pop("storage")  # a run folder copied or mounted elsewhere is the same run
    tree.pop("data_root")  # the same data under another path is the same data
    for entry in tree["datasets"]:
        entry.pop("folder")  # (where a declared dataset lies under data_root: its content counts)
    return tree


def save_config(cfg: BenchmarkConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML, atomically, with credentials redacted.

    A URI may carry credentials (``s3://KEY:SECRET@bucket/runs``, ``?secret_key=...``); the saved
    copy is a record that lands beside the results, so those parts become ``***``. Credentials
    belong in the environment (``AWS_ACCESS_KEY_ID``, ...), which is never written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(config_yaml(cfg))
    os.replace(tmp, path)
    return path


def config_yaml(cfg: BenchmarkConfig) -> str:
    """The resolved config as YAML text, credentials redacted (what ``save_config`` writes)."""
    return yaml.safe_dump(redact(to_dict(cfg)), sort_keys=False)


def from_dict(tree: Mapping[str, Any]) -> BenchmarkConfig:
    """A config from its plain form (e.g. a saved ``config.yaml``), defaults filled in and validated."""
    return validate(build(BenchmarkConfig, tree))
