"""The backbone's train preprocessing, split so that its randomness is a function of the sample.

open_clip's train transform (what the official code trains on) is ``RandomResizedCrop`` to the
model's input size (area fraction ``scale`` (0.9, 1.0), aspect ratio (3/4, 4/3), bicubic), then
to-tensor and CLIP normalisation. Its crops come from the global RNG, so they depend on the
worker count and are lost when a run resumes. Here the transform is cut in two:

* ``PreCrop`` (deterministic): the decoded RGB image as a uint8 tensor. This is what the
  in-memory cache holds (uncropped, 1 byte a value), or what loader workers read from disk.
* ``SeededCrop`` (random): the same crop distribution, resize and normalisation, drawn from a
  ``torch.Generator`` seeded by (seed, epoch, dataset index) in ``AugmentedSubset``. The seed
  passed in already covers the task, so a sample's crop in an epoch is the same in a resumed
  run, with any number of loader workers and in any shuffle position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, TensorDataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

# Steps of a train transform that are deterministic conversions, handled by PreCrop and the
# float conversion in SeededCrop (open_clip's class names, old and new, and torchvision's).
_CONVERSIONS = {"MaybeConvertMode", "MaybeToTensor", "ToTensor", "PILToTensor", "_convert_to_rgb"}


def _pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(image.permute(1, 2, 0).numpy()), "RGB")


class PreCrop:
    """PIL image (or HWC uint8 array) -> RGB uint8 tensor [3, H, W] at its own size."""

    def __call__(self, image: Any) -> torch.Tensor:
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        if isinstance(image, Image.Image):
            return F.pil_to_tensor(image.convert("RGB"))
        raise TypeError(f"PreCrop: expected a PIL image or an HWC uint8 array, got {type(image).__name__}")


@dataclass(frozen=True)
class SeededCrop:
    """``RandomResizedCrop`` + normalisation, drawing its crop from a given generator."""

    size: tuple[int, int]                      # (height, width) of the model's input
    scale: tuple[float, float] = (0.9, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: InterpolationMode = InterpolationMode.BICUBIC
    mean: tuple[float, ...] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, ...] = (0.26862954, 0.26130258, 0.27577711)

    @property
    def cache_side(self) -> int:
        """Short side at which a cached image keeps every crop at or above the model's size.

        The narrowest crop of a square image of side L is L * sqrt(scale_min * ratio_min) wide
        (and L * sqrt(scale_min / ratio_max) high); bigger images are downscaled to this side
        in the cache, smaller ones are kept as they are (upsampled by the crop, as officially).
        """
        shrink = math.sqrt(self.scale[0] * min(self.ratio[0], 1.0 / self.ratio[1]))
        return int(math.ceil(max(self.size) / shrink - 1e-9))

    def params(self, height: int, width: int, generator: torch.Generator) -> tuple[int, int, int, int]:
        """(top, left, h, w) of a crop: torchvision's RandomResizedCrop distribution.

        Up to ten draws of an area fraction uniform in ``scale`` and a log aspect ratio uniform in
        ``log(ratio)``, the first that fits placed uniformly; else the whole image clipped to the
        ratio range, centred.
        """
        area = height * width
        lo, hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            u = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
            target = area * (self.scale[0] + (self.scale[1] - self.scale[0]) * u[0])
            aspect = math.exp(lo + (hi - lo) * u[1])
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
                left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
                return top, left, h, w
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            w, h = int(round(height * self.ratio[1])), height
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """uint8 [3, H, W] -> normalised float [3, size] (a random crop drawn from ``generator``)."""
        if not isinstance(image, torch.Tensor):
            image = PreCrop()(image)
        if image.dtype != torch.uint8 or image.dim() != 3:
            raise TypeError(f"SeededCrop: expected a uint8 [3, H, W] image, got {image.dtype} {tuple(image.shape)}")
        top, left, h, w = self.params(image.shape[-2], image.shape[-1], generator)
        # cropped and resized as a PIL image, as open_clip does (PIL's bicubic, not torch's)
        crop = F.resized_crop(_pil(image), top, left, h, w, list(self.size), self.interpolation)
        return F.normalize(F.pil_to_tensor(crop).float().div_(255.0), list(self.mean), list(self.std))


def seeded_crop_from(transform: Callable, *, where: str = "backbone train transform") -> SeededCrop:
    """The ``SeededCrop`` equal to a train transform made of RandomResizedCrop, conversions and
    Normalize (open_clip's default); any other step is refused, naming it."""
    from torchvision import transforms as T

    steps = transform.transforms if isinstance(transform, T.Compose) else [transform]
    crop: T.RandomResizedCrop | None = None
    norm: T.Normalize | None = None
    for step in steps:
        name = getattr(step, "__name__", type(step).__name__)
        if isinstance(step, T.RandomResizedCrop):
            crop = step
        elif isinstance(step, T.Normalize):
            norm = step
        elif name not in _CONVERSIONS:
            raise ValueError(f"{where}: step {name} is not supported by the seeded augmentation "
                             "(use finetune.train_transform=eval)")
    if crop is None or norm is None:
        raise ValueError(f"{where}: expected RandomResizedCrop and Normalize, got {transform}")
    size = (int(crop.size[0]), int(crop.size[1]))
    return SeededCrop(size=size, scale=(float(crop.scale[0]), float(crop.scale[1])),
                      ratio=(float(crop.ratio[0]), float(crop.ratio[1])), interpolation=crop.interpolation,
                      mean=tuple(float(m) for m in norm.mean), std=tuple(float(s) for s in norm.std))


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit generator seed for (seed, epoch, index), distinct inputs -> independent streams."""
    words = [int(seed) % (1 << 63), int(epoch), int(index)]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> np.uint64(1))


class AugmentedSubset(Dataset):
    """``Subset(dataset, indices)`` whose images get a ``SeededCrop`` drawn per (seed, epoch, index).

    ``index`` is the sample's index in ``dataset`` (not its shuffled position). The epoch is
    plain state set before an epoch's iterator is made, so loader workers (which copy the
    dataset when the iterator starts, persistent_workers=False) see it.
    """

    def __init__(self, dataset: Dataset, indices: Sequence[int], seed: int, crop: SeededCrop) -> None:
        self.dataset, self.indices = dataset, list(indices)
        self.seed, self.crop, self.epoch = int(seed), crop, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, Any]:
        index = self.indices[position]
        image, label = self.dataset[index]
        generator = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, index))
        return self.crop(image, generator), label


def augmented_subset(dataset: Dataset, indices: Sequence[int], seed: int,
                     crop: SeededCrop | None) -> Dataset:
    """``AugmentedSubset``, or a plain ``Subset`` when there is no crop (train on the eval transform)."""
    from torch.utils.data import Subset

    return Subset(dataset, list(indices)) if crop is None else AugmentedSubset(dataset, indices, seed, crop)


def capped_shape(height: int, width: int, side: int) -> tuple[int, int]:
    """(H, W) after scaling an image down so its short side is ``side`` (never up)."""
    short = min(height, width)
    if short <= side:
        return height, width
    # torchvision's Resize(side) rounding: the long side is int(side * long / short)
    if height <= width:
        return side, int(side * width / height)
    return int(side * height / width), side


def _cap(image: torch.Tensor, side: int) -> torch.Tensor:
    h, w = capped_shape(image.shape[-2], image.shape[-1], side)
    if (h, w) == tuple(image.shape[-2:]):
        return image
    return F.pil_to_tensor(F.resize(_pil(image), [h, w], InterpolationMode.BICUBIC))


def precrop_bytes(dataset: Dataset, side: int) -> int:
    """Bytes the pre-crop cache would hold, judged by the first image (uint8, short side capped)."""
    if len(dataset) == 0:
        return 0
    image, _ = dataset[0]
    h, w = capped_shape(image.shape[-2], image.shape[-1], side)
    return len(dataset) * image.shape[0] * h * w * image.element_size()


def hold_precrop(dataset: Dataset, side: int, budget: int) -> TensorDataset | None:
    """The dataset's pre-crop uint8 images decoded into a TensorDataset, or None over ``budget``.

    Images keep their size when all share one (short side capped at ``side``). A dataset of
    mixed sizes cannot be one tensor: its images are then resized to short side ``side`` and
    centre-cropped square (the edge strips of non-square images are lost: stated, rare in the
    small datasets held in memory). ``budget`` counts the bytes actually held.
    """
    images, labels, held = [], [], 0
    for i in range(len(dataset)):
        image, label = dataset[i]
        image = _cap(image, side)
        held += image.numel() * image.element_size()
        if held > budget:
            return None
        images.append(image)
        labels.append(int(label))
    if len({tuple(im.shape) for im in images}) > 1:
        if len(images) * images[0].shape[0] * side * side > budget:
            return None
        images = [F.pil_to_tensor(F.center_crop(F.resize(_pil(im), side, InterpolationMode.BICUBIC), [side, side]))
                  for im in images]
    stacked = torch.stack(images) if images else torch.empty(0, 3, side, side, dtype=torch.uint8)
    return TensorDataset(stacked, torch.as_tensor(labels, dtype=torch.int64))
