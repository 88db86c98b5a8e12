"""Datasets: the registry of real on-disk loaders, zero-shot templates, and task splits."""

from pipeline.data.registry import (
    DATASETS,
    DEFAULT_SPLIT_SEED,
    ArrayImageDataset,
    DatasetBundle,
    DatasetNotFoundError,
    ImageFileDataset,
    ImageReadError,
    imagenet_r_split,
    load_dataset,
    load_split_record,
    register_dataset,
    save_split_record,
    stratified_split,
)
from pipeline.data.splits import (
    CIFAR100_ORDER,
    DOMAINNET_DOMAINS,
    IMAGENET_R_DOMAINS,
    class_incremental_splits,
    class_order,
    domain_incremental_tasks,
    task_indices,
)
from pipeline.data.templates import TEMPLATES, get_templates

__all__ = [
    "CIFAR100_ORDER",
    "DATASETS",
    "DEFAULT_SPLIT_SEED",
    "DOMAINNET_DOMAINS",
    "IMAGENET_R_DOMAINS",
    "TEMPLATES",
    "ArrayImageDataset",
    "DatasetBundle",
    "DatasetNotFoundError",
    "ImageFileDataset",
    "ImageReadError",
    "class_incremental_splits",
    "class_order",
    "domain_incremental_tasks",
    "get_templates",
    "imagenet_r_split",
    "load_dataset",
    "load_split_record",
    "register_dataset",
    "save_split_record",
    "stratified_split",
    "task_indices",
]
