"""From YAML and ``key=value`` overrides to a config tree, types checked key by key."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from pipeline.config.schema import BenchmarkConfig, ConfigError, ScenarioConfig

def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (converting YAML lists to tuples)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        return build(tp, value, key)
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


def build(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
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


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
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
        try:
            raw.encode("utf-8")
        except UnicodeEncodeError:  # (the shell passed bytes that are not UTF-8: surrogate escapes)
            raise ConfigError(f"{key.strip()}: the value is not UTF-8 text") from None
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            at = f" at character {mark.column + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"{key.strip()}: the value {raw!r} is not valid YAML{at} ({problem}); "
                              f"quote a string, close a list or a mapping") from None
        if isinstance(value, float) and raw.strip().lower() in ("nan", ".nan"):
            raise ConfigError(f"{key}: NaN is not a valid value")
        out.append((key.strip(), value))
    return out


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


def merge_tree(tree: dict, patch: Mapping[str, Any]) -> None:
    for key, value in patch.items():
        if isinstance(value, Mapping) and isinstance(tree.get(key), dict):
            merge_tree(tree[key], value)
        else:
            tree[key] = value


def check_path(dotted: str) -> None:
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
