"""The published size of every registered dataset: what `prepare_data --verify` checks against.

One table, one row per built-in dataset (each record's ``published``, pipeline.data.records). The
numbers are what the project's loader yields on the complete official data, so they can be compared with a
preparation manifest (pipeline.data.prepare) directly:

* ``train`` / ``test``: the loader's split sizes. Where the dataset ships its split these are the
  published split sizes; where the loader derives the split by a seeded per-class fraction whose
  sizes follow exactly from the published class sizes (EuroSAT, RESISC45) they are derived (said
  in ``source``); where they depend on rounding per class (ImageNet-R) or on an optional file
  (SUN397's Partitions) they are None (not checked).
* ``images``: image files in the dataset's folder (array datasets: images in the arrays loaded).
* ``classes``: number of classes the loader reports.
* ``domains``: DomainNet only: (train, test) per domain, the line counts of its official lists.

None means "not checked". The sources are the datasets' own papers / download pages (the same
figures torchvision's documentation repeats); they were transcribed, not measured here (the
machines this was written on had no copy of the data and no network).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Counts:
    classes: int | None = None
    train: int | None = None
    test: int | None = None
    images: int | None = None
    domains: dict[str, tuple[int, int]] = field(default_factory=dict)
    source: str = ""

    def as_dict(self) -> dict[str, int]:
        """The checked numbers (None left out), as a manifest's ``counts`` spells them."""
        out = {k: getattr(self, k) for k in ("classes", "train", "test", "images")}
        return {k: v for k, v in out.items() if v is not None}


# DomainNet "cleaned" release, per-domain (train, test) = lines of <domain>_train.txt / _test.txt.
_DOMAINNET = {
    "clipart": (33_525, 14_604),
    "infograph": (36_023, 15_582),
    "painting": (50_416, 21_850),
    "quickdraw": (120_750, 51_750),
    "real": (120_906, 52_041),
    "sketch": (48_212, 20_916),
}

PUBLISHED: dict[str, Counts] = {
    "cifar100": Counts(
        classes=100, train=50_000, test=10_000, images=60_000,
        source="Krizhevsky 2009, CIFAR page: 500 train + 100 test images per class",
    ),
    "imagenet_r": Counts(
        classes=200, images=30_000,
        source="Hendrycks et al. 2021 (ImageNet-R README): 30,000 renditions of 200 classes; "
               "train/test is the loader's seeded 80/20 per class (rounded per class: not checked)",
    ),
    "domainnet": Counts(
        classes=345,
        train=sum(t for t, _ in _DOMAINNET.values()),  # 409,832
        test=sum(t for _, t in _DOMAINNET.values()),  # 176,743
        domains=dict(_DOMAINNET),
        source="Peng et al. 2019, DomainNet page (ai.bu.edu/M3SDA), cleaned version: per-domain "
               "train/test list sizes; image count of the zips not checked",
    ),
    "cub200": Counts(
        classes=200, train=5_994, test=5_794, images=11_788,
        source="Wah et al. 2011, CUB-200-2011 tech report: train_test_split.txt",
    ),
    "cars": Counts(
        classes=196, train=8_144, test=8_041, images=16_185,
        source="Krause et al. 2013, Stanford Cars page",
    ),
    "dtd": Counts(
        classes=47, train=3_760, test=1_880, images=5_640,
        source="Cimpoi et al. 2014, DTD page: 120 images per class, split 1 is 40/40/40; "
               "the loader's train is train1 + val1",
    ),
    "eurosat": Counts(
        classes=10, train=21_600, test=2_700, images=27_000,
        source="Helber et al. 2019: 27,000 RGB images; train/test derived: the loader's seeded "
               "80/10/10 per class is exact on the published class sizes (2,000-3,000 each)",
    ),
    "gtsrb": Counts(
        classes=43, train=26_640, test=12_630, images=39_270,
        source="torchvision's GTSRB (the layout the loader reads): GTSRB-Training_fixed.zip, 26,640 "
               "images (the benchmark page's Final_Training set has 39,209; task-arithmetic papers "
               "use 26,640), and the Final_Test set, 12,630",
    ),
    "mnist": Counts(
        classes=10, train=60_000, test=10_000, images=70_000,
        source="LeCun et al. 1998, MNIST page",
    ),
    "svhn": Counts(
        classes=10, train=73_257, test=26_032, images=99_289,
        source="Netzer et al. 2011, SVHN page: format 2 train_32x32.mat / test_32x32.mat (extra not used)",
    ),
    "resisc45": Counts(
        classes=45, train=18_900, test=6_300, images=31_500,
        source="Cheng et al. 2017: 700 images per class; train/test: torchgeo's 60/20/20 split files, "
               "or the loader's seeded 60/20/20 (exact: 420/140 per class)",
    ),
    "sun397": Counts(
        classes=397, images=108_754,
        source="Xiao et al. 2010, SUN397 page / torchvision docs: 108,754 images; train/test "
               "depend on Partitions/ (19,850 / 19,850 with it, else the seeded half split): not checked",
    ),
}
