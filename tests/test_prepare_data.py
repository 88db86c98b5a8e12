"""jobs/prepare_data.py: tiny datasets packed in each official format, prepared, verified, loaded."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from jobs.prepare_data import main
from pipeline.config import BenchmarkConfig, ScenarioConfig
from pipeline.data import registry
from pipeline.data.prepare import FOLDERS, PrepareError, prepare, readiness, verify
from pipeline.data.prepare import layouts
from pipeline.data.prepare.manifest import MANIFEST
from pipeline.data.published_counts import PUBLISHED
from pipeline.data.registry import load_dataset

try:
    from tests import fixtures_datasets as fx
except ImportError:
    import fixtures_datasets as fx

BUILTIN = ("cifar100", "imagenet_r", "domainnet", "cub200", "cars", "dtd", "eurosat", "gtsrb", "mnist",
           "svhn", "resisc45", "sun397")


# --------------------------------------------------------------------------- packing helpers


def _tar(path: Path, base: Path, members: list[str], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tar:
        for m in members:
            tar.add(base / m, arcname=m)
    return path


def _zip(path: Path, base: Path, members: list[str]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for m in members:
            src = base / m
            for f in sorted([src] if src.is_file() else src.rglob("*")):
                if f.is_file():
                    zf.write(f, f.relative_to(base).as_posix())
    return path


def _cars_mirror(tree: Path, dl: Path) -> None:
    """The original site's single-file form: car_ims/ (as car_ims.tgz) + cars_annos.mat."""
    import scipy.io as sio

    base = tree / "stanford_cars"
    rows = []
    ims = dl / "stage" / "car_ims"
    ims.mkdir(parents=True)
    n = 0
    for test, mat_path, folder in ((0, base / "devkit" / "cars_train_annos.mat", "cars_train"),
                                   (1, base / "cars_test_annos_withlabels.mat", "cars_test")):
        for a in np.atleast_1d(sio.loadmat(mat_path, squeeze_me=True)["annotations"]):
            n += 1
            shutil.copy(base / folder / str(a["fname"]), ims / f"{n:06d}.jpg")
            rows.append((f"car_ims/{n:06d}.jpg", int(a["class"]), test))
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    annos = np.zeros((1, len(rows)), dtype=[(f, "O") for f in fields])
    for i, (rel, label, test) in enumerate(rows):
        annos[0, i] = (rel, *[np.array([[v]], np.uint8) for v in (1, 1, 7, 7)],
                       np.array([[label]], np.uint8), np.array([[test]], np.uint8))
    names = sio.loadmat(base / "devkit" / "cars_meta.mat", squeeze_me=True)["class_names"].tolist()
    sio.savemat(dl / "cars_annos.mat", {"annotations": annos, "class_names": np.array([names], dtype=object)})
    _tar(dl / "car_ims.tgz", dl / "stage", ["car_ims"])
    shutil.rmtree(dl / "stage")


def official(name: str, tmp: Path) -> tuple[list[Path], fx.Expected]:
    """Write the tiny fixture of ``name`` and pack it as the official distribution; returns the
    --from paths and what the loader must then report."""
    tree, dl = tmp / "tree", tmp / "downloads"
    tree.mkdir()
    dl.mkdir()
    kwargs = {"resisc45": {"split_files": True}, "sun397": {"partitions": True}}.get(name, {})
    expected = fx.WRITERS[name](tree, **kwargs)
    if name == "cifar100":
        return [_tar(dl / "cifar-100-python.tar.gz", tree, ["cifar-100-python"])], expected
    if name == "imagenet_r":
        return [_tar(dl / "imagenet-r.tar", tree, ["imagenet-r"], "w")], expected
    if name == "cub200":
        return [_tar(dl / "CUB_200_2011.tgz", tree, ["CUB_200_2011"])], expected
    if name == "dtd":
        return [_tar(dl / "dtd-r1.0.1.tar.gz", tree / "dtd", ["dtd"])], expected
    if name == "eurosat":
        return [_zip(dl / "EuroSAT.zip", tree / "eurosat", ["2750"])], expected
    if name == "sun397":  # the images archive, and the partitions as a zip of their own
        shutil.move(tree / "SUN397" / "Partitions", tree / "Partitions")
        archives = [_tar(dl / "SUN397.tar.gz", tree, ["SUN397"]), _zip(dl / "Partitions.zip", tree, ["Partitions"])]
        return archives, expected
    if name == "domainnet":  # one zip per domain, the lists beside them, all in one folder
        base = tree / "domainnet"
        for domain in fx.DOMAINNET_ALL:
            _zip(dl / f"{domain}.zip", base, [domain])
            for split in ("train", "test"):
                shutil.copy(base / f"{domain}_{split}.txt", dl)
        return [dl], expected
    if name == "gtsrb":
        base = tree / "gtsrb"
        _zip(dl / "GTSRB-Training_fixed.zip", base, ["GTSRB/Training"])
        _zip(dl / "GTSRB_Final_Test_Images.zip", base, ["GTSRB/Final_Test"])
        _zip(dl / "GTSRB_Final_Test_GT.zip", base, ["GT-final_test.csv"])
        return [dl], expected
    if name == "mnist":
        for f in (tree / "MNIST" / "raw").iterdir():
            (dl / f"{f.name}.gz").write_bytes(gzip.compress(f.read_bytes()))
        return [dl], expected
    if name == "svhn":  # the official files are the .mat themselves
        return [tree / "svhn" / "train_32x32.mat", tree / "svhn" / "test_32x32.mat"], expected
    if name == "resisc45":
        base = tree / "resisc45"
        _zip(dl / "NWPU-RESISC45.zip", base, ["NWPU-RESISC45"])
        for split in ("train", "val", "test"):
            shutil.copy(base / f"resisc45-{split}.txt", dl)
        return [dl], expected
    if name == "cars":
        _cars_mirror(tree, dl)
        return [dl], expected
    raise AssertionError(name)


def _counts_file(tmp: Path, root: Path, names: list[str]) -> Path:
    """Expected counts for tiny data: what the manifest must say, taken from the real loader."""
    table = {}
    for n in names:
        b = load_dataset(n, root)
        table[n] = {"classes": b.num_classes, "train": len(b.train_targets), "test": len(b.test_targets)}
    path = tmp / "expect.json"
    path.write_text(json.dumps(table))
    return path


# --------------------------------------------------------------------------- tests


def test_the_tables_cover_every_registered_dataset():
    assert set(BUILTIN) <= set(registry.DATASETS)
    assert set(FOLDERS) == set(PUBLISHED) == set(layouts.ASSEMBLERS) == set(layouts.OFFICIAL) == set(BUILTIN)
    assert all(c.source for c in PUBLISHED.values())
    # the published numbers add up where they are sums
    assert PUBLISHED["cub200"].train + PUBLISHED["cub200"].test == PUBLISHED["cub200"].images == 11_788
    assert PUBLISHED["domainnet"].train + PUBLISHED["domainnet"].test == 586_575


@pytest.mark.parametrize("name", BUILTIN)
def test_prepare_from_the_official_format_then_load_and_verify(name, tmp_path, capsys):
    sources, expected = official(name, tmp_path)
    root = tmp_path / "data"
    argv = [name, "--data-root", str(root)] + [a for s in sources for a in ("--from", str(s))]
    assert main(argv) == 0, capsys.readouterr().err
    assert "prepared:" in capsys.readouterr().out
    # the prepared folder loads through the project's own loader, with the fixture's labels
    bundle = load_dataset(name, root)
    if expected.train_targets:
        assert sorted(bundle.train_targets.tolist()) == sorted(expected.train_targets)
        assert sorted(bundle.test_targets.tolist()) == sorted(expected.test_targets)
    if expected.classnames:
        assert bundle.classnames == expected.classnames
    image, label = bundle.test[0]
    assert image.shape[0] == 3 and label == bundle.test_targets[0]
    manifest = json.loads((root / FOLDERS[name] / MANIFEST).read_text())
    assert manifest["counts"]["train"] == len(bundle.train_targets)
    assert sum(c["test"] for c in manifest["per_class"]) == len(bundle.test_targets)
    assert not (root / ".prepare").exists()  # staging removed
    optional = {"resisc45": "resisc45/resisc45-train.txt", "sun397": "SUN397/Partitions/Training_01.txt"}
    if name in optional:  # the official split files came along
        assert (root / optional[name]).is_file()
    # published counts: the tiny data is not the real thing
    assert main(["--verify", "--data-root", str(root), name]) == 1
    assert "wrong counts" in capsys.readouterr().out
    # the counts the test passes: ready
    expect = _counts_file(tmp_path, root, [name])
    assert main(["--verify", "--data-root", str(root), "--expect", str(expect), name]) == 0
    assert "ready" in capsys.readouterr().out
    # a second run does nothing and says so
    before = (root / FOLDERS[name] / MANIFEST).stat().st_mtime_ns
    assert main(argv) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert (root / FOLDERS[name] / MANIFEST).stat().st_mtime_ns == before


def test_manifest_counts_and_file_digest_by_hand(tmp_path):
    sources, _ = official("cifar100", tmp_path)
    prepare("cifar100", sources, tmp_path / "data", log=lambda _: None)
    manifest = json.loads((tmp_path / "data" / "cifar-100-python" / MANIFEST).read_text())
    # write_cifar100 defaults: 2 train and 1 test image for each of 100 classes
    assert manifest["counts"] == {"classes": 100, "train": 200, "test": 100, "images": 300}
    assert manifest["per_class"][7] == {"label": 7, "name": "class_07", "train": 2, "test": 1}
    assert manifest["files"] == {"count": 3, "sha256": hashlib.sha256(b"meta\ntest\ntrain\n").hexdigest()}


def test_cars_in_torchvision_layout_from_a_folder(tmp_path):
    tree = tmp_path / "tree"
    expected = fx.write_cars(tree)
    root = tmp_path / "data"
    assert main(["cars", "--from", str(tree / "stanford_cars"), "--data-root", str(root)]) == 0
    bundle = load_dataset("cars", root)
    assert bundle.train_targets.tolist() == expected.train_targets
    # the user's folder is linked or copied, never moved
    assert (tree / "stanford_cars" / "cars_train" / "00000.jpg").is_file()


def test_verify_statuses_and_exit_code(tmp_path, capsys):
    root = tmp_path / "data"
    fx.write_mnist(root)  # laid out by hand, never prepared
    sources, _ = official("cub200", tmp_path)
    prepare("cub200", sources, root, log=lambda _: None)
    checks = {c.dataset: c for c in verify(root, ["cifar100", "mnist", "cub200"])}
    assert checks["cifar100"].status == "missing" and "cifar-100-python.tar.gz" in checks["cifar100"].todo
    assert checks["mnist"].status == "unprepared"
    assert checks["cub200"].status == "wrong_counts" and "5,994" in checks["cub200"].detail
    tiny = {"cub200": {"train": 6, "test": 3, "classes": 3}}
    assert verify(root, ["cub200"], tiny)[0].status == "ready"
    # a file removed after preparation: the digest no longer matches
    next((root / "CUB_200_2011" / "images").rglob("*.jpg")).unlink()
    changed = verify(root, ["cub200"], tiny)[0]
    assert changed.status == "unprepared" and "changed" in changed.detail
    assert verify(root, ["cub200"], tiny, deep=False)[0].status == "ready"  # --plan's quick look
    assert main(["--verify", "--data-root", str(root), "cifar100", "mnist"]) == 1
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:2] == ["dataset", "status"]
    assert "missing" in table and "not prepared" in table


def test_adopt_a_folder_already_in_the_loader_layout(tmp_path, capsys):
    root = tmp_path / "data"
    fx.write_mnist(root)
    assert main(["mnist", "--data-root", str(root)]) == 0
    assert (root / "MNIST" / MANIFEST).is_file()
    expect = _counts_file(tmp_path, root, ["mnist"])
    assert main(["--verify", "--data-root", str(root), "--expect", str(expect), "mnist"]) == 0
    capsys.readouterr()


def test_an_interrupted_run_leaves_nothing_half_done_and_can_be_rerun(tmp_path, monkeypatch):
    sources, _ = official("cifar100", tmp_path)
    root = tmp_path / "data"
    real = layouts.ASSEMBLERS["cifar100"]

    def crash(src, out):
        real(src, out)
        raise KeyboardInterrupt  # after assembling, before the manifest and the rename

    monkeypatch.setitem(layouts.ASSEMBLERS, "cifar100", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare("cifar100", sources, root, log=lambda _: None)
    assert not (root / "cifar-100-python").exists()
    assert verify(root, ["cifar100"])[0].status == "missing"
    monkeypatch.setitem(layouts.ASSEMBLERS, "cifar100", real)
    lines: list[str] = []
    prepare("cifar100", sources, root, log=lines.append)
    assert any("interrupted" in line for line in lines)
    assert (root / "cifar-100-python" / MANIFEST).is_file() and not (root / ".prepare").exists()


def test_errors_name_the_path_and_what_was_expected(tmp_path, capsys):
    root = tmp_path / "data"
    bad = tmp_path / "cifar-100-python.tar.gz"
    bad.write_bytes(b"not an archive")
    assert main(["cifar100", "--from", str(bad), "--data-root", str(root)]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "archive" in err
    # an archive of something else: what was looked for, and where
    other, _ = official("cub200", tmp_path)
    assert main(["cifar100", "--from", str(other[0]), "--data-root", str(root)]) == 1
    err = capsys.readouterr().err
    assert "train, test, meta" in err and str(other[0]) in err
    # an existing, unprepared folder is not overwritten from another source without --force
    fx.write_cifar100(root)
    (root / "cifar-100-python" / "meta").write_bytes(b"junk")
    good = tmp_path / "good"
    good.mkdir()
    fx.write_cifar100(good)
    assert main(["cifar100", "--from", str(good), "--data-root", str(root)]) == 1
    assert "--force" in capsys.readouterr().err
    assert main(["cifar100", "--from", str(good), "--data-root", str(root), "--force"]) == 0
    assert len(load_dataset("cifar100", root).classnames) == 100


def test_zip_members_outside_the_target_are_refused(tmp_path):
    evil = tmp_path / "EuroSAT.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../escaped.txt", "x")
    with pytest.raises(PrepareError, match="outside"):
        prepare("eurosat", [evil], tmp_path / "data", log=lambda _: None)
    assert not (tmp_path / "escaped.txt").exists()


def test_readiness_of_a_config(tmp_path):
    root = tmp_path / "data"
    sources, _ = official("cub200", tmp_path)
    prepare("cub200", sources, root, log=lambda _: None)
    cfg = BenchmarkConfig(data_root=str(root), scenarios=(
        ScenarioConfig(dataset="cub200", tasks=2), ScenarioConfig(dataset="cifar100", tasks=2),
        ScenarioConfig(dataset="demo_shapes")), demo_data=True)
    assert readiness(cfg) == {"cub200": "wrong_counts", "cifar100": "missing", "demo_shapes": "generated"}
    assert readiness(cfg, expected={"cub200": {"train": 6}})["cub200"] == "ready"
