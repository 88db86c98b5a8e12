"""GTSRB through torchvision: the official training and final test sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.data.bundle import DatasetBundle, PathLike, Transform, make_bundle
from pipeline.data.errors import require_dir, require_file, torchvision_errors, tv_attr


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


def load_gtsrb(
    root: PathLike, train_transform: Transform | None = None, eval_transform: Transform | None = None
) -> DatasetBundle:
    name = "gtsrb"
    root = Path(root).expanduser()
    base = require_dir(name, root / "gtsrb")
    require_dir(name, base / "GTSRB" / "Training")
    require_dir(name, base / "GTSRB" / "Final_Test" / "Images")
    require_file(name, base / "GT-final_test.csv")
    from torchvision.datasets import GTSRB

    splits = {}
    for split in ("train", "test"):
        with torchvision_errors(name, base):
            ds = GTSRB(str(root), split=split, download=False)
        samples = tv_attr(ds, "_samples")
        paths = [str(p) for p, _ in samples]
        if split == "train":
            # torchvision numbers the class folders it finds; the folder name *is* the ClassId,
            # which stays right even if a folder is missing.
            labels = [int(Path(p).parent.name) for p in paths]
        else:
            labels = [int(t) for _, t in samples]
        splits[split] = (paths, np.asarray(labels, dtype=np.int64))
    return make_bundle(
        name, base, GTSRB_CLASSNAMES, splits["train"], splits["test"], train_transform, eval_transform
    )
