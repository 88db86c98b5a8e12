"""The demo world: procedurally drawn coloured shapes and their captions.

It stands in for the web (pretraining pairs) and for CIFAR100 (the downstream class-incremental
dataset). A class is a (colour, shape) pair named in words, e.g. "red ring". Pretraining pairs
cover a superset of the demo's concepts in a clean style; the downstream dataset draws the same
concepts in another style (textured backgrounds, clutter, colour casts, noise) from disjoint
random streams, so the pretrained model transfers zero-shot but imperfectly, as CLIP does on
CIFAR100, and fine-tuning has something to learn.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

IMAGE_SIZE = 32

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.9, 0.1, 0.1),
    "green": (0.1, 0.75, 0.15),
    "blue": (0.15, 0.25, 0.95),
    "yellow": (0.95, 0.9, 0.1),
    "cyan": (0.1, 0.85, 0.9),
    "magenta": (0.9, 0.15, 0.85),
    "orange": (1.0, 0.55, 0.05),
    "purple": (0.5, 0.15, 0.75),
    "white": (0.97, 0.97, 0.97),
    "brown": (0.55, 0.3, 0.1),
    # only in pretraining: the "web" knows more than the benchmark asks about
    "pink": (1.0, 0.6, 0.75),
    "gray": (0.55, 0.55, 0.55),
}

SHAPES: tuple[str, ...] = (
    "circle", "ring", "square", "frame", "diamond", "cross", "triangle", "bar", "x", "half disk",
    # only in pretraining
    "dot pair", "star",
)

DEMO_COLORS = tuple(list(COLORS)[:10])
DEMO_SHAPES = SHAPES[:10]

SIZES = ("small", "medium", "large")

# The demo dataset's prompt templates (the way CIFAR100 has its own set).
DEMO_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a photo of the {}.",
    "a drawing of a {}.",
    "a picture of a {}.",
    "a cluttered photo of a {}.",
)

# Pretraining captions: varied phrasing, some with size/background words, some partial.
_CAPTIONS: tuple[str, ...] = (
    "a {color} {shape}",
    "a photo of a {color} {shape}.",
    "a {size} {color} {shape}",
    "a {color} {shape} on a dark background",
    "an image of a {size} {color} {shape}.",
    "the {color} {shape}",
    "a picture of a {color} {shape}.",
    "a {shape} that is {color}",
    "a drawing of a {color} {shape}.",
    "{color} {shape}",
)


def demo_classnames() -> list[str]:
    """The 100 downstream classes, colour-major: index = colour * 10 + shape."""
    return [f"{c} {s}" for c in DEMO_COLORS for s in DEMO_SHAPES]


@dataclass(frozen=True)
class Style:
    """How a batch of images is drawn."""

    texture: float      # amplitude of the coloured background texture
    clutter: int        # number of distractor blobs
    noise: float        # pixel noise std
    color_jitter: float # per-image colour cast std
    scale: tuple[float, float]
    shift: float        # max centre offset, in half-widths
    rotation: float     # max rotation, radians


PRETRAIN_STYLE = Style(texture=0.05, clutter=0, noise=0.03, color_jitter=0.04,
                       scale=(0.45, 0.85), shift=0.25, rotation=0.35)
DOWNSTREAM_STYLE = Style(texture=0.45, clutter=2, noise=0.10, color_jitter=0.12,
                         scale=(0.35, 0.75), shift=0.35, rotation=0.6)


def _shape_masks(shape_ids: np.ndarray, x: np.ndarray, y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Soft-free boolean masks [N, H, W] for each image's shape in its own rotated frame."""
    r = np.sqrt(x ** 2 + y ** 2)
    ax, ay = np.abs(x), np.abs(y)
    cheb = np.maximum(ax, ay)
    out = np.zeros(x.shape, dtype=bool)
    xr, yr = (x + y) / np.sqrt(2), (x - y) / np.sqrt(2)
    tests = {
        "circle": lambda: r < s,
        "ring": lambda: (r < s) & (r > 0.55 * s),
        "square": lambda: cheb < 0.8 * s,
        "frame": lambda: (cheb < 0.85 * s) & (cheb > 0.5 * s),
        "diamond": lambda: ax + ay < 1.1 * s,
        "cross": lambda: ((ax < 0.3 * s) & (ay < s)) | ((ay < 0.3 * s) & (ax < s)),
        "triangle": lambda: (y < 0.7 * s) & (y > 1.8 * ax - 1.0 * s),
        "bar": lambda: (ay < 0.3 * s) & (ax < 1.05 * s),
        "x": lambda: ((np.abs(xr) < 0.25 * s) & (np.abs(yr) < s)) | ((np.abs(yr) < 0.25 * s) & (np.abs(xr) < s)),
        "half disk": lambda: (r < s) & (y > -0.1 * s),
        "dot pair": lambda: (np.sqrt((x - 0.5 * s) ** 2 + y ** 2) < 0.4 * s) | (np.sqrt((x + 0.5 * s) ** 2 + y ** 2) < 0.4 * s),
        "star": lambda: (r < s * (0.55 + 0.45 * np.cos(5 * np.arctan2(y, x)))),
    }
    for idx, name in enumerate(SHAPES):
        sel = shape_ids == idx
        if sel.any():
            full = tests[name]()
            out[sel] = full[sel]
    return out


def render(color_ids: np.ndarray, shape_ids: np.ndarray, style: Style, rng: np.random.Generator,
           size: int = IMAGE_SIZE) -> np.ndarray:
    """Draw images [N, size, size, 3] uint8 of the given colour and shape indices."""
    n = len(color_ids)
    palette = np.array(list(COLORS.values()), dtype=np.float32)
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    gy, gx = np.meshgrid(coords, coords, indexing="ij")

    # background: a dark base with low-frequency coloured texture
    base = rng.uniform(0.0, 0.3, size=(n, 1, 1, 3)).astype(np.float32)
    img = np.broadcast_to(base, (n, size, size, 3)).copy()
    if style.texture > 0:
        for _ in range(3):
            fx, fy = rng.uniform(0.5, 4.0, size=(2, n, 1, 1))
            phase = rng.uniform(0, 2 * np.pi, size=(n, 1, 1))
            wave = np.sin(np.pi * (fx * gx + fy * gy) + phase)
            tint = rng.uniform(-1, 1, size=(n, 1, 1, 3))
            img += style.texture / 3 * wave[..., None] * tint

    def stamp(cids: np.ndarray, sids: np.ndarray, scale: tuple[float, float], shift: float,
              only: np.ndarray | None = None) -> None:
        s = rng.uniform(*scale, size=(n, 1, 1)).astype(np.float32)
        cx, cy = rng.uniform(-shift, shift, size=(2, n, 1, 1)).astype(np.float32)
        th = rng.uniform(-style.rotation, style.rotation, size=(n, 1, 1)).astype(np.float32)
        dx, dy = gx - cx, gy - cy
        x = np.cos(th) * dx + np.sin(th) * dy
        y = -np.sin(th) * dx + np.cos(th) * dy
        mask = _shape_masks(sids, x, y, s)
        if only is not None:
            mask &= only[:, None, None]
        col = palette[cids][:, None, None, :]
        col = col + rng.normal(0, style.color_jitter, size=(n, 1, 1, 3)).astype(np.float32)
        np.copyto(img, np.broadcast_to(col, img.shape), where=mask[..., None])

    # distractors first, small and off-centre, so the labelled object stays on top
    for _ in range(style.clutter):
        dc = rng.integers(0, len(COLORS), size=n)
        ds = rng.integers(0, len(SHAPES), size=n)
        stamp(dc, ds, (0.12, 0.22), 0.8, only=rng.random(n) < 0.8)
    stamp(color_ids, shape_ids, style.scale, style.shift)

    cast = rng.normal(0, style.color_jitter, size=(n, 1, 1, 3)).astype(np.float32)
    img = img + cast + rng.normal(0, style.noise, size=img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def pretraining_pairs(num: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """``num`` (image, caption) pairs in the clean pretraining style over all colours and shapes."""
    rng = np.random.default_rng([seed, 0xC11])
    color_ids = rng.integers(0, len(COLORS), size=num)
    shape_ids = rng.integers(0, len(SHAPES), size=num)
    images = render(color_ids, shape_ids, PRETRAIN_STYLE, rng)
    colors, shapes = list(COLORS), list(SHAPES)
    templates = rng.integers(0, len(_CAPTIONS), size=num)
    sizes = rng.integers(0, len(SIZES), size=num)
    captions = [
        _CAPTIONS[t].format(color=colors[c], shape=shapes[s], size=SIZES[z])
        for t, c, s, z in zip(templates, color_ids, shape_ids, sizes)
    ]
    return images, captions


def downstream_split(per_class: int, seed: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of the 100-class downstream dataset, from a stream disjoint from pretraining."""
    stream = {"train": 1, "test": 2}[split]
    rng = np.random.default_rng([seed, 0xD0, stream])
    labels = np.repeat(np.arange(len(DEMO_COLORS) * len(DEMO_SHAPES)), per_class)
    images = render(labels // len(DEMO_SHAPES), labels % len(DEMO_SHAPES), DOWNSTREAM_STYLE, rng)
    return images, labels


def write_image_folder(root: str | Path, train_per_class: int = 60, test_per_class: int = 30,
                       seed: int = 0) -> Path:
    """Write the downstream dataset as an ImageFolder tree of PNGs: root/{train,test}/<class>/<n>.png.

    This is the on-disk layout a user's own dataset has; the pipeline reads it with the same
    ImageFolder loader. Written to a temporary folder and renamed, so a crash leaves nothing half-made.
    """
    import os
    import shutil
    import tempfile

    from PIL import Image

    root = Path(root)
    if (root / "train").is_dir() and (root / "test").is_dir():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo_world_", dir=root.parent))
    try:
        names = demo_classnames()
        for split, per_class in (("train", train_per_class), ("test", test_per_class)):
            images, labels = downstream_split(per_class, seed, split)
            counters = np.zeros(len(names), dtype=int)
            for img, lab in zip(images, labels):
                folder = tmp / split / names[lab].replace(" ", "_")
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(folder / f"{counters[lab]:04d}.png")
                counters[lab] += 1
        os.replace(tmp, root) if not root.exists() else shutil.copytree(tmp, root, dirs_exist_ok=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def overlap_check(a: np.ndarray, b: np.ndarray) -> int:
    """Number of images of ``a`` that also occur byte-for-byte in ``b`` (should be 0)."""
    hashes = {img.tobytes() for img in b}
    return sum(img.tobytes() in hashes for img in a)


__all__: Sequence[str] = (
    "COLORS", "SHAPES", "DEMO_COLORS", "DEMO_SHAPES", "DEMO_TEMPLATES", "demo_classnames", "render",
    "pretraining_pairs", "downstream_split", "write_image_folder", "overlap_check",
)
