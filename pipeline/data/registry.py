"""Dataset registry: the loaders a name resolves to, and the loading of a dataset by name.

The built-in datasets and their loaders are pipeline.data.records (the loaders themselves are in
pipeline.data.loaders). Nothing here downloads: a loader reads what a user put under ``data_root``
and its errors say how to fetch what is missing.

Datasets a config declares (``BenchmarkConfig.datasets``) are not registered anywhere: every
lookup that may meet one takes the declarations (``declared=cfg.datasets``), so building a
scenario changes no module state. What ``register_dataset`` adds is this process's own; the
names it added with ``carry=True`` travel to Ray workers with the config
(``BenchmarkConfig.__reduce__`` -> ``carried_loaders`` / ``adopt_loaders``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from pipeline.data.bundle import DatasetBundle, PathLike, Transform
from pipeline.data.loaders.image_folder import declared_loader
from pipeline.data.records import RECORDS

__all__ = [
    "DATASETS",
    "adopt_loaders",
    "carried_loaders",
    "datasets_for",
    "load_dataset",
    "loader_for",
    "register_dataset",
]

Loader = Callable[..., DatasetBundle]

# The built-in datasets (every process has them), then what register_dataset adds in this one.
DATASETS: dict[str, Loader] = {name: r.loader for name, r in RECORDS.items()}

# The names register_dataset added with carry=True: they exist only in the process that called it.
_CARRIED: set[str] = set()


def register_dataset(name: str, loader: Loader, *, overwrite: bool = False, carry: bool = True) -> None:
    """Add a dataset: `loader(root, train_transform, eval_transform, **options) -> DatasetBundle`.

    Its templates come from the bundle the loader builds (see pipeline.data.templates). Registered
    before the benchmark starts, it reaches every Ray worker that receives a config naming it (the
    loader is pickled with the config, by value where it is a closure or lives in ``__main__``;
    a loader in a module of its own must be importable on the workers). ``carry=False`` is for
    registrations every process makes itself.
    """
    if not callable(loader):
        raise TypeError(f"loader for {name!r} is not callable")
    if name in DATASETS and not overwrite:
        raise ValueError(f"dataset {name!r} is already registered (pass overwrite=True to replace it)")
    DATASETS[name] = loader
    if carry:
        _CARRIED.add(name)
    else:
        _CARRIED.discard(name)


def carried_loaders(names: Sequence[str]) -> dict[str, Loader]:
    """The loaders of ``names`` that this process registered itself and Ray workers lack."""
    return {n: DATASETS[n] for n in dict.fromkeys(names) if n in _CARRIED and n in DATASETS}


def adopt_loaders(loaders: Mapping[str, Loader]) -> None:
    """Register loaders that came with a config from another process (replacing older ones)."""
    for name, loader in loaders.items():
        register_dataset(name, loader, overwrite=True)


def datasets_for(declared: Iterable[Any] = ()) -> Mapping[str, Loader]:
    """The registry as a config sees it (read-only): this process's datasets and those the config
    declares (``declared``: its DatasetConfig entries; a declaration wins over a registration)."""
    table = dict(DATASETS)
    table.update({d.name: declared_loader(d) for d in declared})
    return MappingProxyType(table)


def loader_for(name: str, declared: Iterable[Any] = ()) -> Loader:
    """The loader ``name`` resolves to, given a config's declared datasets."""
    for d in declared:
        if d.name == name:
            return declared_loader(d)
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join(sorted(datasets_for(declared)))
        raise KeyError(f"unknown dataset {name!r}; known datasets: {known}") from None


def load_dataset(
    name: str,
    root: PathLike,
    train_transform: Transform | None = None,
    eval_transform: Transform | None = None,
    *,
    declared: Iterable[Any] = (),
    **options: Any,
) -> DatasetBundle:
    """Load dataset ``name`` from `root` (``declared``: a config's declared datasets, see
    ``datasets_for``); `options` go to its loader (e.g. split_seed=)."""
    return loader_for(name, declared)(root, train_transform, eval_transform, **options)
