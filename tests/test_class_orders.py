"""The official class orders of class-incremental ImageNet-R, CUB200 and DomainNet.

The oracle is /work/shared/paper/class_orders.json (transcribed from the official MagMax code):
task s of S holds the classes `label_names[sorted(order[C*s//S : C*(s+1)//S])]`, where a label
indexes the official code's ImageFolder classes (folder names sorted as strings). The trees are
generated in the official archives' layouts, with labels the project's loaders number otherwise
(ImageNet-R by wnid folder, DomainNet by a shuffled list numbering), so only a mapping through
the class names gives the official tasks.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.data import class_orders, load_dataset
from pipeline.data import synthetic as fx
from pipeline.data.splits import CIFAR100_ORDER, REFERENCE_ORDERS, class_order, main, task_class_names

ROOT = Path(__file__).resolve().parent.parent
ORDERS_JSON = Path("/work/shared/paper/class_orders.json")
CUB_NAMES = [f"{i + 1:03d}.Bird_{i + 1:03d}" for i in range(200)]  # write_cub200(classes=200)


@pytest.fixture(scope="module")
def official() -> dict:
    if not ORDERS_JSON.is_file():
        pytest.skip(f"{ORDERS_JSON} (the official class orders to pin against) is not on this machine")
    return json.loads(ORDERS_JSON.read_text())


def _label_names(official: dict, dataset: str) -> list[str]:
    # CUB's JSON entry describes its basis ("label = class id - 1"); the generated folders follow it
    return CUB_NAMES if dataset == "cub200" else official[dataset]["label_names"]


def _official_tasks(official: dict, dataset: str, num_tasks: int) -> list[list[str]]:
    order, names = official[dataset]["order"], _label_names(official, dataset)
    C = len(order)
    return [[names[label] for label in sorted(order[C * s // num_tasks: C * (s + 1) // num_tasks])]
            for s in range(num_tasks)]


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> Path:
    """All classes of the three datasets, in the official archives' layouts, with few images."""
    root = tmp_path_factory.mktemp("official_layouts")
    fx.write_imagenet_r(root, classes=200, per_class=3)  # imagenet-r/<wnid>/ + README.txt
    fx.write_cub200(root, classes=200, per_class=2)  # CUB_200_2011/images/ + classes.txt, ...
    fx.write_domainnet(root, classes=345, train_per_class=1, test_per_class=1)  # <domain>/<class>/ + lists
    return root


def _cli(*argv: str) -> list[list[str]]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(list(argv)) == 0
    return json.loads(out.getvalue())


# --------------------------------------------------------------------------- the stored orders


def test_stored_orders_are_the_official_ones(official: dict) -> None:
    assert list(class_orders.IMAGENET_R_ORDER) == official["imagenet_r"]["order"]
    assert list(class_orders.CUB200_ORDER) == official["cub200"]["order"]
    assert list(class_orders.DOMAINNET_ORDER) == official["domainnet"]["order"]
    assert list(CIFAR100_ORDER) == official["cifar100"]["order"]
    assert list(class_orders.IMAGENET_R_LABEL_NAMES) == official["imagenet_r"]["label_names"]
    assert list(class_orders.DOMAINNET_LABEL_NAMES) == official["domainnet"]["label_names"]
    for dataset, size in (("imagenet_r", 200), ("cub200", 200), ("domainnet", 345), ("cifar100", 100)):
        assert sorted(REFERENCE_ORDERS[dataset]) == list(range(size)), dataset
        assert class_order(dataset, size) == official[dataset]["order"]  # labels in the official basis


def test_label_names_are_the_imagefolder_order() -> None:
    # torchvision's ImageFolder sorts folder names as strings: uppercase first
    for names in (class_orders.IMAGENET_R_LABEL_NAMES, class_orders.DOMAINNET_LABEL_NAMES):
        assert list(names) == sorted(names) and len(set(names)) == len(names)
    assert class_orders.IMAGENET_R_LABEL_NAMES[:2] == ("African_chameleon", "Granny_Smith")
    assert class_orders.DOMAINNET_LABEL_NAMES[:3] == ("The_Eiffel_Tower", "The_Great_Wall_of_China", "The_Mona_Lisa")


# --------------------------------------------------------------------------- mapping through names


def test_order_is_mapped_through_names_onto_any_numbering(official: dict) -> None:
    names = official["domainnet"]["label_names"]
    perm = np.random.default_rng(1).permutation(len(names))  # project label k is names[perm[k]]
    mine = [names[j] for j in perm]
    order = class_order("domainnet", len(mine), names=mine)
    assert [mine[k] for k in order] == [names[j] for j in official["domainnet"]["order"]]


def test_a_subset_gets_the_official_order_restricted_to_it() -> None:
    names = ["zebra", "The_Eiffel_Tower", "airplane", "t-shirt"]
    order = class_order("domainnet", 4, names=names)
    ranks = {j: r for r, j in enumerate(class_orders.DOMAINNET_ORDER)}
    expected = sorted(range(4), key=lambda k: ranks[class_orders.DOMAINNET_LABEL_NAMES.index(names[k])])
    assert order == expected


def test_unknown_or_duplicate_names_are_errors() -> None:
    with pytest.raises(ValueError, match="README.txt"):
        class_order("imagenet_r", 2, names=["n01443537", "goldfish"])  # a wnid folder without README
    with pytest.raises(ValueError, match="NNN"):
        class_order("cub200", 2, names=["001.Black_footed_Albatross", "Laysan_Albatross"])
    with pytest.raises(ValueError, match="same reference class"):
        class_order("cub200", 2, names=["001.A", "001.B"])
    with pytest.raises(ValueError, match="3 class names for 2"):
        class_order("cub200", 2, names=["001.A", "002.B", "003.C"])


def test_seeded_order_ignores_the_reference_and_names() -> None:
    names = list(class_orders.IMAGENET_R_LABEL_NAMES)
    assert class_order("imagenet_r", 200, seed=3, names=names) == \
        [int(c) for c in np.random.default_rng(3).permutation(200)]
    assert class_order("cars", 5, names=list("abcde")) == list(range(5))  # no reference order: natural


def test_task_names_are_in_imagefolder_order_within_a_task(official: dict) -> None:
    tasks = task_class_names("cub200", list(reversed(CUB_NAMES)), 10)
    assert tasks == _official_tasks(official, "cub200", 10)


# --------------------------------------------------------------------------- the CLI on generated trees


def test_loaders_keep_the_names_of_the_dataset_files(trees: Path) -> None:
    imr = load_dataset("imagenet_r", trees)
    # labels follow the wnid folders, whose order is not the names' order
    assert imr.raw_classnames != sorted(imr.raw_classnames)
    assert sorted(imr.raw_classnames) == list(class_orders.IMAGENET_R_LABEL_NAMES)
    assert imr.classnames == [n.replace("_", " ") for n in imr.raw_classnames]
    dn = load_dataset("domainnet", trees)
    assert dn.raw_classnames != sorted(dn.raw_classnames)  # the lists' numbering, not the folders' order
    assert sorted(dn.raw_classnames) == list(class_orders.DOMAINNET_LABEL_NAMES)
    assert load_dataset("cub200", trees).raw_classnames == CUB_NAMES


@pytest.mark.parametrize("dataset", ["imagenet_r", "cub200", "domainnet"])
def test_cli_gives_the_official_tasks(trees: Path, official: dict, dataset: str) -> None:
    for num_tasks in (5, 10, 20):
        tasks = _cli(dataset, str(num_tasks), "--data-root", str(trees))
        assert tasks == _official_tasks(official, dataset, num_tasks), (dataset, num_tasks)


@pytest.mark.slow  # a fresh interpreter importing torch: ~10 s on 2 busy CPUs (main() is tested above)
def test_cli_as_a_module(trees: Path, official: dict) -> None:
    run = subprocess.run([sys.executable, "-m", "pipeline.data.splits", "imagenet_r", "10", "--data-root", str(trees)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    tasks = json.loads(run.stdout)
    assert tasks == _official_tasks(official, "imagenet_r", 10)
    assert tasks[0][:3] == ["Granny_Smith", "bald_eagle", "bucket"]  # names as in README.txt


def test_cli_reports_a_missing_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cub200", "5", "--data-root", str(tmp_path)]) == 2
    assert str(tmp_path) in capsys.readouterr().err


# --------------------------------------------------------------------------- a scenario on such a tree


def _scenario(monkeypatch: pytest.MonkeyPatch, data_root: Path, storage: Path, scenario: str):
    import torch

    import pipeline.scenario as S
    from pipeline.config import load_config

    # the zero-shot head (C classes x templates through the text tower) plays no part in the split
    monkeypatch.setattr(S, "_cached_head", lambda cfg, clip, names, templates: torch.zeros(len(names), 1))
    cfg = load_config(None, ["profile=tiny", f"data_root={data_root}", f"storage={storage}",
                             f"scenarios=[{scenario}]", "methods=[zero_shot]"])
    S._build_cached.cache_clear()
    try:
        return S.build_scenario(cfg, cfg.scenarios[0])
    finally:
        S._build_cached.cache_clear()


def test_scenario_tasks_hold_the_official_classes(trees: Path, official: dict, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    scn = _scenario(monkeypatch, trees, tmp_path / "storage", "{dataset: imagenet_r, tasks: 10}")
    names = scn.data.raw_classnames
    assert [sorted(names[c] for c in task) for task in scn.task_classes] == _official_tasks(official, "imagenet_r", 10)
    for task, idx in zip(scn.task_classes, scn.train_task_idx):
        assert set(scn.data.train_targets[idx].tolist()) == set(task)


def test_tiny_domainnet_class_and_domain_incremental(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.data.splits import DOMAINNET_DOMAINS
    from pipeline.data.synthetic import write_tiny_datasets

    write_tiny_datasets(tmp_path / "data", ["domainnet"])
    scn = _scenario(monkeypatch, tmp_path / "data", tmp_path / "storage", "{dataset: domainnet, tasks: 6}")
    names = scn.data.raw_classnames
    assert len(names) == 12
    walked = [names[c] for task in scn.task_classes for c in task]
    ranks = {n: class_orders.DOMAINNET_ORDER.index(i) for i, n in enumerate(class_orders.DOMAINNET_LABEL_NAMES)}
    by_rank = sorted(names, key=ranks.__getitem__)  # the official order restricted to the 12 classes
    assert [sorted(t, key=ranks.__getitem__) for t in np.array(walked).reshape(6, 2).tolist()] == \
        [by_rank[2 * s: 2 * s + 2] for s in range(6)]
    # the domain-incremental path does not use a class order: every task has all classes
    dil = _scenario(monkeypatch, tmp_path / "data", tmp_path / "storage",
                    "{dataset: domainnet, kind: domain_incremental, tasks: 6}")
    assert dil.task_classes == [list(range(12))] * 6
    assert [set(dil.data.train_domains[i]) for i in dil.train_task_idx] == [{d} for d in DOMAINNET_DOMAINS]
