"""Shared rules for the layer-wise merges in wudi.py, opcm.py and dop.py.

Which task-vector entries count as a linear layer's weight matrix, how open_clip's packed
attention input projection is split into its q/k/v matrices, the working dtype, and the
validation of running (one-vector-at-a-time) merges. Pure tensor code: no Ray, no files.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch

from pipeline.merging.vectors import _check_compatible, _check_floating

MatrixFilter = Callable[[str, torch.Tensor], bool]


def is_linear_weight(key: str, t: torch.Tensor) -> bool:
    """Default matrix rule: a 2-D entry that is not an embedding table.

    In an open_clip image tower the 2-D entries are the attention/MLP weights, ``proj`` and
    ``positional_embedding``; the last is a lookup table added to the tokens, not a linear map,
    so the layer-wise methods (written for linear layers) treat it like the other non-matrix
    entries, as FusionBench does with HF CLIP's ``position_embedding`` (an ``nn.Embedding``).
    """
    return t.dim() == 2 and "embedding" not in key


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half inputs (SVD and Adam need it), float32/64 as they are."""
    return torch.promote_types(dtype, torch.float32)


def row_blocks(key: str, shape: tuple[int, ...], split_qkv: bool) -> list[slice]:
    """Row slices of a weight matrix that are separate linear layers.

    open_clip packs the attention's q, k and v projections into one ``in_proj_weight`` of shape
    (3d, d); HF CLIP (on which FusionBench's OPCM/DOP run) has them as three ``nn.Linear``
    layers, each projected/optimised on its own. With ``split_qkv`` the packed matrix is handled
    as those three (d, d) blocks.
    """
    if split_qkv and key.endswith("in_proj_weight") and len(shape) == 2 and shape[0] == 3 * shape[1]:
        d = shape[1]
        return [slice(0, d), slice(d, 2 * d), slice(2 * d, 3 * d)]
    return [slice(0, shape[0])]


def check_filter(matrices: MatrixFilter | None) -> MatrixFilter:
    if matrices is None:
        return is_linear_weight
    if not callable(matrices):
        raise ValueError(f"matrices must be a callable (key, tensor) -> bool or None, got {matrices!r}")
    return matrices


def check_device(device: str | torch.device | None) -> torch.device | None:
    return None if device is None else torch.device(device)


def check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def check_fraction(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def check_positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def global_norm(tv: Mapping[str, torch.Tensor]) -> float:
    """L2 norm over every entry of a task vector, accumulated in float64."""
    return math.sqrt(sum(float(t.detach().double().pow(2).sum()) for t in tv.values()))


class RunningState:
    """Key order, shapes and dtypes of the first vector a running merge saw.

    Kept as meta tensors (no storage), so checking a later vector costs no memory.
    """

    def __init__(self) -> None:
        self.ref: dict[str, torch.Tensor] | None = None
        self.count = 0

    def check(self, tv: object) -> Mapping[str, torch.Tensor]:
        if not isinstance(tv, Mapping):
            raise ValueError(f"task vector is not a mapping (got {type(tv).__name__})")
        if self.ref is None:
            if len(tv) == 0:
                raise ValueError("task vector has no entries")
            for key, t in tv.items():
                _check_floating(key, t)
            self.ref = {k: torch.empty(t.shape, dtype=t.dtype, device="meta") for k, t in tv.items()}
        else:
            _check_compatible(self.ref, tv, self.count)
        return tv
