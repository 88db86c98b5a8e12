"""The paper's simple baselines: task arithmetic (the sum), Avg (the mean, a model soup) and
RandMix (each element from one task vector drawn at random)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import torch

from pipeline.merging.vectors import (
    TaskVector, _acc_dtype, _as_list, _check_chunk, _flat, _slices, _stack_chunk, _validate,
)


@torch.no_grad()
def _sum(tvs: list[Mapping[str, torch.Tensor]], keys: list[str], chunk_numel: int | None) -> TaskVector:
    out: TaskVector = {}
    for key in keys:
        t0 = tvs[0][key].detach()
        acc = t0.to(_acc_dtype(t0.dtype), memory_format=torch.contiguous_format, copy=True)
        flat = acc.view(-1)
        for tv in tvs[1:]:
            src = _flat(tv[key])
            for sl in _slices(flat.numel(), chunk_numel):
                flat[sl].add_(src[sl])
        out[key] = acc
    return out


@torch.no_grad()
def task_arithmetic(
    tvs: Sequence[Mapping[str, torch.Tensor]], *, chunk_numel: int | None = None
) -> TaskVector:
    """The sum of the task vectors (Task Arithmetic); λ scales it when applied."""
    tvs = _as_list(tvs)
    keys = _validate(tvs)
    _check_chunk(chunk_numel)
    acc = _sum(tvs, keys, chunk_numel)
    return {k: acc[k].to(tvs[0][k].dtype) for k in keys}


@torch.no_grad()
def average(tvs: Sequence[Mapping[str, torch.Tensor]], *, chunk_numel: int | None = None) -> TaskVector:
    """Mean of the task vectors (Model Soup / Avg): ``task_arithmetic(tvs) / len(tvs)``."""
    tvs = _as_list(tvs)
    keys = _validate(tvs)
    _check_chunk(chunk_numel)
    acc = _sum(tvs, keys, chunk_numel)
    n = len(tvs)
    return {k: acc[k].div_(n).to(tvs[0][k].dtype) for k in keys}


def _key_seed(seed: int, key: str) -> int:
    # Stable across processes and Python versions (unlike hash()).
    digest = hashlib.sha256(f"{int(seed)}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@torch.no_grad()
def random_mix(
    tvs: Sequence[Mapping[str, torch.Tensor]], seed: int = 0, *, chunk_numel: int | None = None
) -> TaskVector:
    """RandMix: each element is taken from one task vector chosen uniformly at random.

    The choice is generated per tensor by a CPU ``torch.Generator`` seeded from ``(seed, key)``,
    so the result for one key depends only on the seed and that key (not on key order, device or
    chunk size) and is deterministic.
    """
    tvs = _as_list(tvs)
    keys = _validate(tvs)
    _check_chunk(chunk_numel)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    n = len(tvs)
    chunk = _stack_chunk(chunk_numel, n)
    out: TaskVector = {}
    for key in keys:
        merged = tvs[0][key].detach().clone(memory_format=torch.contiguous_format)
        flat = merged.view(-1)
        if n > 1:
            gen = torch.Generator(device="cpu")
            gen.manual_seed(_key_seed(seed, key))
            choice = torch.randint(0, n, (flat.numel(),), generator=gen).to(flat.device)
            srcs = [_flat(tv[key]) for tv in tvs]
            # one gather from a chunk-sized stack instead of T masked passes over the tensor
            for sl in _slices(flat.numel(), chunk):
                stack = torch.stack([s[sl] for s in srcs])
                flat[sl] = stack.gather(0, choice[sl].unsqueeze(0)).squeeze(0)
        out[key] = merged
    return out
