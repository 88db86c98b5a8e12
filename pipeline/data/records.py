"""One record per built-in dataset: every fact the pipeline keeps about it, in one place.

A record (as open_clip's pretrained records or timm's model registry) holds the dataset's loader,
its class and domain counts, the train/test sizes a plan estimates with, the paper's epochs, the
on-disk layout and fetch hint its errors show, its seeded split fractions, the name of its
zero-shot template set, the writer of its profile=tiny stand-in and its published counts. The
tables other modules used to keep (config's class counts, the plan's sizes, the scenario's epochs
and domain orders, the registry's loaders) are derived from ``RECORDS``.

Datasets a user registers (pipeline.data.registry.register_dataset) or a config declares have no
record: what is known of them is what their loader returns.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pipeline.data.bundle import DatasetBundle
from pipeline.data.demo_world import DEMO_TEMPLATES
from pipeline.data.loaders import cars, cifar, cub, domainnet, dtd, eurosat, gtsrb, imagenet_r, mnist_svhn
from pipeline.data.loaders import resisc45, sun397
from pipeline.data.loaders.image_folder import image_folder_layout, image_folder_loader
from pipeline.data.published_counts import PUBLISHED, Counts
from pipeline.data.splits import DOMAINNET_DOMAINS, IMAGENET_R_DOMAINS
from pipeline.data.synthetic import TINY_WRITERS

Loader = Callable[..., DatasetBundle]


@dataclass(frozen=True)
class DatasetRecord:
    """What the pipeline knows about one built-in dataset before reading any of it."""

    name: str
    loader: Loader  # (root, train_transform, eval_transform, **options) -> DatasetBundle
    num_classes: int
    # (train, test) images the loader yields on the complete data (ImageNet-R: its recorded
    # 80/20 split); what a plan estimates GPU-hours with when the data is not on the machine
    sizes: tuple[int, int]
    epochs: int  # per task, from the paper (design.md); finetune.epochs > 0 overrides
    # the eight-dataset benchmark's epochs where they differ from ``epochs`` (design.md)
    multi_dataset_epochs: int | None = None
    # the domain-incremental task order (empty: the dataset has no domains)
    domains: tuple[str, ...] = ()
    layout: str = ""  # the expected on-disk layout, shown by DatasetNotFoundError
    fetch: str = ""  # how to get the data on a machine with internet
    # the seeded per-class split (None: the dataset ships its split)
    split_fractions: Mapping[str, float] | None = field(default=None, hash=False)
    templates: str = ""  # the name of its template set in pipeline.data.templates.TEMPLATES ("": the loader's own)
    tiny_writer: Callable[[Path], Any] | None = None  # writes its profile=tiny stand-in (pipeline.data.synthetic)
    published: Counts | None = field(default=None, hash=False)  # what prepare_data --verify checks

    @property
    def num_domains(self) -> int:
        return len(self.domains)

    @property
    def train_size(self) -> int:
        return self.sizes[0]

    @property
    def test_size(self) -> int:
        return self.sizes[1]

    def task_epochs(self, multi_dataset: bool = False) -> int:
        """Epochs per task, in a single-dataset scenario or the multi-dataset benchmark."""
        if multi_dataset and self.multi_dataset_epochs is not None:
            return self.multi_dataset_epochs
        return self.epochs


_TORCHVISION_FETCH = (
    "on a machine with internet run `torchvision.datasets.{cls}({args}download=True)`, "
    "then copy the folder into data_root"
)


def _record(name: str, loader: Loader, num_classes: int, sizes: tuple[int, int], epochs: int,
            **facts: Any) -> DatasetRecord:
    fractions = facts.pop("split_fractions", None)
    return DatasetRecord(
        name=name, loader=loader, num_classes=num_classes, sizes=sizes, epochs=epochs,
        split_fractions=None if fractions is None else MappingProxyType(dict(fractions)),
        templates=facts.pop("templates", name), tiny_writer=TINY_WRITERS.get(name),
        published=PUBLISHED.get(name), **facts,
    )


_ALL = (
    _record(
        "cifar100", cifar.load_cifar100, 100, (50_000, 10_000), epochs=10,
        layout="<root>/cifar-100-python/\n    train\n    test\n    meta",
        fetch=_TORCHVISION_FETCH.format(cls="CIFAR100", args="root, "),
    ),
    _record(
        "imagenet_r", imagenet_r.load_imagenet_r, 200, (24_000, 6_000), epochs=10,
        domains=IMAGENET_R_DOMAINS, split_fractions=imagenet_r.IMAGENET_R_FRACTIONS,
        layout=(
            "<root>/imagenet-r/\n"
            "    README.txt or classnames.txt   (optional: 'wnid name' per line)\n"
            "    n01443537/\n"
            "        art_0.jpg  cartoon_3.jpg  ...   (<rendition>_<n>.jpg)\n"
            "    ... (200 class folders)"
        ),
        fetch="extract the official imagenet-r.tar into <root>/",
    ),
    _record(
        "domainnet", domainnet.load_domainnet, 345, (409_832, 176_743), epochs=10,
        domains=DOMAINNET_DOMAINS,
        layout=(
            "<root>/domainnet/\n"
            "    clipart_train.txt  clipart_test.txt  ... (one pair per domain: 'path label' lines)\n"
            "    clipart/<class>/<file>.jpg\n"
            "    infograph/ painting/ quickdraw/ real/ sketch/"
        ),
        fetch=(
            "download each domain's zip and its <domain>_train.txt / <domain>_test.txt "
            "into <root>/domainnet/"
        ),
    ),
    _record(
        "cub200", cub.load_cub200, 200, (5_994, 5_794), epochs=30,
        layout=(
            "<root>/CUB_200_2011/\n"
            "    images.txt  image_class_labels.txt  train_test_split.txt  classes.txt\n"
            "    images/001.Black_footed_Albatross/<file>.jpg ..."
        ),
        fetch="extract the official CUB_200_2011.tgz into <root>/",
    ),
    _record(
        "cars", cars.load_cars, 196, (8_144, 8_041), epochs=30, multi_dataset_epochs=35,
        layout=(
            "<root>/stanford_cars/\n"
            "    devkit/cars_meta.mat  devkit/cars_train_annos.mat\n"
            "    cars_test_annos_withlabels.mat\n"
            "    cars_train/<file>.jpg  cars_test/<file>.jpg"
        ),
        fetch=(
            "torchvision can no longer download Stanford Cars (the original URL is gone); "
            "place a copy in the layout above (it is read with torchvision.datasets.StanfordCars)"
        ),
    ),
    _record(
        "dtd", dtd.load_dtd, 47, (3_760, 1_880), epochs=75,
        layout=(
            "<root>/dtd/dtd/\n"
            "    images/<class>/<file>.jpg\n"
            "    labels/train1.txt  labels/val1.txt  labels/test1.txt"
        ),
        fetch=_TORCHVISION_FETCH.format(cls="DTD", args="root, "),
    ),
    _record(
        "eurosat", eurosat.load_eurosat, 10, (21_600, 2_700), epochs=12,
        split_fractions=eurosat.EUROSAT_FRACTIONS,
        layout="<root>/eurosat/2750/\n    AnnualCrop/<file>.jpg  Forest/  ... (10 class folders)",
        fetch=_TORCHVISION_FETCH.format(cls="EuroSAT", args="root, "),
    ),
    _record(
        "gtsrb", gtsrb.load_gtsrb, 43, (26_640, 12_630), epochs=11,
        layout=(
            "<root>/gtsrb/\n"
            "    GTSRB/Training/00000/<file>.ppm ... 00042/\n"
            "    GTSRB/Final_Test/Images/<file>.ppm\n"
            "    GT-final_test.csv"
        ),
        fetch=_TORCHVISION_FETCH.format(cls="GTSRB", args="root, split='train'|'test', "),
    ),
    _record(
        "mnist", mnist_svhn.load_mnist, 10, (60_000, 10_000), epochs=5,
        layout=(
            "<root>/MNIST/raw/\n"
            "    train-images-idx3-ubyte  train-labels-idx1-ubyte\n"
            "    t10k-images-idx3-ubyte   t10k-labels-idx1-ubyte"
        ),
        fetch=_TORCHVISION_FETCH.format(cls="MNIST", args="root, train=True|False, "),
    ),
    _record(
        "svhn", mnist_svhn.load_svhn, 10, (73_257, 26_032), epochs=4,
        layout="<root>/svhn/\n    train_32x32.mat\n    test_32x32.mat",
        fetch=_TORCHVISION_FETCH.format(cls="SVHN", args="root + '/svhn', split='train'|'test', "),
    ),
    _record(
        "resisc45", resisc45.load_resisc45, 45, (18_900, 6_300), epochs=15,
        split_fractions=resisc45.RESISC45_FRACTIONS,
        layout=(
            "<root>/resisc45/\n"
            "    resisc45-train.txt  resisc45-test.txt   (optional official split: file names)\n"
            "    [NWPU-RESISC45/]airplane/airplane_001.jpg ... (45 class folders)"
        ),
        fetch="extract NWPU-RESISC45 into <root>/resisc45/ (the torchgeo split files are optional)",
    ),
    _record(
        "sun397", sun397.load_sun397, 397, (19_850, 19_850), epochs=14,
        split_fractions=sun397.SUN397_FRACTIONS,
        layout=(
            "<root>/SUN397/\n"
            "    ClassName.txt\n"
            "    a/abbey/sun_<id>.jpg ...\n"
            "    Partitions/Training_01.txt  Partitions/Testing_01.txt   (optional official split)"
        ),
        fetch=_TORCHVISION_FETCH.format(cls="SUN397", args="root, "),
    ),
    # The generated demo world (pipeline.data.demo_world): an ImageFolder tree with its own prompts.
    _record(
        "demo_shapes", image_folder_loader("demo_shapes", DEMO_TEMPLATES), 100, (6_000, 3_000), epochs=4,
        layout=image_folder_layout("demo_shapes"), templates="",
        fetch="generated, not fetched: demo_data: true writes it (pipeline.data.demo_world.write_image_folder)",
    ),
)

RECORDS: Mapping[str, DatasetRecord] = MappingProxyType({r.name: r for r in _ALL})


class UnknownDatasetError(KeyError):
    """A dataset name with no record; the message lists the known ones."""

    def __str__(self) -> str:
        return str(self.args[0])


def record(name: str) -> DatasetRecord:
    """The record of built-in dataset ``name``."""
    try:
        return RECORDS[name]
    except KeyError:
        raise UnknownDatasetError(
            f"no built-in dataset {name!r}; known datasets: {', '.join(sorted(RECORDS))}"
        ) from None
