"""The dataset registry against tiny fake datasets in each real on-disk format (no network)."""

from __future__ import annotations

import importlib.util
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import transforms

from pipeline.data import (
    DATASETS,
    DatasetBundle,
    DatasetNotFoundError,
    ImageReadError,
    imagenet_r_split,
    load_dataset,
    load_split_record,
    register_dataset,
    save_split_record,
)
from pipeline.data.splits import domain_incremental_tasks

try:  # tests/ as a package, or on sys.path (pytest's default rootdir-less import mode)
    from tests import fixtures_datasets as fx
except ImportError:
    import fixtures_datasets as fx

HAS_SCIPY = importlib.util.find_spec("scipy") is not None
SIZE = 16
RESIZE = transforms.Compose([transforms.Resize((SIZE, SIZE)), transforms.ToTensor()])


def _load(name: str, root: Path, **options) -> DatasetBundle:
    return load_dataset(name, root, train_transform=RESIZE, eval_transform=RESIZE, **options)


def _check_items(bundle: DatasetBundle) -> None:
    """First and last sample of each split decode to tensors with the recorded labels."""
    for ds, targets in ((bundle.train, bundle.train_targets), (bundle.test, bundle.test_targets)):
        assert len(ds) == len(targets)
        for i in (0, len(ds) - 1):
            image, label = ds[i]
            assert isinstance(image, torch.Tensor) and image.shape == (3, SIZE, SIZE)
            assert isinstance(label, int) and label == targets[i]


def _needs(name: str) -> None:
    if name in fx.NEEDS_SCIPY and not HAS_SCIPY:
        pytest.skip(f"{name} stores labels in .mat files, which need scipy")


# --------------------------------------------------------------------------- per-loader


@pytest.mark.parametrize("name", ["cifar100", "cub200", "cars", "mnist", "svhn", "dtd", "gtsrb"])
def test_loader_reads_fixture(name: str, tmp_path: Path) -> None:
    _needs(name)
    expected = fx.WRITERS[name](tmp_path)
    bundle = _load(name, tmp_path)
    assert bundle.name == name
    if expected.classnames:
        assert bundle.classnames == expected.classnames
    assert bundle.train_targets.dtype == np.int64
    assert sorted(bundle.train_targets.tolist()) == sorted(expected.train_targets)
    assert sorted(bundle.test_targets.tolist()) == sorted(expected.test_targets)
    assert bundle.train_domains is None and bundle.test_domains is None
    assert bundle.templates and all("{}" in t for t in bundle.templates)
    _check_items(bundle)


def test_cifar100_details(tmp_path: Path) -> None:
    fx.write_cifar100(tmp_path)
    bundle = _load("cifar100", tmp_path)
    assert bundle.num_classes == 100 and len(bundle.templates) == 18
    assert len(bundle.train) == 200 and len(bundle.test) == 100


def test_cifar100_refuses_pickles_that_run_code(tmp_path: Path) -> None:
    fx.write_cifar100(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "cifar-100-python" / "meta").write_bytes(pickle.dumps({"fine_label_names": Evil()}))
    with pytest.raises(DatasetNotFoundError, match="refusing"):
        _load("cifar100", tmp_path)


def test_default_transform_gives_tensors(tmp_path: Path) -> None:
    fx.write_mnist(tmp_path)
    bundle = load_dataset("mnist", tmp_path)
    image, label = bundle.test[3]
    assert image.shape == (3, 28, 28) and image.dtype == torch.float32 and label == 3


def test_gtsrb_labels_are_class_ids(tmp_path: Path) -> None:
    fx.write_gtsrb(tmp_path)
    bundle = _load("gtsrb", tmp_path)
    assert bundle.num_classes == 43
    assert set(bundle.train_targets.tolist()) == {0, 1, 14}
    assert bundle.classnames[14] == "stop"


def test_dtd_merges_train_and_val(tmp_path: Path) -> None:
    fx.write_dtd(tmp_path)
    bundle = _load("dtd", tmp_path)
    assert len(bundle.train) == 9 and len(bundle.test) == 3


def test_domainnet(tmp_path: Path) -> None:
    expected = fx.write_domainnet(tmp_path)
    bundle = _load("domainnet", tmp_path)
    assert bundle.classnames == ["The Eiffel Tower", "aircraft carrier", "zebra"]
    assert bundle.train_targets.tolist() == expected.train_targets
    assert bundle.test_targets.tolist() == expected.test_targets
    assert bundle.train_domains.tolist() == expected.train_domains
    assert bundle.test_domains.tolist() == expected.test_domains
    assert len(bundle.templates) == 80
    tasks = domain_incremental_tasks(bundle.train_domains, ["clipart", "sketch", "real"])
    assert [len(t) for t in tasks] == [6, 6, 6]
    assert {bundle.train_domains[i] for i in tasks[1]} == {"sketch"}
    _check_items(bundle)


def test_domainnet_domain_subset(tmp_path: Path) -> None:
    fx.write_domainnet(tmp_path)
    bundle = _load("domainnet", tmp_path, domains=["real"])
    assert set(bundle.train_domains.tolist()) == {"real"} and len(bundle.train) == 6


def test_imagenet_r(tmp_path: Path) -> None:
    expected = fx.write_imagenet_r(tmp_path)
    bundle = _load("imagenet_r", tmp_path)
    assert bundle.classnames == expected.classnames == ["goldfish", "great white shark", "hammerhead"]
    assert len(bundle.train) + len(bundle.test) == 22
    # Domains are the rendition prefix of each file name.
    all_domains = set(bundle.train_domains.tolist()) | set(bundle.test_domains.tolist())
    assert all_domains == set(fx.IMAGENET_R_RENDITIONS)
    for ds, domains in ((bundle.train, bundle.train_domains), (bundle.test, bundle.test_domains)):
        assert all(Path(p).name.startswith(d + "_") for p, d in zip(ds.paths, domains))
    assert bundle.split_record is not None and bundle.split_record["seed"] == 5
    _check_items(bundle)


def test_imagenet_r_names_without_readme_fall_back_to_wnids(tmp_path: Path) -> None:
    fx.write_imagenet_r(tmp_path, readme=False)
    assert _load("imagenet_r", tmp_path).classnames == list(fx.IMAGENET_R_CLASSES)
    (tmp_path / "imagenet-r" / "classnames.txt").write_text("n01443537 gold_fish\n")
    assert _load("imagenet_r", tmp_path).classnames[0] == "gold fish"


def test_imagenet_r_split_is_80_20_per_class_and_deterministic(tmp_path: Path) -> None:
    fx.write_imagenet_r(tmp_path)
    a = imagenet_r_split(tmp_path, seed=0)
    assert a == imagenet_r_split(tmp_path, seed=0)
    assert a["splits"] != imagenet_r_split(tmp_path, seed=1)["splits"]
    train, test = a["splits"]["train"], a["splits"]["test"]
    assert not set(train) & set(test)
    per_class_test = Counter(p.split("/")[0] for p in test)
    per_class_train = Counter(p.split("/")[0] for p in train)
    for wnid, size in fx.IMAGENET_R_SIZES.items():
        assert per_class_test[wnid] == int(np.floor(size * 0.2 + 0.5))
        assert per_class_train[wnid] + per_class_test[wnid] == size


def test_imagenet_r_split_record_roundtrip(tmp_path: Path) -> None:
    fx.write_imagenet_r(tmp_path)
    out = tmp_path / "results" / "split.json"
    record = imagenet_r_split(tmp_path, seed=3, path=out)
    assert load_split_record(out) == record
    bundle = _load("imagenet_r", tmp_path, split_record=load_split_record(out))
    base = tmp_path / "imagenet-r"
    assert sorted(Path(p).relative_to(base).as_posix() for p in bundle.test.paths) == record["splits"]["test"]
    assert bundle.split_record == record
    # Default loading with the same seed gives the same split.
    assert _load("imagenet_r", tmp_path, split_seed=3).split_record == record


def test_recorded_split_with_missing_file_names_it(tmp_path: Path) -> None:
    fx.write_imagenet_r(tmp_path)
    record = imagenet_r_split(tmp_path)
    gone = record["splits"]["test"][0]
    (tmp_path / "imagenet-r" / gone).unlink()
    with pytest.raises(DatasetNotFoundError, match=gone.split("/")[1]):
        _load("imagenet_r", tmp_path, split_record=record)


def test_eurosat_seeded_split(tmp_path: Path) -> None:
    fx.write_eurosat(tmp_path)
    bundle = _load("eurosat", tmp_path)
    assert bundle.classnames == ["annual crop land", "forest", "lake or sea"]
    assert Counter(bundle.train_targets.tolist()) == {0: 8, 1: 8, 2: 8}
    assert Counter(bundle.test_targets.tolist()) == {0: 1, 1: 1, 2: 1}
    assert set(bundle.split_record["splits"]) == {"train", "val", "test"}
    assert _load("eurosat", tmp_path).split_record == bundle.split_record
    _check_items(bundle)


@pytest.mark.parametrize("split_files", [True, False])
def test_resisc45(tmp_path: Path, split_files: bool) -> None:
    expected = fx.write_resisc45(tmp_path, split_files=split_files)
    bundle = _load("resisc45", tmp_path)
    assert bundle.classnames == ["airplane", "baseball diamond", "sea ice"]
    assert len(bundle.templates) == 18
    if split_files:
        assert sorted(bundle.train_targets.tolist()) == sorted(expected.train_targets)
        assert sorted(bundle.test_targets.tolist()) == sorted(expected.test_targets)
        assert bundle.split_record is None
    else:  # seeded 60/20/20 per class of 5 images -> 3/1/1
        assert Counter(bundle.train_targets.tolist()) == {0: 3, 1: 3, 2: 3}
        assert Counter(bundle.test_targets.tolist()) == {0: 1, 1: 1, 2: 1}
        assert bundle.split_record["method"] == "seeded-stratified"
    _check_items(bundle)


@pytest.mark.parametrize("partitions", [True, False])
def test_sun397(tmp_path: Path, partitions: bool) -> None:
    expected = fx.write_sun397(tmp_path, partitions=partitions)
    bundle = _load("sun397", tmp_path)
    assert bundle.classnames == expected.classnames
    if partitions:
        assert sorted(bundle.train_targets.tolist()) == expected.train_targets
        assert sorted(bundle.test_targets.tolist()) == expected.test_targets
    else:
        assert Counter(bundle.test_targets.tolist()) == {0: 2, 1: 2, 2: 2}
    _check_items(bundle)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_missing_root_names_the_path_and_layout(name: str, tmp_path: Path) -> None:
    root = tmp_path / "no_such_root"
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(name, root)
    message = str(info.value)
    assert str(root) in message and info.value.path.startswith(str(root))
    assert "expected layout" in message and "to fetch it" in message


def test_torchvision_datasets_say_how_to_fetch(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"download=True"):
        load_dataset("mnist", tmp_path)


def _drop(path: Path) -> None:
    path.unlink()


INCOMPLETE = {
    "cifar100": lambda root: _drop(root / "cifar-100-python" / "meta"),
    "domainnet": lambda root: _drop(root / "domainnet" / "sketch_test.txt"),
    "cub200": lambda root: _drop(root / "CUB_200_2011" / "train_test_split.txt"),
    "dtd": lambda root: _drop(root / "dtd" / "dtd" / "labels" / "test1.txt"),
    "gtsrb": lambda root: _drop(root / "gtsrb" / "GT-final_test.csv"),
    "mnist": lambda root: _drop(root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"),
    "sun397": lambda root: _drop(root / "SUN397" / "ClassName.txt"),
}


@pytest.mark.parametrize("name", sorted(INCOMPLETE))
def test_incomplete_layout_raises_with_path(name: str, tmp_path: Path) -> None:
    fx.WRITERS[name](tmp_path)
    INCOMPLETE[name](tmp_path)
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(name, tmp_path)
    assert str(tmp_path) in str(info.value)


def test_empty_class_folder_raises(tmp_path: Path) -> None:
    fx.write_imagenet_r(tmp_path)
    empty = tmp_path / "imagenet-r" / "n09999999"
    empty.mkdir()
    with pytest.raises(DatasetNotFoundError, match="n09999999") as info:
        load_dataset("imagenet_r", tmp_path)
    assert str(empty) in str(info.value)


def test_zero_images_raises(tmp_path: Path) -> None:
    (tmp_path / "resisc45" / "airplane").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="no images"):
        load_dataset("resisc45", tmp_path)
    (tmp_path / "eurosat" / "2750" / "Forest").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / "eurosat")):
        load_dataset("eurosat", tmp_path)


def test_domainnet_label_without_name_raises(tmp_path: Path) -> None:
    fx.write_domainnet(tmp_path)
    lst = tmp_path / "domainnet" / "real_test.txt"
    lst.write_text(lst.read_text().replace(" 2\n", " 7\n"))
    with pytest.raises(DatasetNotFoundError, match="label"):
        load_dataset("domainnet", tmp_path)


def test_unreadable_image_error_names_the_file(tmp_path: Path) -> None:
    fx.write_cub200(tmp_path)
    bundle = load_dataset("cub200", tmp_path)
    broken = Path(bundle.train.paths[0])
    broken.write_bytes(b"not an image")
    with pytest.raises(ImageReadError, match=str(broken)):
        bundle.train[0]
    broken.unlink()
    with pytest.raises(ImageReadError, match=str(broken)):
        bundle.train[0]


def test_errors_survive_pickling(tmp_path: Path) -> None:
    err = DatasetNotFoundError("message", "/some/path")
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == "message" and back.path == "/some/path"
    assert isinstance(back, FileNotFoundError)


def test_datasets_pickle_for_worker_processes(tmp_path: Path) -> None:
    fx.write_cub200(tmp_path)
    bundle = load_dataset("cub200", tmp_path)
    clone = pickle.loads(pickle.dumps(bundle.test))
    assert torch.equal(clone[0][0], bundle.test[0][0])


# --------------------------------------------------------------------------- registry


def test_unknown_dataset_lists_known_names(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="cifar100") as info:
        load_dataset("no_such_dataset", tmp_path)
    assert "imagenet_r" in str(info.value)


def test_register_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pipeline.data.registry.DATASETS", dict(DATASETS))
    fx.write_cub200(tmp_path)

    def loader(root, train_transform=None, eval_transform=None):
        bundle = DATASETS["cub200"](root, train_transform, eval_transform)
        bundle.name = "birds"
        return bundle

    register_dataset("birds", loader)
    assert load_dataset("birds", tmp_path).name == "birds"
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("birds", loader)
    register_dataset("birds", loader, overwrite=True)


def test_save_split_record_is_atomic_json(tmp_path: Path) -> None:
    record = {"dataset": "x", "splits": {"train": ["a"], "test": ["b"]}}
    path = save_split_record(record, tmp_path / "deep" / "split.json")
    assert load_split_record(path) == record
    assert [p.name for p in path.parent.iterdir()] == ["split.json"]
