"""The dataset records: one per built-in dataset, and the tables derived from them."""

from __future__ import annotations

import pytest

from pipeline.config import ConfigError, load_config
from pipeline.data import registry
from pipeline.data.published_counts import PUBLISHED
from pipeline.data.records import RECORDS, DatasetRecord, record
from pipeline.data.splits import DOMAINNET_DOMAINS, IMAGENET_R_DOMAINS
from pipeline.data.synthetic import TINY_WRITERS
from pipeline.data.templates import TEMPLATES
from pipeline.orchestration.plan import DATASET_SIZES
from pipeline.scenario import DOMAIN_ORDERS
from pipeline.units import task_epochs

PAPER = ("cifar100", "imagenet_r", "domainnet", "cub200", "cars", "dtd", "eurosat", "gtsrb", "mnist",
         "svhn", "resisc45", "sun397")


def test_every_built_in_dataset_has_one_complete_record():
    assert set(RECORDS) == {*PAPER, "demo_shapes"}
    for name, rec in RECORDS.items():
        assert isinstance(rec, DatasetRecord) and rec.name == name and callable(rec.loader)
        assert rec.layout and rec.fetch and rec.num_classes > 0 and min(rec.sizes) > 0 and rec.epochs > 0
    for name in PAPER:
        rec = record(name)
        assert rec.templates in TEMPLATES and rec.tiny_writer is TINY_WRITERS[name]
        assert rec.published is PUBLISHED[name] and rec.published.classes == rec.num_classes
    with pytest.raises(TypeError):
        RECORDS["x"] = RECORDS["mnist"]  # type: ignore[index]


def test_an_unknown_name_lists_the_known_ones():
    with pytest.raises(KeyError, match="no built-in dataset 'nope'; known datasets: cars, cifar100"):
        record("nope")


def test_the_former_tables_are_the_records():
    assert registry.DATASETS["gtsrb"] is RECORDS["gtsrb"].loader
    assert DATASET_SIZES["imagenet_r"] == (24_000, 6_000) and DATASET_SIZES["demo_shapes"] == (6_000, 3_000)
    assert dict(DOMAIN_ORDERS) == {"domainnet": DOMAINNET_DOMAINS, "imagenet_r": IMAGENET_R_DOMAINS}
    assert record("imagenet_r").num_domains == 15 and record("eurosat").split_fractions["val"] == 0.1
    cfg = load_config(None, ["scenarios=[{kind: multi_dataset, datasets: [cars, dtd]}, {dataset: cars, tasks: 2}]",
                             "methods=[seq_ft]"])
    # cars: 30 epochs alone, 35 in the multi-dataset benchmark (design.md)
    assert [task_epochs(cfg, cfg.scenarios[0], t) for t in (0, 1)] == [35, 75]
    assert task_epochs(cfg, cfg.scenarios[1], 0) == 30


def test_the_config_checks_read_the_records():
    with pytest.raises(ConfigError, match="201 tasks is more than the 200 classes of cub200"):
        load_config(None, ["scenarios=[{dataset: cub200, tasks: 201}]"])
    with pytest.raises(ConfigError, match="has only 6 domains"):
        load_config(None, ["scenarios=[{dataset: domainnet, kind: domain_incremental, tasks: 7}]"])
    with pytest.raises(ConfigError, match=r"needs one of \['domainnet', 'imagenet_r'\]"):
        load_config(None, ["scenarios=[{dataset: mnist, kind: domain_incremental, tasks: 2}]"])
    with pytest.raises(ConfigError, match="is a built-in dataset"):
        load_config(None, ["datasets={demo_shapes: {kind: image_folder}}"])


def test_declared_datasets_resolve_through_the_config_without_registering(tmp_path):
    before = dict(registry.DATASETS)
    cfg = load_config(None, ["datasets={mine: {kind: image_folder, folder: photos}}",
                             "scenarios=[{dataset: mine, tasks: 2}]"])
    table = registry.datasets_for(cfg.datasets)
    assert table["mine"] is registry.loader_for("mine", cfg.datasets)  # one loader per declaration
    assert "mine" not in registry.DATASETS and registry.DATASETS == before
    with pytest.raises(KeyError, match="unknown dataset 'mine'"):
        registry.loader_for("mine")
    with pytest.raises(Exception, match=r"photos.*\n.*searched"):
        registry.load_dataset("mine", tmp_path, declared=cfg.datasets)
