"""Stanford Cars through torchvision (its .mat annotations need scipy)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.data.bundle import DatasetBundle, PathLike, Transform, make_bundle
from pipeline.data.errors import require_dir, require_scipy, torchvision_errors, tv_attr


def load_cars(
    root: PathLike, train_transform: Transform | None = None, eval_transform: Transform | None = None
) -> DatasetBundle:
    name = "cars"
    root = Path(root).expanduser()
    base = require_dir(name, root / "stanford_cars")
    require_scipy(name)
    from torchvision.datasets import StanfordCars

    splits = {}
    for split in ("train", "test"):
        with torchvision_errors(name, base):
            ds = StanfordCars(str(root), split=split, download=False)
        samples = tv_attr(ds, "_samples")
        splits[split] = ([str(p) for p, _ in samples], np.asarray([int(t) for _, t in samples]))
        classes = [str(c) for c in ds.classes]
    return make_bundle(name, base, classes, splits["train"], splits["test"], train_transform, eval_transform)
