"""Writers of tiny generated datasets in each real on-disk format.

Each `write_<dataset>(root)` lays out the files the real dataset has (same names, same formats,
a handful of small noise images) under `root` and returns what a correct loader must report.
The registry tests use the defaults (three classes or so); `write_tiny_datasets` writes the
versions the ``profile=tiny`` runs read: the real class counts (a /50 split needs 50 classes),
two train and one test image per class, so every scenario of every paper config can run on a
laptop through the same loaders real data goes through. Everything is seeded: the same call
writes the same bytes. Nothing is downloaded. The Cars and SVHN writers need scipy (their real
label files are MATLAB .mat).
"""

from __future__ import annotations

import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from PIL import Image
from pipeline.data.class_orders import IMAGENET_R_LABEL_NAMES
from pipeline.data.splits import IMAGENET_R_DOMAINS
from pipeline.data.class_orders import DOMAINNET_LABEL_NAMES

IMAGE_SIZE = 8


@dataclass
class Expected:
    """What the loader should find in a fixture."""

    classnames: list[str]
    train_targets: list[int]
    test_targets: list[int]
    train_domains: list[str] | None = None
    test_domains: list[str] | None = None
    extra: dict = field(default_factory=dict)


def _image(path: Path, seed: int, fmt: str | None = None, size: int = IMAGE_SIZE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)


# --------------------------------------------------------------------------- cifar100


def cifar100_names() -> list[str]:
    return [f"class_{i:02d}" for i in range(100)]


def write_cifar100(root: Path, train_per_class: int = 2, test_per_class: int = 1) -> Expected:
    """cifar-100-python/{train,test,meta}: pickled dicts, as torchvision's CIFAR100 reads them."""
    base = root / "cifar-100-python"
    base.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    targets = {}
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = [c for c in range(100) for _ in range(per_class)]
        entry = {
            "filenames": [f"img_{i}.png" for i in range(len(labels))],
            "batch_label": f"{split} batch",
            "fine_labels": labels,
            "coarse_labels": [c // 5 for c in labels],
            "data": rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8),
        }
        with (base / split).open("wb") as f:
            pickle.dump(entry, f, protocol=2)
        targets[split] = labels
    meta = {"fine_label_names": cifar100_names(), "coarse_label_names": [f"super_{i}" for i in range(20)]}
    with (base / "meta").open("wb") as f:
        pickle.dump(meta, f, protocol=2)
    return Expected(cifar100_names(), targets["train"], targets["test"])


# --------------------------------------------------------------------------- imagenet-r

IMAGENET_R_CLASSES = {"n01443537": "goldfish", "n01484850": "great_white_shark", "n01494475": "hammerhead"}
IMAGENET_R_SIZES = {"n01443537": 10, "n01484850": 7, "n01494475": 5}
IMAGENET_R_RENDITIONS = ("art", "cartoon", "deviantart", "sketch", "videogame")


def write_imagenet_r(root: Path, readme: bool = True, classes: int | None = None, per_class: int = 3,
                     image_size: int = IMAGE_SIZE) -> Expected:
    """imagenet-r/<wnid>/<rendition>_<n>.jpg plus the README.txt of the official archive.

    ``classes`` given: that many (at most 200) of the real class names, each under a made-up wnid
    given in a seeded shuffle (so, as in the real archive, the wnid folders' order is not the
    names' order), with ``per_class`` images whose renditions cycle through all 15 of the
    domain-incremental order (so every domain has images); else the three-class fixture of the
    registry tests.
    """
    base = root / "imagenet-r"
    if classes is None:
        names_by_wnid, sizes, renditions = IMAGENET_R_CLASSES, IMAGENET_R_SIZES, IMAGENET_R_RENDITIONS
    else:
        if not 1 <= classes <= len(IMAGENET_R_LABEL_NAMES):
            raise ValueError(f"write_imagenet_r: classes={classes} is not in 1..{len(IMAGENET_R_LABEL_NAMES)}")
        picked = np.random.default_rng(0).permutation(len(IMAGENET_R_LABEL_NAMES))[:classes]
        names_by_wnid = {f"n{i:08d}": IMAGENET_R_LABEL_NAMES[j] for i, j in enumerate(picked)}
        sizes = {w: per_class for w in names_by_wnid}
        renditions = IMAGENET_R_DOMAINS
    seed = 0
    for wnid, size in sizes.items():
        for k in range(size):
            # consecutive images across classes walk through the renditions
            rendition = renditions[(seed if classes is not None else k) % len(renditions)]
            _image(base / wnid / f"{rendition}_{k}.jpg", seed, size=image_size)
            seed += 1
    if readme:
        lines = ["ImageNet-R: renditions of 200 ImageNet classes.", "", "The classes are:"]
        lines += [f"{w} {n}" for w, n in names_by_wnid.items()]
        (base / "README.txt").write_text("\n".join(lines) + "\n")
    names = [n.replace("_", " ") for n in names_by_wnid.values()] if readme else list(names_by_wnid)
    return Expected(names, [], [], extra={"sizes": dict(sizes), "base": base})


# --------------------------------------------------------------------------- domainnet

DOMAINNET_ALL = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")
DOMAINNET_CLASSES = ("The_Eiffel_Tower", "aircraft_carrier", "zebra")


def write_domainnet(root: Path, train_per_class: int = 2, test_per_class: int = 1, classes: int | None = None,
                    image_size: int = IMAGE_SIZE) -> Expected:
    """domainnet/<domain>/<class>/<file>.jpg and the official <domain>_{train,test}.txt lists.

    ``classes`` given: that many (at most 345) real class names spread over the sorted list,
    numbered in the lists in a seeded shuffle (a loader must not assume the lists' numbers follow
    the folders' string order); else the three-class fixture of the registry tests, numbered 0, 1, 2.
    """
    base = root / "domainnet"
    if classes is None:
        class_names = DOMAINNET_CLASSES
    else:
        total = len(DOMAINNET_LABEL_NAMES)
        if not 1 <= classes <= total:
            raise ValueError(f"write_domainnet: classes={classes} is not in 1..{total}")
        spread = [DOMAINNET_LABEL_NAMES[i * total // classes] for i in range(classes)]
        class_names = tuple(spread[j] for j in np.random.default_rng(0).permutation(classes))
    expected: dict[str, tuple[list[int], list[str]]] = {"train": ([], []), "test": ([], [])}
    seed = 0
    for domain in DOMAINNET_ALL:
        lines = {"train": [], "test": []}
        for label, cls in enumerate(class_names):
            for k in range(train_per_class + test_per_class):
                split = "train" if k < train_per_class else "test"
                rel = f"{domain}/{cls}/{domain}_{label:03d}_{k:06d}.jpg"
                _image(base / rel, seed, size=image_size)
                seed += 1
                lines[split].append(f"{rel} {label}")
                expected[split][0].append(label)
                expected[split][1].append(domain)
        for split, split_lines in lines.items():
            (base / f"{domain}_{split}.txt").write_text("\n".join(split_lines) + "\n")
    return Expected(
        [c.replace("_", " ") for c in class_names],
        expected["train"][0],
        expected["test"][0],
        expected["train"][1],
        expected["test"][1],
    )


# --------------------------------------------------------------------------- cub200

CUB_CLASSES = ("001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross")


def write_cub200(root: Path, per_class: int = 3, classes: int | None = None, image_size: int = IMAGE_SIZE) -> Expected:
    """CUB_200_2011/ with images/, images.txt, image_class_labels.txt, train_test_split.txt, classes.txt.

    ``classes`` given: folders "001.Bird_001" ... (the real "NNN.Name" form, made-up names).
    """
    base = root / "CUB_200_2011"
    class_dirs = CUB_CLASSES if classes is None else tuple(f"{i + 1:03d}.Bird_{i + 1:03d}" for i in range(classes))
    images, labels, split_lines = [], [], []
    train, test = [], []
    image_id = 1
    for c, cls in enumerate(class_dirs):
        for k in range(per_class):
            rel = f"{cls}/{cls.split('.')[1]}_{k:04d}_{image_id}.jpg"
            _image(base / "images" / rel, image_id, size=image_size)
            is_train = int(k < per_class - 1)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {c + 1}")
            split_lines.append(f"{image_id} {is_train}")
            (train if is_train else test).append(c)
            image_id += 1
    (base / "images.txt").write_text("\n".join(images) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (base / "train_test_split.txt").write_text("\n".join(split_lines) + "\n")
    (base / "classes.txt").write_text("\n".join(f"{i + 1} {c}" for i, c in enumerate(class_dirs)) + "\n")
    names = [c.split(".", 1)[1].replace("_", " ") for c in class_dirs]
    return Expected(names, train, test)


# --------------------------------------------------------------------------- cars (needs scipy)

CARS_CLASSES = ("AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012")


def _cars_annotations(labels: list[int], prefix: str) -> np.ndarray:
    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"]
    annos = np.zeros((1, len(labels)), dtype=[(f, "O") for f in fields])
    for i, label in enumerate(labels):
        annos[0, i] = (
            np.array([[1]], np.uint8),
            np.array([[1]], np.uint8),
            np.array([[7]], np.uint8),
            np.array([[7]], np.uint8),
            np.array([[label + 1]], np.uint8),  # the .mat files count classes from 1
            f"{prefix}{i:05d}.jpg",
        )
    return annos


def write_cars(root: Path, classes: int | None = None, train_per_class: int = 2, test_per_class: int = 1,
               image_size: int = IMAGE_SIZE) -> Expected:
    """stanford_cars/ as torchvision's StanfordCars reads it (devkit .mat files, image folders)."""
    import scipy.io as sio

    base = root / "stanford_cars"
    (base / "devkit").mkdir(parents=True, exist_ok=True)
    names = CARS_CLASSES if classes is None else tuple(f"Car Model {i:03d} 2012" for i in range(classes))
    train = [c for c in range(len(names)) for _ in range(train_per_class)]
    test = [c for c in range(len(names)) for _ in range(test_per_class)]
    for i in range(len(train)):
        _image(base / "cars_train" / f"{i:05d}.jpg", i, size=image_size)
    for i in range(len(test)):
        # test seeds after every train seed: no test image repeats a train image
        _image(base / "cars_test" / f"{i:05d}.jpg", max(100, len(train)) + i, size=image_size)
    sio.savemat(base / "devkit" / "cars_meta.mat", {"class_names": np.array([names], dtype=object)})
    sio.savemat(base / "devkit" / "cars_train_annos.mat", {"annotations": _cars_annotations(train, "")})
    sio.savemat(base / "cars_test_annos_withlabels.mat", {"annotations": _cars_annotations(test, "")})
    return Expected(list(names), train, test)


# --------------------------------------------------------------------------- mnist


def _idx(path: Path, array: np.ndarray) -> None:
    # IDX format: 0x0000, type 0x08 (ubyte), ndim, then big-endian int32 dims and raw bytes.
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_mnist(root: Path, n_train: int = 20, n_test: int = 10) -> Expected:
    """MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte, uncompressed, as torchvision reads them."""
    raw = root / "MNIST" / "raw"
    rng = np.random.default_rng(0)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n, dtype=np.uint8) % 10
        _idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        _idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        out[prefix] = labels.tolist()
    return Expected([str(d) for d in range(10)], out["train"], out["t10k"])


# --------------------------------------------------------------------------- svhn (needs scipy)


def write_svhn(root: Path) -> Expected:
    """svhn/{train,test}_32x32.mat: X is H x W x C x N, y is N x 1 with digit 0 stored as 10."""
    import scipy.io as sio

    base = root / "svhn"
    base.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = {}
    for split, n in (("train", 12), ("test", 5)):
        digits = np.arange(n) % 10
        y = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(-1, 1)
        X = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        sio.savemat(base / f"{split}_32x32.mat", {"X": X, "y": y})
        out[split] = digits.tolist()
    return Expected([str(d) for d in range(10)], out["train"], out["test"])


# --------------------------------------------------------------------------- dtd

DTD_CLASSES = ("banded", "blotchy", "braided")


def write_dtd(root: Path) -> Expected:
    """dtd/dtd/images/<class>/<file>.jpg and dtd/dtd/labels/{train,val,test}1.txt."""
    base = root / "dtd" / "dtd"
    lists = {"train": [], "val": [], "test": []}
    out = {"train": [], "test": []}
    seed = 0
    for c, cls in enumerate(DTD_CLASSES):
        for k, split in enumerate(("train", "train", "val", "test")):
            rel = f"{cls}/{cls}_{k:04d}.jpg"
            _image(base / "images" / rel, seed)
            seed += 1
            lists[split].append(rel)
            out["test" if split == "test" else "train"].append(c)
    (base / "labels").mkdir(parents=True, exist_ok=True)
    for split, lines in lists.items():
        (base / "labels" / f"{split}1.txt").write_text("\n".join(lines) + "\n")
    # The loader puts train before val; targets in that order.
    train = [c for c in range(3) for _ in range(2)] + list(range(3))
    return Expected(list(DTD_CLASSES), train, out["test"])


# --------------------------------------------------------------------------- eurosat

EUROSAT_FOLDERS = ("AnnualCrop", "Forest", "SeaLake")


def write_eurosat(root: Path, per_class: int = 10) -> Expected:
    """eurosat/2750/<Class>/<Class>_<n>.jpg, as torchvision's EuroSAT reads it."""
    base = root / "eurosat" / "2750"
    seed = 0
    for cls in EUROSAT_FOLDERS:
        for k in range(per_class):
            _image(base / cls / f"{cls}_{k + 1}.jpg", seed)
            seed += 1
    return Expected(["annual crop land", "forest", "lake or sea"], [], [], extra={"per_class": per_class})


# --------------------------------------------------------------------------- gtsrb

GTSRB_CLASS_IDS = (0, 1, 14)


def write_gtsrb(root: Path, train_per_class: int = 2) -> Expected:
    """gtsrb/GTSRB/Training/<ClassId:05d>/*.ppm, GTSRB/Final_Test/Images/*.ppm, GT-final_test.csv."""
    base = root / "gtsrb"
    train = []
    seed = 0
    for cid in GTSRB_CLASS_IDS:
        for k in range(train_per_class):
            _image(base / "GTSRB" / "Training" / f"{cid:05d}" / f"00000_{k:05d}.ppm", seed, "PPM")
            seed += 1
            train.append(cid)
    rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    test = []
    for i, cid in enumerate(GTSRB_CLASS_IDS):
        _image(base / "GTSRB" / "Final_Test" / "Images" / f"{i:05d}.ppm", 100 + i, "PPM")
        rows.append(f"{i:05d}.ppm;8;8;0;0;7;7;{cid}")
        test.append(cid)
    (base / "GT-final_test.csv").write_text("\n".join(rows) + "\n")
    return Expected([], sorted(train), test)


# --------------------------------------------------------------------------- resisc45

RESISC45_CLASSES = ("airplane", "baseball_diamond", "sea_ice")


def write_resisc45(root: Path, per_class: int = 5, split_files: bool = False) -> Expected:
    """resisc45/NWPU-RESISC45/<class>/<class>_<nnn>.jpg, optionally with resisc45-{train,val,test}.txt."""
    base = root / "resisc45"
    seed = 0
    lists: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    train, test = [], []
    for c, cls in enumerate(RESISC45_CLASSES):
        for k in range(per_class):
            fname = f"{cls}_{k + 1:03d}.jpg"
            _image(base / "NWPU-RESISC45" / cls / fname, seed)
            seed += 1
            split = "test" if k == 0 else ("val" if k == 1 else "train")
            lists[split].append(fname)
            if split == "train":
                train.append(c)
            elif split == "test":
                test.append(c)
    if split_files:
        for split, lines in lists.items():
            (base / f"resisc45-{split}.txt").write_text("\n".join(lines) + "\n")
    return Expected([c.replace("_", " ") for c in RESISC45_CLASSES], train, test)


# --------------------------------------------------------------------------- sun397

SUN397_CLASSES = ("/a/abbey", "/a/apartment_building/outdoor", "/b/beach")


def write_sun397(root: Path, per_class: int = 4, partitions: bool = False) -> Expected:
    """SUN397/ClassName.txt and SUN397/<letter>/<class>/sun_<id>.jpg, optionally Partitions/."""
    base = root / "SUN397"
    base.mkdir(parents=True, exist_ok=True)
    (base / "ClassName.txt").write_text("\n".join(SUN397_CLASSES) + "\n")
    seed = 0
    train_lines, test_lines = [], []
    train, test = [], []
    for c, cls in enumerate(SUN397_CLASSES):
        for k in range(per_class):
            rel = f"{cls}/sun_{chr(97 + c)}{k:04d}.jpg"
            _image(base / rel.lstrip("/"), seed)
            seed += 1
            if k == 0:
                test_lines.append(rel)
                test.append(c)
            elif k == 1:
                train_lines.append(rel)
                train.append(c)
    if partitions:
        (base / "Partitions").mkdir()
        (base / "Partitions" / "Training_01.txt").write_text("\n".join(train_lines) + "\n")
        (base / "Partitions" / "Testing_01.txt").write_text("\n".join(test_lines) + "\n")
    names = ["abbey", "apartment building outdoor", "beach"]
    return Expected(names, train, test, extra={"per_class": per_class})


WRITERS = {
    "cifar100": write_cifar100,
    "imagenet_r": write_imagenet_r,
    "domainnet": write_domainnet,
    "cub200": write_cub200,
    "cars": write_cars,
    "dtd": write_dtd,
    "eurosat": write_eurosat,
    "gtsrb": write_gtsrb,
    "mnist": write_mnist,
    "svhn": write_svhn,
    "resisc45": write_resisc45,
    "sun397": write_sun397,
}
NEEDS_SCIPY = frozenset({"cars", "svhn"})


# --------------------------------------------------------------------------- the tiny profile

TINY_IMAGE_SIZE = 32
# What profile=tiny writes per dataset: real class counts where a paper split needs them
# (CIFAR100/50, ImageNet-R/50, CUB200/20 and Cars/20 all exist), two train and one test
# image per class. DomainNet has 12 of its 345 classes (real names, so the reference class order
# restricted to them applies): its paper splits (/6, DIL) need far fewer, and 345 zero-shot
# classes x 80 templates would dominate a CPU run.
TINY_WRITERS: dict[str, Callable[[Path], Expected]] = {
    **WRITERS,
    "cifar100": lambda root: write_cifar100(root, train_per_class=2, test_per_class=1),
    "imagenet_r": lambda root: write_imagenet_r(root, classes=200, per_class=3, image_size=TINY_IMAGE_SIZE),
    "cub200": lambda root: write_cub200(root, per_class=3, classes=200, image_size=TINY_IMAGE_SIZE),
    "cars": lambda root: write_cars(root, classes=196, image_size=TINY_IMAGE_SIZE),
    "domainnet": lambda root: write_domainnet(root, classes=12, image_size=TINY_IMAGE_SIZE),
}
_TINY_MARKER = ".tiny-{name}.done"
# Datasets whose tiny version changed (v2: real class names, which the reference class orders are
# keyed by): a tree written before has the old marker and is written again.
_TINY_VERSIONS = {"imagenet_r": 2, "domainnet": 2}


def write_tiny_datasets(root: str | Path, datasets: Iterable[str]) -> list[str]:
    """Write the tiny version of each of ``datasets`` under ``root`` unless it is there already.

    A marker file is written last, so a dataset whose writing was interrupted is written again.
    Returns the names written now.
    """
    root = Path(root)
    written = []
    for name in sorted(set(datasets)):
        if name not in TINY_WRITERS:
            raise KeyError(f"profile=tiny has no generated version of dataset {name!r}; "
                           f"known: {', '.join(sorted(TINY_WRITERS))}")
        version = _TINY_VERSIONS.get(name, 1)
        marker = root / _TINY_MARKER.format(name=name if version == 1 else f"{name}.v{version}")
        if marker.is_file():
            continue
        root.mkdir(parents=True, exist_ok=True)
        TINY_WRITERS[name](root)
        marker.write_text("written by pipeline.data.synthetic.write_tiny_datasets\n")
        written.append(name)
    return written
