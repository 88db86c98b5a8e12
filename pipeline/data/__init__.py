"""Datasets: one record per built-in dataset, the registry of real on-disk loaders, zero-shot
templates, and task splits."""

from pipeline.data.bundle import ArrayImageDataset, DatasetBundle, ImageFileDataset
from pipeline.data.errors import DatasetNotFoundError, ImageReadError
from pipeline.data.loaders.imagenet_r import imagenet_r_split
from pipeline.data.records import RECORDS, DatasetRecord, record
from pipeline.data.registry import DATASETS, datasets_for, load_dataset, register_dataset
from pipeline.data.split_records import (
    DEFAULT_SPLIT_SEED,
    load_split_record,
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
    "RECORDS",
    "TEMPLATES",
    "ArrayImageDataset",
    "DatasetBundle",
    "DatasetNotFoundError",
    "DatasetRecord",
    "ImageFileDataset",
    "ImageReadError",
    "class_incremental_splits",
    "class_order",
    "datasets_for",
    "domain_incremental_tasks",
    "get_templates",
    "imagenet_r_split",
    "load_dataset",
    "load_split_record",
    "record",
    "register_dataset",
    "save_split_record",
    "stratified_split",
    "task_indices",
]
