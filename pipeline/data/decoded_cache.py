"""A node-local cache of decoded images, so loader cores stop decoding every JPEG every epoch.

On a GPU node a ViT-B/16 in bf16 trains on more images per second than a few CPU cores can
decode. Here each dataset split is decoded once per node and kept as uint8 in a memory-mapped
file that every Train worker and evaluator on the node reads:

* train split (``finetune.train_transform=train``): ``PreCrop``'s RGB image with its short side
  capped at ``SeededCrop.cache_side`` (the model's size plus the margin the random crop needs),
  exactly what the in-memory pre-crop cache (``augment.hold_precrop``) holds per image, aspect
  ratio kept. The seeded crop, resize and normalisation run per epoch: per sample on a loader
  core (``AugmentedSubset``, as today), or per batch on the GPU (``crop_batch``).
* eval split (and the train split under ``train_transform=eval``): the eval transform's
  deterministic PIL steps (Resize, CenterCrop) as uint8; only ToTensor's /255 and Normalize run
  per read, so its tensors equal the eval transform's exactly.

Files (under ``MAGMAX_CACHE_DIR``, default ``~/.cache/magmax/decoded``), named by a key over the
dataset's content fingerprint (``fingerprint.bundle_fingerprint``), the split and the transform
parameters, so changed data or another model size never reads a stale cache:
``<key>.u8`` (the images' bytes back to back, CHW), ``<key>.idx.npy`` (int64 rows: offset, C, H,
W, label) and ``<key>.json`` (metadata; written last: its presence marks a complete cache).
One process per node builds it under an ``flock`` on ``<key>.lock`` (``storage.locked``) while the
others wait; files are written under temporary names and renamed, so a crash leaves no half cache, and a
builder that finds the cache complete after taking the lock just opens it.

Opt-in: ``MAGMAX_DECODED_CACHE`` = ``off`` (default) | ``cpu`` (cache; crops on loader cores) |
``gpu`` (cache; crops per batch on the GPU when there is one, else as ``cpu``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import PIL
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from pipeline.data.augment import PreCrop, SeededCrop, _cap, sample_seed
from pipeline.data.fingerprint import bundle_fingerprint
from pipeline.storage.files import locked

ENV_MODE = "MAGMAX_DECODED_CACHE"
ENV_DIR = "MAGMAX_CACHE_DIR"
DEFAULT_DIR = "~/.cache/magmax/decoded"
MODES = ("off", "cpu", "gpu")
# part of every key: raise it when what is stored changes
FORMAT_VERSION = 1
# PIL's fixed-point resampling of 8-bit images: coefficients carry this many fraction bits
_PIL_PRECISION_BITS = 32 - 8 - 2
_PILLOW_MAJOR = int(PIL.__version__.split(".")[0])
# Steps of an eval transform that are deterministic PIL -> PIL or the final conversion
_EVAL_PIL_STEPS = {"Resize", "CenterCrop", "_convert_to_rgb", "MaybeConvertMode"}
_EVAL_TO_TENSOR = {"ToTensor", "MaybeToTensor"}


def cache_mode(value: str | None = None) -> str:
    """``off`` | ``cpu`` | ``gpu`` from ``value`` (else the ``MAGMAX_DECODED_CACHE`` variable)."""
    raw = (os.environ.get(ENV_MODE, "") if value is None else value).strip().lower()
    mode = {"": "off", "0": "off", "false": "off", "no": "off", "1": "cpu", "on": "cpu", "true": "cpu"}.get(raw, raw)
    if mode not in MODES:
        raise ValueError(f"{ENV_MODE}={raw!r}: expected one of {', '.join(MODES)}")
    return mode


def cache_dir(value: str | os.PathLike | None = None) -> Path:
    """The node-local cache folder: ``value``, else ``MAGMAX_CACHE_DIR``, else ``~/.cache/magmax/decoded``."""
    return Path(value if value is not None else os.environ.get(ENV_DIR) or DEFAULT_DIR).expanduser()


def cache_key(fingerprint: str, split: str, recipe: dict[str, Any]) -> str:
    """Hex key of a cached split: content fingerprint + split + what was stored (format, transform)."""
    text = json.dumps({"version": FORMAT_VERSION, "fingerprint": fingerprint, "split": split, "recipe": recipe},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


# -- what is stored -------------------------------------------------------------------------------

class CappedPreCrop:
    """PIL image -> uint8 [3, H, W], short side capped at ``side`` (as ``hold_precrop`` holds it)."""

    def __init__(self, side: int) -> None:
        self.side = int(side)

    def __call__(self, image: Any) -> torch.Tensor:
        return _cap(PreCrop()(image), self.side)


class EvalSplit(NamedTuple):
    """An eval transform cut into its deterministic uint8 part and the per-read normalisation."""

    to_uint8: Callable[[Any], torch.Tensor]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    recipe: list[str]


def split_eval_transform(transform: Any) -> EvalSplit | None:
    """The eval transform as PIL steps -> uint8, then /255 + Normalize; None when it has other steps."""
    from torchvision import transforms as T

    steps = transform.transforms if isinstance(transform, T.Compose) else [transform]
    pil_steps, norm, seen_tensor = [], None, False
    for step in steps:
        name = getattr(step, "__name__", type(step).__name__)
        if name in _EVAL_TO_TENSOR and not seen_tensor:
            seen_tensor = True
        elif isinstance(step, T.Normalize) and seen_tensor and norm is None:
            norm = step
        elif name in _EVAL_PIL_STEPS and not seen_tensor:
            pil_steps.append(step)
        else:
            return None
    if not seen_tensor or norm is None:
        return None

    def to_uint8(image: Any, _steps: tuple = tuple(pil_steps)) -> torch.Tensor:
        image = image.convert("RGB") if isinstance(image, Image.Image) else Image.fromarray(image).convert("RGB")
        for step in _steps:
            image = step(image)
        return F.pil_to_tensor(image.convert("RGB"))

    return EvalSplit(to_uint8, tuple(float(m) for m in norm.mean), tuple(float(s) for s in norm.std),
                     [repr(s) for s in pil_steps] + [repr(norm)])


# -- the files ------------------------------------------------------------------------------------

def _paths(folder: Path, key: str) -> tuple[Path, Path, Path]:
    return folder / f"{key}.u8", folder / f"{key}.idx.npy", folder / f"{key}.json"


def _complete(folder: Path, key: str) -> bool:
    data, index, meta = _paths(folder, key)
    if not meta.exists():
        return False
    try:
        info = json.loads(meta.read_text())
        return data.stat().st_size == int(info["bytes"]) and index.exists()
    except (OSError, ValueError, KeyError):
        return False


class _Source(Dataset):
    """``dataset`` read with ``transform`` in place of its own (in the build's loader workers)."""

    def __init__(self, dataset: Dataset, transform: Callable) -> None:
        if not hasattr(dataset, "transform"):
            raise TypeError(f"decoded cache: {type(dataset).__name__} has no transform to replace")
        self.dataset = copy.copy(dataset)
        self.dataset.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, label = self.dataset[i]
        return image, int(label)


def _write(folder: Path, key: str, source: Dataset, meta: dict[str, Any], workers: int) -> None:
    data, index, meta_path = _paths(folder, key)
    tag = f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = [Path(str(p) + tag) for p in (data, index, meta_path)]
    rows = np.zeros((len(source), 5), dtype=np.int64)
    offset = 0
    try:
        loader = DataLoader(source, batch_size=None, shuffle=False, num_workers=workers)
        with open(tmp[0], "wb") as fh:
            for i, (image, label) in enumerate(loader):
                if image.dtype != torch.uint8 or image.dim() != 3:
                    raise TypeError(f"decoded cache {key}: sample {i} is {image.dtype} {tuple(image.shape)}, "
                                    "expected uint8 [C, H, W]")
                raw = image.contiguous().numpy().tobytes()
                rows[i] = (offset, *image.shape, int(label))
                fh.write(raw)
                offset += len(raw)
            fh.flush()
            os.fsync(fh.fileno())
        with open(tmp[1], "wb") as fh:
            np.save(fh, rows, allow_pickle=False)
        tmp[2].write_text(json.dumps({**meta, "key": key, "version": FORMAT_VERSION, "count": len(rows),
                                      "bytes": offset}, sort_keys=True))
        # the metadata last: its presence is what marks the cache complete
        for src, dst in zip(tmp, (data, index, meta_path)):
            os.replace(src, dst)
    finally:
        for p in tmp:
            p.unlink(missing_ok=True)


def build_or_open(folder: str | os.PathLike, key: str, source: Dataset, meta: dict[str, Any] | None = None,
                  workers: int = 0) -> "DecodedImages":
    """The cached split ``key`` under ``folder``, decoded from ``source`` (uint8 CHW images) if absent.

    Concurrent callers on one node: one decodes under the lock, the others wait and open its files.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not _complete(folder, key):
        with locked(folder / f"{key}.lock"):
            if not _complete(folder, key):
                _write(folder, key, source, meta or {}, workers)
    return DecodedImages(folder, key)


class DecodedImages(Dataset):
    """A cached split: (uint8 [C, H, W] image, label) per index, read from the memory map.

    The map is opened lazily in each process (never pickled: loader workers and Ray ship the
    folder and key, and map the file themselves; the page cache is shared node-wide).
    """

    def __init__(self, folder: str | os.PathLike, key: str) -> None:
        self.folder, self.key = Path(folder), key
        data, index, meta = _paths(self.folder, key)
        try:
            self.meta = json.loads(meta.read_text())
            self.rows = np.load(index, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise OSError(f"decoded cache {meta}: cannot read: {err}") from err
        if self.rows.ndim != 2 or self.rows.shape[1] != 5 or len(self.rows) != int(self.meta["count"]):
            raise OSError(f"decoded cache {index}: index of shape {self.rows.shape} does not match its metadata")
        if data.stat().st_size != int(self.meta["bytes"]):
            raise OSError(f"decoded cache {data}: {data.stat().st_size} bytes, its metadata says {self.meta['bytes']}")
        self.targets = self.rows[:, 4].copy()
        self._data: np.memmap | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_data": None}

    def __len__(self) -> int:
        return len(self.rows)

    def shape(self, index: int) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.rows[index, 1:4])  # type: ignore[return-value]

    def image(self, index: int) -> torch.Tensor:
        if self._data is None:
            path = _paths(self.folder, self.key)[0]
            self._data = np.memmap(path, dtype=np.uint8, mode="r") if self.meta["bytes"] else np.zeros(0, np.uint8)
        offset, c, h, w, _ = (int(v) for v in self.rows[index])
        # a copy: the map is read-only, and the tensor outlives nothing of it
        return torch.from_numpy(np.array(self._data[offset:offset + c * h * w]).reshape(c, h, w))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.image(index), int(self.rows[index, 4])


class Normalised(Dataset):
    """Cached eval images -> float tensors: ToTensor's /255 and Normalize (equal to the eval transform)."""

    def __init__(self, images: DecodedImages, mean: Sequence[float], std: Sequence[float]) -> None:
        self.images, self.mean, self.std = images, list(mean), list(std)
        self.targets = images.targets

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.images[index]
        return F.normalize(image.float().div_(255.0), self.mean, self.std), label


# -- the batched crop (on the GPU) ----------------------------------------------------------------

def _pil_bicubic(x: torch.Tensor) -> torch.Tensor:
    """PIL's bicubic kernel (a = -0.5)."""
    a = -0.5
    x = x.abs()
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, torch.zeros_like(x)))


def pil_resize_weights(start: torch.Tensor, length: torch.Tensor, out: int, full: int) -> torch.Tensor:
    """[B, out, full] matrices that resize [start, start + length) of a row to ``out`` samples.

    PIL's ``precompute_coeffs`` (bicubic, antialiased when shrinking) and its 8-bit fixed point:
    each coefficient rounded to 2^-22, as PIL's 8-bit resampling multiplies with. Built in float64.
    """
    dev = start.device
    start = start.to(torch.float64).view(-1, 1, 1)
    length = length.to(torch.float64).view(-1, 1, 1)
    scale = length / out
    filterscale = torch.clamp(scale, min=1.0)
    support = 2.0 * filterscale
    center = (torch.arange(out, device=dev, dtype=torch.float64).view(1, -1, 1) + 0.5) * scale
    xmin = torch.clamp(torch.floor(center - support + 0.5), min=0.0)
    xmax = torch.minimum(torch.floor(center + support + 0.5), length)
    x = torch.arange(full, device=dev, dtype=torch.float64).view(1, 1, -1) - start  # position in the crop
    inside = (x >= xmin) & (x < xmax)
    w = torch.where(inside, _pil_bicubic((x - center + 0.5) / filterscale), torch.zeros((), dtype=torch.float64,
                                                                                         device=dev))
    total = w.sum(dim=-1, keepdim=True)
    w = torch.where(total != 0, w / torch.where(total != 0, total, torch.ones_like(total)), w)
    unit = float(1 << _PIL_PRECISION_BITS)
    # PIL: (int)(w * 2^22 +- 0.5), i.e. rounded half away from zero
    return torch.sign(w) * torch.floor(w.abs() * unit + 0.5) / unit


def _round_uint8(x: torch.Tensor) -> torch.Tensor:
    # PIL's clip8: floor(sum + 1/2), clamped to [0, 255]
    return torch.clamp(torch.floor(x + 0.5), 0.0, 255.0)


def crop_batch(images: torch.Tensor, boxes: torch.Tensor, crop: SeededCrop, *,
               dtype: torch.dtype = torch.float32, chunk: int = 64) -> torch.Tensor:
    """Crop boxes of a uint8 batch resized to ``crop.size`` and normalised: ``SeededCrop`` batched.

    ``images`` uint8 [B, 3, H, W] (each image at the top left, padding anywhere else), ``boxes``
    int [B, 4] (top, left, h, w) within each image. Runs where ``images`` are (a GPU). Each crop
    is PIL's two-pass resize, horizontal then vertical, each pass rounded to uint8 as PIL rounds
    it, written as two batched matrix products with PIL's coefficients. In float64 the result
    equals ``SeededCrop`` on every image bit for bit; in float32 (the default, fast on any GPU)
    a pixel may differ by one uint8 level (1/255 before normalisation) where a sum falls on .5.
    """
    if crop.interpolation != InterpolationMode.BICUBIC:
        raise ValueError(f"crop_batch: only bicubic crops are batched, got {crop.interpolation}")
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise TypeError(f"crop_batch: expected uint8 [B, 3, H, W] images, got {images.dtype} {tuple(images.shape)}")
    out_h, out_w = crop.size
    boxes = boxes.to(images.device)
    vertical_first = _vertical_first(boxes, out_h, out_w)
    batch = torch.empty(len(images), images.shape[1], out_h, out_w, dtype=dtype, device=images.device)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False  # TF32 would round the sums to ~10 bits
        for lo in range(0, len(images), chunk):
            for first_v in (False, True):
                pick = torch.nonzero(vertical_first[lo:lo + chunk] == first_v).flatten() + lo
                if len(pick) == 0:
                    continue
                b, x = boxes[pick], images[pick].to(dtype)
                wx = pil_resize_weights(b[:, 1], b[:, 3], out_w, x.shape[-1]).to(dtype).unsqueeze(1)  # [b,1,ow,W]
                wy = pil_resize_weights(b[:, 0], b[:, 2], out_h, x.shape[-2]).to(dtype).unsqueeze(1)  # [b,1,oh,H]
                if first_v:
                    batch[pick] = _round_uint8(torch.matmul(_round_uint8(torch.matmul(wy, x)), wx.transpose(2, 3)))
                else:
                    batch[pick] = _round_uint8(torch.matmul(wy, _round_uint8(torch.matmul(x, wx.transpose(2, 3)))))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return F.normalize(batch.to(torch.float32).div_(255.0), list(crop.mean), list(crop.std))


def _vertical_first(boxes: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """Per box, whether PIL resizes rows before columns (each pass rounds, so the order shows).

    Pillow up to 12 always resizes horizontally first. Pillow 13 resizes vertically first when the
    crop shrinks vertically and 2 (w - out_w) < h - out_h (found by comparing both orders with
    Pillow 13.0's output over a few hundred sizes; its source was not at hand), which
    ``tests/test_decoded_cache.py`` checks against the installed Pillow bit for bit.
    """
    h, w = boxes[:, 2], boxes[:, 3]
    if _PILLOW_MAJOR < 13:
        return torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    return (h > out_h) & (2 * (w - out_w) < h - out_h)


class PaddedBatch(NamedTuple):
    images: torch.Tensor   # uint8 [B, 3, Hmax, Wmax], each image at the top left
    boxes: torch.Tensor    # int64 [B, 4] crop boxes (top, left, h, w)


def pad_batch(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """uint8 images of any sizes -> one zero-padded [B, C, Hmax, Wmax] batch."""
    h = max(im.shape[-2] for im in images)
    w = max(im.shape[-1] for im in images)
    batch = torch.zeros(len(images), images[0].shape[0], h, w, dtype=torch.uint8)
    for i, im in enumerate(images):
        batch[i, :, :im.shape[-2], :im.shape[-1]] = im
    return batch


class DeviceCropSubset(Dataset):
    """``AugmentedSubset`` whose crops are drawn on the loader cores but applied per batch on ``device``.

    Each sample yields its cached uint8 image and its crop box, drawn from the same generator as
    ``AugmentedSubset`` (seed, epoch, index); ``collate`` pads a batch; ``finish`` (called by
    ``GlobalBatches`` in the training process) moves it to the device and runs ``crop_batch``.
    """

    def __init__(self, dataset: DecodedImages, indices: Sequence[int], seed: int, crop: SeededCrop,
                 device: torch.device | str, dtype: torch.dtype = torch.float32) -> None:
        self.dataset, self.indices = dataset, list(indices)
        self.seed, self.crop, self.epoch = int(seed), crop, 0
        self.device, self.dtype = torch.device(device), dtype

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        index = self.indices[position]
        image, label = self.dataset[index]
        generator = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, index))
        box = self.crop.params(image.shape[-2], image.shape[-1], generator)
        return image, torch.tensor(box, dtype=torch.int64), label

    @staticmethod
    def collate(samples: Sequence[tuple[torch.Tensor, torch.Tensor, int]]) -> tuple[PaddedBatch, torch.Tensor]:
        images, boxes, labels = zip(*samples)
        return PaddedBatch(pad_batch(images), torch.stack(boxes)), torch.as_tensor(labels, dtype=torch.int64)

    def finish(self, batch: PaddedBatch) -> torch.Tensor:
        images = batch.images.to(self.device, non_blocking=True)
        return crop_batch(images, batch.boxes, self.crop, dtype=self.dtype)


# -- wiring ---------------------------------------------------------------------------------------

def cache_bundle(data: Any, crop: SeededCrop | None, eval_transform: Any, *, folder: str | os.PathLike | None = None,
                 workers: int = 0) -> Any:
    """``data`` (a DatasetBundle) with its on-disk splits replaced by their decoded caches.

    Splits already held in memory (TensorDataset) stay as they are; so does a bundle whose
    content has no fingerprint (a URI data root, an unknown dataset kind: nothing to key on) and
    an eval transform with steps other than Resize/CenterCrop/ToTensor/Normalize.
    """
    if isinstance(data.train, TensorDataset) and isinstance(data.test, TensorDataset):
        return data
    fp = bundle_fingerprint(data)
    if fp is None or not fp.startswith("sha256:"):
        return data
    where = cache_dir(folder)
    evals = split_eval_transform(eval_transform)

    def cached_eval(split: str, dataset: Dataset) -> Dataset:
        if evals is None or isinstance(dataset, TensorDataset) or not hasattr(dataset, "transform"):
            return dataset
        key = cache_key(fp, split, {"kind": "eval", "steps": evals.recipe})
        images = build_or_open(where, key, _Source(dataset, evals.to_uint8),
                               {"dataset": data.name, "split": split, "kind": "eval"}, workers)
        return Normalised(images, evals.mean, evals.std)

    train, test = data.train, data.test
    if crop is not None:
        if not isinstance(train, TensorDataset) and hasattr(train, "transform"):
            key = cache_key(fp, "train", {"kind": "precrop", "side": crop.cache_side})
            train = build_or_open(where, key, _Source(train, CappedPreCrop(crop.cache_side)),
                                  {"dataset": data.name, "split": "train", "kind": "precrop",
                                   "side": crop.cache_side}, workers)
    else:
        train = cached_eval("train", train)
    data.train, data.test = train, cached_eval("test", test)
    return data


def device_crop_subset(dataset: Dataset, indices: Sequence[int], seed: int, crop: SeededCrop | None,
                       mode: str | None = None) -> DeviceCropSubset | None:
    """A ``DeviceCropSubset`` on this process's GPU when the cache mode is ``gpu``, a GPU is
    there and ``dataset`` is a decoded cache of pre-crop images; else None (crops stay on CPU)."""
    if crop is None or cache_mode(mode) != "gpu" or not torch.cuda.is_available():
        return None
    if not isinstance(dataset, DecodedImages) or dataset.meta.get("kind") != "precrop":
        return None
    return DeviceCropSubset(dataset, indices, seed, crop, torch.device("cuda", torch.cuda.current_device()))
