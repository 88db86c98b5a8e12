"""Per dataset: where its files sit in the official distribution, and how they are arranged into
the layout its loader reads (pipeline.data.records: DatasetRecord.layout).

Each assembler finds what it needs in the sources by name and shape (so an official archive, a
folder it was extracted to, or a copy already in the loader's layout all work) and puts it under
``out`` = ``<staging>/<folder>``, where ``folder`` is the dataset's folder under data_root.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.data.prepare.sources import PrepareError, Sources, extract
from pipeline.data.loaders.domainnet import DOMAINNET_ALL_DOMAINS

# dataset -> its folder directly under data_root (the loaders' `root / ...`)
FOLDERS: dict[str, str] = {
    "cifar100": "cifar-100-python",
    "imagenet_r": "imagenet-r",
    "domainnet": "domainnet",
    "cub200": "CUB_200_2011",
    "cars": "stanford_cars",
    "dtd": "dtd",
    "eurosat": "eurosat",
    "gtsrb": "gtsrb",
    "mnist": "MNIST",
    "svhn": "svhn",
    "resisc45": "resisc45",
    "sun397": "SUN397",
}

# what to pass to --from, for the "what to do" column and the errors
OFFICIAL: dict[str, str] = {
    "cifar100": "cifar-100-python.tar.gz",
    "imagenet_r": "imagenet-r.tar",
    "domainnet": "a folder with the six <domain>.zip and <domain>_train.txt / <domain>_test.txt",
    "cub200": "CUB_200_2011.tgz",
    "cars": "a folder with cars_train/, cars_test/, devkit/, cars_test_annos_withlabels.mat "
            "(or their .tgz), or car_ims/ (car_ims.tgz) with cars_annos.mat",
    "dtd": "dtd-r1.0.1.tar.gz",
    "eurosat": "EuroSAT.zip (or EuroSAT_RGB.zip)",
    "gtsrb": "a folder with GTSRB-Training_fixed.zip, GTSRB_Final_Test_Images.zip, GTSRB_Final_Test_GT.zip",
    "mnist": "a folder with the four *-ubyte.gz files",
    "svhn": "a folder with train_32x32.mat and test_32x32.mat",
    "resisc45": "NWPU-RESISC45.zip (a .rar: extract it first), optionally with resisc45-{train,val,test}.txt",
    "sun397": "SUN397.tar.gz (optionally with Partitions.zip)",
}

_WNID = re.compile(r"^n\d{8}$")
_CLASS_ID = re.compile(r"^\d{5}$")


def _copy_dir(what: str, test: Callable[[Path, list[str], list[str]], bool], dst_rel: str = ""):
    def assemble(src: Sources, out: Path) -> None:
        found = src.find_dir(what, test)
        src.place(found, out / dst_rel if dst_rel else out)
    return assemble


def _files(names: dict[str, str], what: str) -> Callable[[Sources, Path], None]:
    """Single files, found anywhere in the sources, to ``out/<relative path>``."""
    def assemble(src: Sources, out: Path) -> None:
        for name, rel in names.items():
            src.place(src.find_file([name], f"{what}: {name}"), out / rel)
    return assemble


def _domainnet(src: Sources, out: Path) -> None:
    for domain in DOMAINNET_ALL_DOMAINS:
        for split in ("train", "test"):
            name = f"{domain}_{split}.txt"
            src.place(src.find_file([name], f"DomainNet list {name}"), out / name)
        folder = src.find_dir(
            f"DomainNet folder {domain}/<class>/ (from {domain}.zip)",
            lambda f, d, fs, domain=domain: f.name == domain and bool(d),
        )
        src.place(folder, out / domain)


def _images_dir(name: str) -> Callable[[Path, list[str], list[str]], bool]:
    return lambda f, d, fs: f.name == name and any(x.lower().endswith(".jpg") for x in fs)


def _cars(src: Sources, out: Path) -> None:
    parts = {
        "cars_train": src.find_dir("cars_train/", _images_dir("cars_train"), required=False),
        "cars_test": src.find_dir("cars_test/", _images_dir("cars_test"), required=False),
        "devkit/cars_meta.mat": src.find_file(["cars_meta.mat"], "", required=False),
        "devkit/cars_train_annos.mat": src.find_file(["cars_train_annos.mat"], "", required=False),
        "cars_test_annos_withlabels.mat": src.find_file(
            ["cars_test_annos_withlabels.mat", "cars_test_annos_withlabels (1).mat"], "", required=False),
    }
    if all(parts.values()):  # torchvision's layout (or its archives)
        for rel, path in parts.items():
            src.place(path, out / rel)
        return
    annos = src.find_file(["cars_annos.mat"], "", required=False)
    if annos is None:
        missing = ", ".join(rel for rel, p in parts.items() if p is None)
        raise src.not_found(f"Stanford Cars: torchvision's layout (missing: {missing}) or cars_annos.mat")
    _cars_from_annos(src, annos, out)


def _cars_from_annos(src: Sources, annos_path: Path, out: Path) -> None:
    """The single-file annotations of the original site (cars_annos.mat + car_ims/): each row has
    relative_im_path, bbox, class (1-based) and test (0/1); rewritten as torchvision's files."""
    import scipy.io as sio

    try:
        mat = sio.loadmat(str(annos_path), squeeze_me=True)
        rows = np.atleast_1d(mat["annotations"])
        names = [str(n) for n in np.atleast_1d(mat["class_names"])]
        entries = [(str(r["relative_im_path"]), int(r["class"]), int(r["test"]),
                    [int(r[k]) for k in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")]) for r in rows]
    except (KeyError, ValueError, TypeError, IndexError, OSError) as err:
        raise PrepareError(f"{annos_path}: expected 'annotations' (relative_im_path, bbox_x1..bbox_y2, "
                           f"class, test) and 'class_names': {err}") from err
    ims = src.find_dir("car_ims/ (from car_ims.tgz)", _images_dir("car_ims"), required=False)
    split_rows: dict[str, list] = {"cars_train": [], "cars_test": []}
    for rel, label, test, bbox in entries:
        image = annos_path.parent / rel
        if not image.is_file() and ims is not None:
            image = ims / Path(rel).name
        if not image.is_file():
            raise PrepareError(f"{annos_path} names {rel}, not found next to it nor in a car_ims/ folder")
        split = "cars_test" if test else "cars_train"
        src.place(image, out / split / image.name)
        split_rows[split].append((image.name, label, bbox))
    (out / "devkit").mkdir(parents=True, exist_ok=True)
    sio.savemat(out / "devkit" / "cars_meta.mat", {"class_names": np.array([names], dtype=object)})
    sio.savemat(out / "devkit" / "cars_train_annos.mat", {"annotations": _cars_struct(split_rows["cars_train"])})
    sio.savemat(out / "cars_test_annos_withlabels.mat", {"annotations": _cars_struct(split_rows["cars_test"])})


def _cars_struct(rows: list[tuple[str, int, list[int]]]) -> np.ndarray:
    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"]
    struct = np.zeros((1, len(rows)), dtype=[(f, "O") for f in fields])
    for i, (fname, label, bbox) in enumerate(rows):
        struct[0, i] = (*[np.array([[v]], np.int32) for v in bbox], np.array([[label]], np.int32), fname)
    return struct


def _gtsrb(src: Sources, out: Path) -> None:
    train = src.find_dir(
        "GTSRB training folder (Training/00000/*.ppm, from GTSRB-Training_fixed.zip)",
        lambda f, d, fs: f.name in ("Training", "Images") and f.parent.name != "Final_Test"
        and bool(d) and all(_CLASS_ID.match(x) for x in d),
    )
    test = src.find_dir(
        "GTSRB test images (Final_Test/Images/*.ppm, from GTSRB_Final_Test_Images.zip)",
        lambda f, d, fs: f.name == "Images" and f.parent.name == "Final_Test",
    )
    gt = src.find_file(["GT-final_test.csv"], "GT-final_test.csv (from GTSRB_Final_Test_GT.zip)")
    src.place(train, out / "GTSRB" / "Training")
    src.place(test, out / "GTSRB" / "Final_Test" / "Images")
    src.place(gt, out / "GT-final_test.csv")


_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                "t10k-labels-idx1-ubyte")


def _mnist(src: Sources, out: Path) -> None:
    for name in _MNIST_FILES:
        found = src.find_file([name, f"{name}.gz"], f"MNIST file {name}[.gz]")
        if found.name.endswith(".gz"):  # a .gz inside a given folder was gunzipped already; a stray one here
            extract(found, src.raw / "gunzip")
            found = src.raw / "gunzip" / name
        src.place(found, out / "raw" / name)


def _resisc45(src: Sources, out: Path) -> None:
    images = src.find_dir("RESISC45 class folders (airplane/, ... from NWPU-RESISC45)",
                          lambda f, d, fs: "airplane" in d and "sea_ice" in d or f.name == "NWPU-RESISC45")
    src.place(images, out / "NWPU-RESISC45")
    for split in ("train", "val", "test"):
        name = f"resisc45-{split}.txt"
        inside = out / "NWPU-RESISC45" / name  # the class folders' parent held the split files
        found = inside if inside.is_file() else src.find_file([name], "", required=False)
        if found == inside:
            inside.replace(out / name)
        elif found is not None:
            src.place(found, out / name)


def _sun397(src: Sources, out: Path) -> None:
    base = src.find_dir("SUN397 folder (ClassName.txt and a/abbey/...)",
                        lambda f, d, fs: "ClassName.txt" in fs and any(len(x) == 1 for x in d))
    src.place(base, out)
    if not (out / "Partitions").is_dir():
        parts = src.find_dir("", lambda f, d, fs: "Training_01.txt" in fs, required=False)
        if parts is not None:
            src.place(parts, out / "Partitions")


ASSEMBLERS: dict[str, Callable[[Sources, Path], None]] = {
    "cifar100": _copy_dir("CIFAR-100 folder with train, test, meta (cifar-100-python/)",
                          lambda f, d, fs: {"train", "test", "meta"} <= set(fs)),
    "imagenet_r": _copy_dir(
        "ImageNet-R folder (imagenet-r/n01443537/...)",
        lambda f, d, fs: bool(d) and (f.name == "imagenet-r" or all(_WNID.match(x) for x in d))),
    "domainnet": _domainnet,
    "cub200": _copy_dir(
        "CUB_200_2011 folder (images.txt, classes.txt, image_class_labels.txt, train_test_split.txt, images/)",
        lambda f, d, fs: "images" in d and {"images.txt", "classes.txt", "image_class_labels.txt",
                                            "train_test_split.txt"} <= set(fs)),
    "cars": _cars,
    "dtd": _copy_dir("DTD folder (images/<class>/, labels/train1.txt)",
                     lambda f, d, fs: "images" in d and (f / "labels" / "train1.txt").is_file(), "dtd"),
    "eurosat": _copy_dir("EuroSAT class folders (AnnualCrop/, Forest/, ...)",
                         lambda f, d, fs: "AnnualCrop" in d, "2750"),
    "gtsrb": _gtsrb,
    "mnist": _mnist,
    "svhn": _files({"train_32x32.mat": "train_32x32.mat", "test_32x32.mat": "test_32x32.mat"}, "SVHN"),
    "resisc45": _resisc45,
    "sun397": _sun397,
}
