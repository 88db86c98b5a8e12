"""Dataset registry: the real on-disk loaders a user points `data_root` at on a cluster.

Every loader takes `(root, train_transform=None, eval_transform=None, **options)` and returns a
`DatasetBundle` whose datasets open images lazily (PIL, RGB) in `__getitem__`, and whose targets
(and domains, where a dataset has them) are known without decoding a single image, so that task
splits can be planned from metadata alone.

Nothing here downloads. Where torchvision knows a dataset, its class parses the on-disk layout
(`download=False`) and the error message says how to fetch it on a machine with internet.

Train/test splits: the official split where the dataset ships one. Where it does not (ImageNet-R,
EuroSAT, RESISC45 without its split files, SUN397 without its Partitions), a seeded per-class split
over the sorted relative file paths, recorded in `DatasetBundle.split_record` (JSON-serialisable;
`save_split_record` writes it next to the results) and reusable through the `split_record=` option,
so that a run's split can always be rebuilt exactly.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from pipeline.data.templates import get_templates

__all__ = [
    "DATASETS",
    "DEFAULT_SPLIT_SEED",
    "DatasetBundle",
    "DatasetNotFoundError",
    "ImageFileDataset",
    "ArrayImageDataset",
    "ImageReadError",
    "imagenet_r_split",
    "load_dataset",
    "load_split_record",
    "register_dataset",
    "save_split_record",
    "stratified_split",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".tif", ".tiff", ".webp")
# Seed of the recorded seeded splits; 5 as in the reference scripts.
DEFAULT_SPLIT_SEED = 5

Transform = Callable[[Any], Any]
PathLike = str | os.PathLike


# --------------------------------------------------------------------------- errors


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is missing or incomplete on disk.

    The message names the path that was searched, the expected layout, and (for torchvision
    datasets) how to fetch the data. `path` holds the searched path.
    """

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> tuple[Any, ...]:
        # Keeps `path` when Ray or multiprocessing ships the exception between processes.
        return (type(self), (self.args[0], self.path))


class ImageReadError(OSError):
    """An image file exists in the index but cannot be decoded; the message names the file."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), self.args)


_TORCHVISION_FETCH = (
    "on a machine with internet run `torchvision.datasets.{cls}({args}download=True)`, "
    "then copy the folder into data_root"
)

_LAYOUTS: dict[str, str] = {
    "cifar100": "<root>/cifar-100-python/\n    train\n    test\n    meta",
    "imagenet_r": (
        "<root>/imagenet-r/\n"
        "    README.txt or classnames.txt   (optional: 'wnid name' per line)\n"
        "    n01443537/\n"
        "        art_0.jpg  cartoon_3.jpg  ...   (<rendition>_<n>.jpg)\n"
        "    ... (200 class folders)"
    ),
    "domainnet": (
        "<root>/domainnet/\n"
        "    clipart_train.txt  clipart_test.txt  ... (one pair per domain: 'path label' lines)\n"
        "    clipart/<class>/<file>.jpg\n"
        "    infograph/ painting/ quickdraw/ real/ sketch/"
    ),
    "cub200": (
        "<root>/CUB_200_2011/\n"
        "    images.txt  image_class_labels.txt  train_test_split.txt  classes.txt\n"
        "    images/001.Black_footed_Albatross/<file>.jpg ..."
    ),
    "cars": (
        "<root>/stanford_cars/\n"
        "    devkit/cars_meta.mat  devkit/cars_train_annos.mat\n"
        "    cars_test_annos_withlabels.mat\n"
        "    cars_train/<file>.jpg  cars_test/<file>.jpg"
    ),
    "dtd": (
        "<root>/dtd/dtd/\n"
        "    images/<class>/<file>.jpg\n"
        "    labels/train1.txt  labels/val1.txt  labels/test1.txt"
    ),
    "eurosat": "<root>/eurosat/2750/\n    AnnualCrop/<file>.jpg  Forest/  ... (10 class folders)",
    "gtsrb": (
        "<root>/gtsrb/\n"
        "    GTSRB/Training/00000/<file>.ppm ... 00042/\n"
        "    GTSRB/Final_Test/Images/<file>.ppm\n"
        "    GT-final_test.csv"
    ),
    "mnist": (
        "<root>/MNIST/raw/\n"
        "    train-images-idx3-ubyte  train-labels-idx1-ubyte\n"
        "    t10k-images-idx3-ubyte   t10k-labels-idx1-ubyte"
    ),
    "svhn": "<root>/svhn/\n    train_32x32.mat\n    test_32x32.mat",
    "resisc45": (
        "<root>/resisc45/\n"
        "    resisc45-train.txt  resisc45-test.txt   (optional official split: file names)\n"
        "    [NWPU-RESISC45/]airplane/airplane_001.jpg ... (45 class folders)"
    ),
    "sun397": (
        "<root>/SUN397/\n"
        "    ClassName.txt\n"
        "    a/abbey/sun_<id>.jpg ...\n"
        "    Partitions/Training_01.txt  Partitions/Testing_01.txt   (optional official split)"
    ),
}

_FETCH: dict[str, str] = {
    "cifar100": _TORCHVISION_FETCH.format(cls="CIFAR100", args="root, "),
    "cars": (
        "torchvision can no longer download Stanford Cars (the original URL is gone); "
        "place a copy in the layout above (it is read with torchvision.datasets.StanfordCars)"
    ),
    "dtd": _TORCHVISION_FETCH.format(cls="DTD", args="root, "),
    "eurosat": _TORCHVISION_FETCH.format(cls="EuroSAT", args="root, "),
    "gtsrb": _TORCHVISION_FETCH.format(cls="GTSRB", args="root, split='train'|'test', "),
    "mnist": _TORCHVISION_FETCH.format(cls="MNIST", args="root, train=True|False, "),
    "svhn": _TORCHVISION_FETCH.format(cls="SVHN", args="root + '/svhn', split='train'|'test', "),
    "sun397": _TORCHVISION_FETCH.format(cls="SUN397", args="root, "),
    "imagenet_r": "extract the official imagenet-r.tar into <root>/",
    "domainnet": (
        "download each domain's zip and its <domain>_train.txt / <domain>_test.txt "
        "into <root>/domainnet/"
    ),
    "cub200": "extract the official CUB_200_2011.tgz into <root>/",
    "resisc45": "extract NWPU-RESISC45 into <root>/resisc45/ (the torchgeo split files are optional)",
}


def _not_found(name: str, path: Path | str, problem: str) -> DatasetNotFoundError:
    layout = _LAYOUTS.get(name, "")
    lines = [f"dataset {name!r}: {problem}", f"  searched: {path}"]
    if layout:
        lines.append("  expected layout:")
        lines.extend("    " + line for line in layout.splitlines())
    if name in _FETCH:
        lines.append(f"  to fetch it: {_FETCH[name]}")
    return DatasetNotFoundError("\n".join(lines), str(path))


def _require_dir(name: str, path: Path) -> Path:
    if not path.is_dir():
        raise _not_found(name, path, "folder not found")
    return path


def _require_file(name: str, path: Path) -> Path:
    if not path.is_file():
        raise _not_found(name, path, f"file {path.name!r} not found")
    return path


@contextmanager
def _torchvision_errors(name: str, path: Path) -> Iterator[None]:
    """Turn torchvision's 'Dataset not found' (RuntimeError) and file errors into ours."""
    try:
        yield
    except DatasetNotFoundError:
        raise
    except (RuntimeError, OSError, ValueError, KeyError) as err:
        raise _not_found(name, path, f"torchvision could not read it: {err}") from err


def _tv_attr(dataset: Any, attr: str) -> Any:
    # The file lists are private attributes of torchvision's classes (stable in 0.18-0.29); fail
    # loudly rather than silently mislabel if a later torchvision renames them.
    try:
        return getattr(dataset, attr)
    except AttributeError:
        raise RuntimeError(
            f"torchvision's {type(dataset).__name__} has no attribute {attr!r}; "
            "this loader supports torchvision 0.18-0.29"
        ) from None


# --------------------------------------------------------------------------- datasets


def _default_transform() -> Transform:
    from torchvision import transforms

    return transforms.ToTensor()


class ImageFileDataset(Dataset):
    """(path, label) pairs; each image is opened only when asked for."""

    def __init__(self, paths: Sequence[str], targets: np.ndarray, transform: Transform | None = None):
        if len(paths) != len(targets):
            raise ValueError(f"{len(paths)} paths but {len(targets)} targets")
        # A numpy string array, not a list of str: forked DataLoader workers then share it
        # instead of copying every string on first touch.
        self.paths = np.asarray([str(p) for p in paths], dtype=str)
        self.targets = np.asarray(targets, dtype=np.int64)
        self.transform = transform if transform is not None else _default_transform()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path = str(self.paths[index])
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
        except Exception as err:  # PIL raises OSError, ValueError, SyntaxError, ... by format
            raise ImageReadError(f"cannot read image file {path}: {err}") from err
        return self.transform(rgb), int(self.targets[index])


class ArrayImageDataset(Dataset):
    """Images held as a uint8 array (N, H, W) or (N, H, W, 3): CIFAR, MNIST, SVHN."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, transform: Transform | None = None):
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images = np.ascontiguousarray(images, dtype=np.uint8)
        self.targets = np.asarray(targets, dtype=np.int64)
        self.transform = transform if transform is not None else _default_transform()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = Image.fromarray(self.images[index]).convert("RGB")
        return self.transform(image), int(self.targets[index])


@dataclass
class DatasetBundle:
    name: str
    classnames: list[str]
    templates: list[str]
    train: Dataset  # yields (image_tensor, int label)
    test: Dataset
    train_targets: np.ndarray  # int64 label per train sample, without decoding images
    test_targets: np.ndarray
    train_domains: np.ndarray | None = None  # str domain per sample (imagenet_r, domainnet)
    test_domains: np.ndarray | None = None
    # How a seeded train/test split was made (None for official splits): see save_split_record.
    split_record: dict[str, Any] | None = None
    # Each label's class as the dataset's own files spell it ("001.Black_footed_Albatross",
    # "The_Eiffel_Tower"), where a reference class order is keyed by them; None: classnames do.
    raw_classnames: list[str] | None = None

    def __post_init__(self) -> None:
        self.train_targets = np.asarray(self.train_targets, dtype=np.int64)
        self.test_targets = np.asarray(self.test_targets, dtype=np.int64)
        num_classes = len(self.classnames)
        if self.raw_classnames is not None and len(self.raw_classnames) != num_classes:
            raise ValueError(
                f"{self.name}: {len(self.raw_classnames)} raw class names for {num_classes} classes"
            )
        for split, targets in (("train", self.train_targets), ("test", self.test_targets)):
            if targets.size and (targets.min() < 0 or targets.max() >= num_classes):
                raise ValueError(
                    f"{self.name} {split} labels span [{targets.min()}, {targets.max()}] "
                    f"but there are {num_classes} class names"
                )

    @property
    def num_classes(self) -> int:
        return len(self.classnames)


def _bundle(
    name: str,
    base: Path,
    classnames: Sequence[str],
    train: tuple[Sequence[str], np.ndarray],
    test: tuple[Sequence[str], np.ndarray],
    train_transform: Transform | None,
    eval_transform: Transform | None,
    train_domains: np.ndarray | None = None,
    test_domains: np.ndarray | None = None,
    split_record: dict[str, Any] | None = None,
    raw_classnames: Sequence[str] | None = None,
) -> DatasetBundle:
    for split, (paths, _) in (("train", train), ("test", test)):
        if len(paths) == 0:
            raise _not_found(name, base, f"the {split} split has no images")
    return DatasetBundle(
        name=name,
        classnames=list(classnames),
        templates=get_templates(name),
        train=ImageFileDataset(train[0], train[1], train_transform),
        test=ImageFileDataset(test[0], test[1], eval_transform),
        train_targets=np.asarray(train[1], dtype=np.int64),
        test_targets=np.asarray(test[1], dtype=np.int64),
        train_domains=train_domains,
        test_domains=test_domains,
        split_record=split_record,
        raw_classnames=None if raw_classnames is None else list(raw_classnames),
    )


# --------------------------------------------------------------------------- seeded splits


def stratified_split(
    keys: Sequence[str],
    labels: np.ndarray,
    fractions: Mapping[str, float],
    seed: int,
) -> dict[str, np.ndarray]:
    """Per-class seeded split of samples into named parts.

    Within a class the samples are sorted by `keys` (relative paths), then permuted by a
    generator seeded with (seed, label); each part but the first gets round(n * fraction)
    samples (halves round up), the first part the rest. Sorting first makes the result
    independent of directory listing order and of the platform; a generator per class makes a
    class's split independent of the other classes' sizes.
    """
    names = list(fractions)
    if not names or abs(sum(fractions.values()) - 1.0) > 1e-9:
        raise ValueError(f"fractions must sum to 1, got {dict(fractions)}")
    keys_arr = np.asarray(keys, dtype=str)
    labels = np.asarray(labels, dtype=np.int64)
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        members = members[np.argsort(keys_arr[members], kind="stable")]
        rng = np.random.default_rng([seed, int(label)])
        members = members[rng.permutation(members.size)]
        counts = [int(np.floor(members.size * fractions[n] + 0.5)) for n in names[1:]]
        first = members.size - sum(counts)
        if first < 0:  # tiny classes: rounding up the later parts can overshoot
            counts[-1] += first
            first = 0
        bounds = np.cumsum([0, first, *counts])
        for n, lo, hi in zip(names, bounds[:-1], bounds[1:], strict=True):
            parts[n].append(members[lo:hi])
    return {n: np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for n, p in parts.items()}


def _seeded_record(
    name: str,
    keys: Sequence[str],
    labels: np.ndarray,
    fractions: Mapping[str, float],
    seed: int,
) -> dict[str, Any]:
    parts = stratified_split(keys, labels, fractions, seed)
    return {
        "dataset": name,
        "method": "seeded-stratified",
        "seed": int(seed),
        "fractions": dict(fractions),
        "splits": {n: sorted(str(keys[i]) for i in idx) for n, idx in parts.items()},
    }


def _apply_record(
    name: str, base: Path, record: Mapping[str, Any], keys: Sequence[str]
) -> dict[str, np.ndarray]:
    """Indices (into `keys`) of the train and test parts of a recorded split."""
    if record.get("dataset") != name:
        raise ValueError(f"split record is for {record.get('dataset')!r}, not {name!r}")
    position = {k: i for i, k in enumerate(keys)}
    out = {}
    for part in ("train", "test"):
        wanted = record["splits"][part]
        missing = [k for k in wanted if k not in position]
        if missing:
            raise _not_found(
                name, base / missing[0], f"{len(missing)} file(s) of the recorded {part} split are missing"
            )
        out[part] = np.asarray(sorted(position[k] for k in wanted), dtype=np.int64)
    return out


def _split_parts(
    name: str,
    base: Path,
    keys: Sequence[str],
    labels: np.ndarray,
    fractions: Mapping[str, float],
    split_seed: int,
    split_record: Mapping[str, Any] | None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    record = (
        dict(split_record)
        if split_record is not None
        else _seeded_record(name, keys, labels, fractions, split_seed)
    )
    return _apply_record(name, base, record, keys), record


def save_split_record(record: Mapping[str, Any], path: PathLike) -> Path:
    """Write a split record as JSON (temp file + rename, so a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
    os.replace(tmp, path)
    return path


def load_split_record(path: PathLike) -> dict[str, Any]:
    """Read a split record written by save_split_record (pass it on as `split_record=`)."""
    return json.loads(Path(path).read_text())


# --------------------------------------------------------------------------- helpers


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan_class_folders(name: str, image_dir: Path) -> tuple[list[str], list[str], np.ndarray]:
    """(class folder names, image paths relative to image_dir, labels) of a class-folder tree."""
    classes = _subdirs(image_dir)
    if not classes:
        raise _not_found(name, image_dir, "no class folders")
    rel, labels = [], []
    for label, folder in enumerate(classes):
        files = sorted(p for p in folder.rglob("*") if p.is_file() and _is_image(p))
        if not files:
            raise _not_found(name, folder, f"class folder {folder.name!r} has no images")
        rel.extend(p.relative_to(image_dir).as_posix() for p in files)
        labels.extend([label] * len(files))
    return [c.name for c in classes], rel, np.asarray(labels, dtype=np.int64)


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _paths(base: Path, rel: Sequence[str], idx: np.ndarray) -> list[str]:
    return [str(base / rel[i]) for i in idx]


def _official_parts(
    name: str,
    base: Path,
    position: Mapping[str, int],
    lists: Sequence[Path],
    key: Callable[[str], str],
) -> dict[str, np.ndarray]:
    """Train/test indices from official split lists (one file per line, mapped through `key`)."""
    parts = {}
    for part, path in zip(("train", "test"), lists, strict=True):
        wanted = [key(line) for line in _read_lines(path)]
        missing = [w for w in wanted if w not in position]
        if missing:
            raise _not_found(
                name, base / missing[0], f"{len(missing)} file(s) listed in {path.name} are missing"
            )
        parts[part] = np.asarray(sorted(position[w] for w in wanted), dtype=np.int64)
    return parts


# --------------------------------------------------------------------------- cifar100


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler for the CIFAR python files that only resolves what they contain.

    The official CIFAR-100 "python version" is a pickle (torchvision reads it with plain
    `pickle.load`); this allow-list means a tampered file cannot run code when it is loaded.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR file")
        # Files written under numpy 1 name numpy.core, under numpy 2 numpy._core.
        has_private_core = importlib.util.find_spec("numpy._core") is not None
        if has_private_core and module.startswith("numpy.core."):
            module = "numpy._core." + module[len("numpy.core.") :]
        elif not has_private_core and module.startswith("numpy._core."):
            module = "numpy.core." + module[len("numpy._core.") :]
        return super().find_class(module, name)


def _read_cifar_file(name: str, path: Path) -> dict[str, Any]:
    _require_file(name, path)
    try:
        with path.open("rb") as f:
            return _CifarUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise _not_found(name, path, f"unreadable CIFAR file: {err}") from err


def _load_cifar100(
    root: PathLike, train_transform: Transform | None = None, eval_transform: Transform | None = None
) -> DatasetBundle:
    name = "cifar100"
    base = _require_dir(name, Path(root).expanduser() / "cifar-100-python")
    meta = _read_cifar_file(name, base / "meta")
    classnames = [str(c) for c in meta["fine_label_names"]]
    splits = {}
    for split in ("train", "test"):
        entry = _read_cifar_file(name, base / split)
        data = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry["fine_labels"], dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
            raise _not_found(name, base / split, f"unexpected data shape {data.shape}")
        if len(labels) == 0:
            raise _not_found(name, base / split, "no images")
        # Stored as N x (3*32*32) channel-planar rows; PIL wants N x H x W x C.
        splits[split] = (data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels)
    # Class names as torchvision gives them (with underscores), as the reference code used them.
    return DatasetBundle(
        name=name,
        classnames=classnames,
        templates=get_templates(name),
        train=ArrayImageDataset(*splits["train"], train_transform),
        test=ArrayImageDataset(*splits["test"], eval_transform),
        train_targets=splits["train"][1],
        test_targets=splits["test"][1],
    )


# --------------------------------------------------------------------------- imagenet-r

_WNID = re.compile(r"^n\d{8}$")
_RENDITION = re.compile(r"^(.*?)_\d+$")


def _imagenet_r_names(base: Path, folders: Sequence[str]) -> list[str]:
    """Class names as the dataset spells them ("African_chameleon"): classnames.txt, else the
    README.txt of the official archive, else the folder name.

    Both files hold 'wnid name' lines (README.txt has prose around them, which is skipped).
    Folders already named by class (as the reference code renames them) keep their names.
    """
    mapping: dict[str, str] = {}
    for fname in ("classnames.txt", "README.txt"):
        path = base / fname
        if path.is_file():
            for line in path.read_text(errors="replace").splitlines():
                parts = line.strip().split(maxsplit=1)
                if len(parts) == 2 and _WNID.match(parts[0]):
                    mapping[parts[0]] = parts[1].strip()
            if mapping:
                break
    return [mapping.get(f, f) for f in folders]


def _rendition(rel_path: str) -> str:
    stem = Path(rel_path).stem
    match = _RENDITION.match(stem)
    return match.group(1) if match else stem.split("_")[0]


def _scan_imagenet_r(root: PathLike) -> tuple[Path, list[str], list[str], np.ndarray]:
    base = _require_dir("imagenet_r", Path(root).expanduser() / "imagenet-r")
    folders, rel, labels = _scan_class_folders("imagenet_r", base)
    return base, folders, rel, labels


IMAGENET_R_FRACTIONS = {"train": 0.8, "test": 0.2}


def imagenet_r_split(
    root: PathLike, seed: int = DEFAULT_SPLIT_SEED, path: PathLike | None = None
) -> dict[str, Any]:
    """The recorded 80/20 per-class split of ImageNet-R (relative paths), written to `path` if given.

    The same files and seed give the same split on any machine (see stratified_split).
    """
    _, _, rel, labels = _scan_imagenet_r(root)
    record = _seeded_record("imagenet_r", rel, labels, IMAGENET_R_FRACTIONS, seed)
    if path is not None:
        save_split_record(record, path)
    return record


def _load_imagenet_r(
    root: PathLike,
    train_transform: Transform | None = None,
    eval_transform: Transform | None = None,
    split_seed: int = DEFAULT_SPLIT_SEED,
    split_record: Mapping[str, Any] | None = None,
) -> DatasetBundle:
    name = "imagenet_r"
    base, folders, rel, labels = _scan_imagenet_r(root)
    parts, record = _split_parts(
        name, base, rel, labels, IMAGENET_R_FRACTIONS, split_seed, split_record
    )
    domains = np.asarray([_rendition(r) for r in rel], dtype=str)
    # Labels follow the sorted folders (wnids in the official archive), not the names' string
    # order; the class order (splits.class_order) maps through these names.
    raw_names = _imagenet_r_names(base, folders)
    return _bundle(
        name,
        base,
        [n.replace("_", " ") for n in raw_names],
        (_paths(base, rel, parts["train"]), labels[parts["train"]]),
        (_paths(base, rel, parts["test"]), labels[parts["test"]]),
        train_transform,
        eval_transform,
        train_domains=domains[parts["train"]],
        test_domains=domains[parts["test"]],
        split_record=record,
        raw_classnames=raw_names,
    )


# --------------------------------------------------------------------------- domainnet

DOMAINNET_ALL_DOMAINS = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")


def _read_domainnet_list(name: str, path: Path) -> tuple[list[str], list[int]]:
    _require_file(name, path)
    rel, labels = [], []
    for number, line in enumerate(_read_lines(path), start=1):
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise _not_found(name, path, f"line {number} is not 'path label': {line!r}")
        rel.append(parts[0])
        labels.append(int(parts[1]))
    if not rel:
        raise _not_found(name, path, "split list is empty")
    return rel, labels


def _load_domainnet(
    root: PathLike,
    train_transform: Transform | None = None,
    eval_transform: Transform | None = None,
    domains: Sequence[str] = DOMAINNET_ALL_DOMAINS,
) -> DatasetBundle:
    name = "domainnet"
    base = _require_dir(name, Path(root).expanduser() / "domainnet")
    splits: dict[str, tuple[list[str], list[int]]] = {}
    for split in ("train", "test"):
        rel_all: list[str] = []
        labels_all: list[int] = []
        for domain in domains:
            _require_dir(name, base / domain)
            rel, labels = _read_domainnet_list(name, base / f"{domain}_{split}.txt")
            rel_all += rel
            labels_all += labels
        splits[split] = (rel_all, labels_all)
    # The lists carry labels only; the class name is the folder in each path (domain/class/file).
    names: dict[int, str] = {}
    for rel, labels in splits.values():
        for r, label in zip(rel, labels, strict=True):
            folder = Path(r).parts[1] if len(Path(r).parts) >= 3 else None
            if folder is None or names.setdefault(label, folder) != folder:
                raise _not_found(
                    name, base / r, f"label {label} is given to folders {names.get(label)!r} and {folder!r}"
                )
    num_classes = max(names) + 1
    unnamed = [c for c in range(num_classes) if c not in names]
    if min(names) < 0 or unnamed:
        raise _not_found(name, base, f"labels are not 0..{num_classes - 1}; missing {unnamed[:5]}")
    classnames = [names[c].replace("_", " ") for c in range(num_classes)]
    domain_of = {
        split: np.asarray([Path(r).parts[0] for r in rel], dtype=str)
        for split, (rel, _) in splits.items()
    }
    return _bundle(
        name,
        base,
        classnames,
        ([str(base / r) for r in splits["train"][0]], np.asarray(splits["train"][1])),
        ([str(base / r) for r in splits["test"][0]], np.asarray(splits["test"][1])),
        train_transform,
        eval_transform,
        train_domains=domain_of["train"],
        test_domains=domain_of["test"],
        # labels are the lists' numbers, not the folders' string order: see splits.class_order
        raw_classnames=[names[c] for c in range(num_classes)],
    )


# --------------------------------------------------------------------------- cub200


def _read_id_table(name: str, path: Path) -> dict[int, str]:
    table = {}
    for line in _read_lines(_require_file(name, path)):
        key, _, value = line.partition(" ")
        if not key.isdigit() or not value:
            raise _not_found(name, path, f"malformed line {line!r}")
        table[int(key)] = value.strip()
    if not table:
        raise _not_found(name, path, "file is empty")
    return table


def _load_cub200(
    root: PathLike, train_transform: Transform | None = None, eval_transform: Transform | None = None
) -> DatasetBundle:
    name = "cub200"
    base = _require_dir(name, Path(root).expanduser() / "CUB_200_2011")
    image_dir = _require_dir(name, base / "images")
    images = _read_id_table(name, base / "images.txt")
    labels = _read_id_table(name, base / "image_class_labels.txt")
    is_train = _read_id_table(name, base / "train_test_split.txt")
    classes = _read_id_table(name, base / "classes.txt")
    # "001.Black_footed_Albatross" -> "Black footed Albatross", as in the reference code.
    classnames = [classes[c].split(".", 1)[-1].replace("_", " ") for c in sorted(classes)]
    out: dict[bool, tuple[list[str], list[int]]] = {True: ([], []), False: ([], [])}
    for image_id in sorted(images):
        if image_id not in labels or image_id not in is_train:
            raise _not_found(name, base, f"image id {image_id} has no label or no split entry")
        paths, targets = out[is_train[image_id] == "1"]
        paths.append(str(image_dir / images[image_id]))
        targets.append(int(labels[image_id]) - 1)  # class ids are 1-based
    return _bundle(
        name,
        base,
        classnames,
        (out[True][0], np.asarray(out[True][1])),
        (out[False][0], np.asarray(out[False][1])),
        train_transform,
        eval_transform,
        raw_classnames=[classes[c] for c in sorted(classes)],
    )


# --------------------------------------------------------------------------- torchvision-backed


def _require_scipy(name: str) -> None:
    if importlib.util.find_spec("scipy") is None:
        raise ModuleNotFoundError(
            f"dataset {name!r} stores its labels in MATLAB .mat files, which need scipy: "
            "install scipy (it is not a core dependency of this project)"
        )


def _load_cars(
    root: PathLike, train_transform: Transform | None = None, eval_transform: Transform | None = None
) -> DatasetBundle:
    name = "cars"
    root = Path(root).expanduser()
    base = _require_dir(name, root / "stanford_cars")
    _require_scipy(name)
    from torchvision.datasets import StanfordCars

    splits = {}
    for split in ("train", "test"):
        with _torchvision_errors(name, base):
            ds = StanfordCars(str(root), split=split, download=False)
        samples = _tv_attr(ds, "_samples")
        splits[split] = ([str(p) for p, _ in samples], np.asarray([int(t) for _, t in samples]))
        classes = [str(c) for c in ds.classes]
    return _bundle(name, base, classes, splits["train"], splits["test"], train_transform, eval_transform)


def _load_dtd(
    root: PathLike,
    train_transform: Transform | None = None,
    eval_transform: Transform | None = None,
    partition: int = 1,
) -> DatasetBundle:
    name = "dtd"
    root = Path(root).expanduser()
    base = _require_dir(name, root / "dtd" / "dtd")
    for split in ("train", "val", "test"):
        _require_file(name, base / "labels" / f"{split}{partition}.txt")
    from torchvision.datasets import DTD

    files: dict[str, list[str]] = {}
    class_of: dict[str, list[str]] = {}
    for split in ("train", "val", "test"):
        with _torchvision_errors(name, base):
            ds = DTD(str(root), split=split, partition=partition, download=False)
        files[split] = [str(p) for p in _tv_attr(ds, "_image_files")]
        class_of[split] = [ds.classes[label] for label in _tv_attr(ds, "_labels")]
    # torchvision indexes classes per split file; index them once over all splits instead.
    classes = sorted({c for split in class_of.values() for c in split})
    index = {c: i for i, c in enumerate(classes)}
    # As in PAINT / task vectors: train = train + val, test unchanged.
    train_classes = class_of["train"] + class_of["val"]
    train = (files["train"] + files["val"], np.asarray([index[c] for c in train_classes]))
    test = (files["test"], np.asarray([index[c] for c in class_of["test"]]))
    classnames = [c.replace("_", " ") for c in classes]
    return _bundle(name, base, classnames, train, test, train_transform, eval_transform)


# Folder name -> the class names the reference (and CLIP) prompts use.
EUROSAT_CLASSNAMES = {
    "AnnualCrop": "annual crop land",
    "Forest": "forest",
    "HerbaceousVegetation": "brushland or shrubland",
    "Highway": "highway or road",
    "Industrial": "industrial buildings or commercial buildings",
    "Pasture": "pasture land",
    "PermanentCrop": "permanent crop land",
    "Residential": "residential buildings or homes or apartments",
    "River": "river",
    "SeaLake": "lake or sea",
}
# EuroSAT ships no split; the reference used a random 21,600 / 2,700 / 2,700 split. Ours has the
# same proportions, seeded and recorded; the val part is recorded but not loaded.
EUROSAT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}


def _load_eurosat(
    root: PathLike,
    train_transform: Transform | None = None,
    eval_transform: Transform | None = None,
    split_seed: int = DEFAULT_SPLIT_SEED,
    split_record: Mapping[str, Any] | None = None,
) -> DatasetBundle:
    name = "eurosat"
    root = Path(root).expanduser()
    base = _require_dir(name, root / "eurosat" / "2750")
    from torchvision.datasets import EuroSAT

    with _torchvision_errors(name, base):
        ds = EuroSAT(str(root), download=False)
    rel = [Path(p).relative_to(base).as_posix() for p, _ in ds.samples]
    labels = np.asarray(ds.targets, dtype=np.int64)
    parts, record = _split_parts(name, base, rel, labels, EUROSAT_FRACTIONS, split_seed, split_record)
    classnames = [EUROSAT_CLASSNAMES.get(c, re.sub(r"(?<!^)(?=[A-Z])", " ", c).lower()) for c in ds.classes]
    return _bundle(
        name,
        base,
        classnames,
        (_paths(base, rel, parts["train"]), labels[parts["train"]]),
        (_paths(base, rel, parts["test"]), labels[parts["test"]]),
        train_transform,
        eval_transform,
        split_record=record,
    )


# From CLIP's prompts.md, as used by the reference code; index = GTSRB ClassId.
GTSRB_CLASSNAMES: tuple[str, ...] = (
    "red and white circle 20 kph speed limit",
    "red and white circle 30 kph speed limit",
    "red and white circle 50 kph speed limit",
    "red and white circle 60 kph speed limit",
    "red and white circle 70 kph speed limit",
    "red and white circle 80 kph speed limit",
    "end / de-restriction of 80 kph speed limit",
    "red and white circle 100 kph speed limit",
    "red and white circle 120 kph speed limit",
    "red and white circle red car and black car no passing",
    "red and white circle red truck and black car no passing",
    "red and white triangle road intersection warning",
    "white and yellow diamond priority road",
    "red and white upside down triangle yield right-of-way",
    "stop",
    "empty red and white circle",
    "red and white circle no truck entry",
    "red circle with white horizonal stripe no entry",
    "red and white triangle with exclamation mark warning",
    "red and white triangle with black left curve approaching warning",
    "red and white triangle with black right curve approaching warning",
    "red and white triangle with black double curve approaching warning",
    "red and white triangle rough / bumpy road warning",
    "red and white triangle car skidding / slipping warning",
    "red and white triangle with merging / narrow lanes warning",
    "red and white triangle with person digging / construction / road work warning",
    "red and white triangle with traffic light approaching warning",
    "red and white triangle with person walking warning",
    "red and white triangle with child and person walking warning",
    "red and white triangle with bicyle warning",
    "red and white triangle with snowflake / ice warning",
    "red and white triangle with deer warning",
    "white circle with gray strike bar no speed limit",
    "blue circle with white right turn arrow mandatory",
    "blue circle with white left turn arrow mandatory",
    "blue circle with white forward arrow mandatory",
    "blue circle with white forward or right turn arrow mandatory",
    "blue circle with white forward or left turn arrow mandatory",
    "blue circle with white keep right arrow mandatory",
    "blue circle with white keep left arrow mandatory",
    "blue circle with white arrows indicating a traffic circle",
    "white circle with gray strike bar indicating no passing for cars has ended",
    "white circle with gray strike bar indicating no passing for trucks has ended",
)


def _load_gtsrb(
    root: PathLike, train_transform: Transform | None = None, eval_transform: Transform | None = None
) -> DatasetBundle:
    name = "gtsrb"
    root = Path(root).expanduser()
    base = _require_dir(name, root / "gtsrb")
    _require_dir(name, base / "GTSRB" / "Training")
    _require_dir(name, base / "GTSRB" / "Final_Test" / "Images")
    _require_file(name, base / "GT-final_test.csv")
    from torchvision.datasets import GTSRB

    splits = {}
    for split in ("train", "test"):
        with _torchvision_errors(name, base):
            ds = GTSRB(str(root), split=split, download=False)
        samples = _tv_attr(ds, "_samples")
        paths = [str(p) for p, _ in samples]
        if split == "train":
            # torchvision numbers the class folders it finds; the folder name *is* the ClassId,
            # which stays right even if a folder is missing.
            labels = [int(Path(p).parent.name) for p in paths]
        else:
            labels = [int(t) for _, t in samples]
        splits[split] = (paths, np.asarray(labels, dtype=np.int64))
    return _bundle(
        name, base, GTSRB_CLASSNAMES, splits["train"], splits["test"], train_transform, eval_transform
    )


def _load_mnist(
    root: PathLike, train_transform: Transform | None = None, eval_transform: Transform | None = None
) -> DatasetBundle:
    name = "mnist"
    root = Path(root).expanduser()
    base = _require_dir(name, root / "MNIST" / "raw")
    from torchvision.datasets import MNIST

    splits = {}
    for split, train in (("train", True), ("test", False)):
        with _torchvision_errors(name, base):
            ds = MNIST(str(root), train=train, download=False)
        images, labels = ds.data.numpy(), ds.targets.numpy().astype(np.int64)
        if len(labels) == 0:
            raise _not_found(name, base, f"the {split} split has no images")
        splits[split] = (images, labels)
    return DatasetBundle(
        name=name,
        classnames=[str(d) for d in range(10)],
        templates=get_templates(name),
        train=ArrayImageDataset(*splits["train"], train_transform),
        test=ArrayImageDataset(*splits["test"], eval_transform),
        train_targets=splits["train"][1],
        test_targets=splits["test"][1],
    )


def _load_svhn(
    root: PathLike, train_transform: Transform | None = None, eval_transform: Transform | None = None
) -> DatasetBundle:
    # Read with scipy directly rather than torchvision.datasets.SVHN: that class refuses any file
    # whose md5 is not the official one (so no test fixture can exist); the parsing is the same.
    name = "svhn"
    base = _require_dir(name, Path(root).expanduser() / "svhn")
    _require_scipy(name)
    import scipy.io as sio

    splits = {}
    for split in ("train", "test"):
        path = _require_file(name, base / f"{split}_32x32.mat")
        try:
            mat = sio.loadmat(str(path))
            images = np.transpose(mat["X"], (3, 0, 1, 2))  # stored H x W x C x N
            labels = mat["y"].astype(np.int64).reshape(-1)
        except (ValueError, KeyError, OSError, TypeError) as err:
            raise _not_found(name, path, f"unreadable SVHN file: {err}") from err
        labels[labels == 10] = 0  # SVHN writes digit 0 as label 10
        if len(labels) == 0 or len(labels) != len(images):
            raise _not_found(name, path, "no images, or images and labels differ in number")
        splits[split] = (images, labels)
    return DatasetBundle(
        name=name,
        classnames=[str(d) for d in range(10)],
        templates=get_templates(name),
        train=ArrayImageDataset(*splits["train"], train_transform),
        test=ArrayImageDataset(*splits["test"], eval_transform),
        train_targets=splits["train"][1],
        test_targets=splits["test"][1],
    )


# The torchgeo / "In-domain representation learning" split has these proportions; the seeded
# fallback mirrors them.
RESISC45_FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}


def _load_resisc45(
    root: PathLike,
    train_transform: Transform | None = None,
    eval_transform: Transform | None = None,
    split_seed: int = DEFAULT_SPLIT_SEED,
    split_record: Mapping[str, Any] | None = None,
) -> DatasetBundle:
    name = "resisc45"
    base = _require_dir(name, Path(root).expanduser() / "resisc45")
    image_dir = base / "NWPU-RESISC45" if (base / "NWPU-RESISC45").is_dir() else base
    folders, rel, labels = _scan_class_folders(name, image_dir)
    classnames = [f.replace("_", " ") for f in folders]
    official = [base / f"resisc45-{s}.txt" for s in ("train", "test")]
    record: dict[str, Any] | None = None
    if split_record is None and all(p.is_file() for p in official):
        # Lines are bare file names ("airplane_001.jpg"), unique across classes.
        position = {Path(r).name: i for i, r in enumerate(rel)}
        parts = _official_parts(name, image_dir, position, official, lambda line: line)
    else:
        parts, record = _split_parts(
            name, image_dir, rel, labels, RESISC45_FRACTIONS, split_seed, split_record
        )
    return _bundle(
        name,
        image_dir,
        classnames,
        (_paths(image_dir, rel, parts["train"]), labels[parts["train"]]),
        (_paths(image_dir, rel, parts["test"]), labels[parts["test"]]),
        train_transform,
        eval_transform,
        split_record=record,
    )


# Without the official Partitions (50 train + 50 test images per class), a seeded per-class
# half/half split keeps the same train:test ratio.
SUN397_FRACTIONS = {"train": 0.5, "test": 0.5}


def _load_sun397(
    root: PathLike,
    train_transform: Transform | None = None,
    eval_transform: Transform | None = None,
    split_seed: int = DEFAULT_SPLIT_SEED,
    split_record: Mapping[str, Any] | None = None,
    partition: int = 1,
) -> DatasetBundle:
    name = "sun397"
    root = Path(root).expanduser()
    base = _require_dir(name, root / "SUN397")
    _require_file(name, base / "ClassName.txt")
    from torchvision.datasets import SUN397

    with _torchvision_errors(name, base):
        ds = SUN397(str(root), download=False)
    files = [Path(p) for p in _tv_attr(ds, "_image_files")]
    order = np.argsort([f.as_posix() for f in files], kind="stable")  # rglob order is arbitrary
    rel = [files[i].relative_to(base).as_posix() for i in order]
    labels = np.asarray(_tv_attr(ds, "_labels"), dtype=np.int64)[order]
    # "apartment_building/outdoor" -> "apartment building outdoor", as the reference prompts.
    classnames = [c.replace("/", " ").replace("_", " ") for c in ds.classes]
    official = [base / "Partitions" / f"{s}_{partition:02d}.txt" for s in ("Training", "Testing")]
    record: dict[str, Any] | None = None
    if split_record is None and all(p.is_file() for p in official):
        # Lines are paths under SUN397/ with a leading slash ("/a/abbey/sun_aaa.jpg").
        position = {r: i for i, r in enumerate(rel)}
        parts = _official_parts(name, base, position, official, lambda line: line.lstrip("/"))
    else:
        parts, record = _split_parts(name, base, rel, labels, SUN397_FRACTIONS, split_seed, split_record)
    return _bundle(
        name,
        base,
        classnames,
        (_paths(base, rel, parts["train"]), labels[parts["train"]]),
        (_paths(base, rel, parts["test"]), labels[parts["test"]]),
        train_transform,
        eval_transform,
        split_record=record,
    )


# --------------------------------------------------------------------------- registry

DATASETS: dict[str, Callable[..., DatasetBundle]] = {
    "cifar100": _load_cifar100,
    "imagenet_r": _load_imagenet_r,
    "domainnet": _load_domainnet,
    "cub200": _load_cub200,
    "cars": _load_cars,
    "dtd": _load_dtd,
    "eurosat": _load_eurosat,
    "gtsrb": _load_gtsrb,
    "mnist": _load_mnist,
    "svhn": _load_svhn,
    "resisc45": _load_resisc45,
    "sun397": _load_sun397,
}


# The datasets above: every process has them. What register_dataset adds exists only in the
# process that called it, so the names it added with carry=True are remembered here and travel to
# Ray workers with the config (BenchmarkConfig.__reduce__ -> carried_loaders / adopt_loaders).
_CARRIED: set[str] = set()


def register_dataset(
    name: str, loader: Callable[..., DatasetBundle], *, overwrite: bool = False, carry: bool = True
) -> None:
    """Add a dataset: `loader(root, train_transform, eval_transform, **options) -> DatasetBundle`.

    Its templates come from the bundle the loader builds (see pipeline.data.templates). Registered
    before the benchmark starts, it reaches every Ray worker that receives a config naming it (the
    loader is pickled with the config, by value where it is a closure or lives in ``__main__``;
    a loader in a module of its own must be importable on the workers). ``carry=False`` is for
    registrations every process makes itself (the demo world, datasets a config declares).
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


def carried_loaders(names: Sequence[str]) -> dict[str, Callable[..., DatasetBundle]]:
    """The loaders of ``names`` that this process registered itself and Ray workers lack."""
    return {n: DATASETS[n] for n in dict.fromkeys(names) if n in _CARRIED and n in DATASETS}


def adopt_loaders(loaders: Mapping[str, Callable[..., DatasetBundle]]) -> None:
    """Register loaders that came with a config from another process (replacing older ones)."""
    for name, loader in loaders.items():
        register_dataset(name, loader, overwrite=True)


def load_dataset(
    name: str,
    root: PathLike,
    train_transform: Transform | None = None,
    eval_transform: Transform | None = None,
    **options: Any,
) -> DatasetBundle:
    """Load a registered dataset from `root`; `options` go to its loader (e.g. split_seed=)."""
    try:
        loader = DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}") from None
    return loader(root, train_transform, eval_transform, **options)
