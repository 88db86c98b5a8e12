"""Task vectors as the merges take them: the type, the checks every merge makes on its inputs,
chunked iteration, and the two operations on one vector (rescale it, apply it to weights).

A task vector is ``dict[str, torch.Tensor]`` keyed by parameter name (floating entries only).
Every merge works key by key; the ones that combine T vectors element-wise accept
``chunk_numel``: the flattened tensors are processed in slices of that many entries, so the
temporaries grow with the slice, not with T x model size. Methods that stack the T tensors pick a
slice of about 2M stacked entries themselves when ``chunk_numel`` is None (``_stack_chunk``).
Results never depend on the chunk size. Inputs are only read, one slice at a time, so they may
be memory-mapped.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence

import torch

TaskVector = dict[str, torch.Tensor]


# --------------------------------------------------------------------------------------------
# validation and iteration helpers


def _check_chunk(chunk_numel: int | None) -> None:
    if chunk_numel is not None and (not isinstance(chunk_numel, int) or chunk_numel < 1):
        raise ValueError(f"chunk_numel must be a positive int or None, got {chunk_numel!r}")


def _slices(numel: int, chunk_numel: int | None) -> Iterator[slice]:
    if chunk_numel is None or chunk_numel >= numel:
        yield slice(0, numel)
        return
    for start in range(0, numel, chunk_numel):
        yield slice(start, min(start + chunk_numel, numel))


def _flat(t: torch.Tensor) -> torch.Tensor:
    # A view when contiguous; a copy only for non-contiguous inputs.
    return t.detach().reshape(-1)


def _check_floating(key: str, t: object) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"task vector entry {key!r} is not a torch.Tensor (got {type(t).__name__})")
    if not t.is_floating_point():
        raise ValueError(f"task vector entry {key!r} has non-floating dtype {t.dtype}")


def _check_compatible(ref: Mapping[str, torch.Tensor], tv: Mapping[str, torch.Tensor], idx: int) -> None:
    missing = [k for k in ref if k not in tv]
    if missing:
        raise ValueError(f"task vector {idx} lacks key {missing[0]!r}")
    extra = [k for k in tv if k not in ref]
    if extra:
        raise ValueError(f"task vector {idx} has unexpected key {extra[0]!r}")
    for key, t in tv.items():
        _check_floating(key, t)
        r = ref[key]
        if tuple(t.shape) != tuple(r.shape):
            raise ValueError(
                f"shape mismatch for key {key!r}: task vector {idx} has {tuple(t.shape)}, "
                f"expected {tuple(r.shape)}"
            )
        if t.dtype != r.dtype:
            raise ValueError(
                f"dtype mismatch for key {key!r}: task vector {idx} has {t.dtype}, expected {r.dtype}"
            )


def _validate(tvs: Sequence[Mapping[str, torch.Tensor]]) -> list[str]:
    """Check that tvs is a non-empty list of compatible task vectors; return the key order."""
    if isinstance(tvs, Mapping):
        raise ValueError("expected a sequence of task vectors, got a single mapping")
    if len(tvs) == 0:
        raise ValueError("need at least one task vector")
    ref = tvs[0]
    if not isinstance(ref, Mapping):
        raise ValueError(f"task vector 0 is not a mapping (got {type(ref).__name__})")
    for key, t in ref.items():
        _check_floating(key, t)
    for i, tv in enumerate(tvs[1:], start=1):
        if not isinstance(tv, Mapping):
            raise ValueError(f"task vector {i} is not a mapping (got {type(tv).__name__})")
        _check_compatible(ref, tv, i)
    return list(ref.keys())


def _as_list(tvs: Sequence[Mapping[str, torch.Tensor]]) -> list[Mapping[str, torch.Tensor]]:
    if isinstance(tvs, Mapping):
        raise ValueError("expected a sequence of task vectors, got a single mapping")
    return list(tvs)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half-precision inputs are accumulated in float32; float32/64 stay as they are.
    return torch.promote_types(dtype, torch.float32)


# Methods that stack T tensors (T x chunk temporaries) use this many stacked entries per step when
# no chunk_numel is given: 8 MiB of float32, so their memory does not grow with T x tensor size
# and the stack stays cache-sized.
_STACK_BUDGET = 1 << 21
_STACK_MIN_CHUNK = 1 << 12  # below this, per-op overhead dominates


def _stack_chunk(chunk_numel: int | None, n_tasks: int) -> int:
    if chunk_numel is not None:
        return chunk_numel
    return max(_STACK_MIN_CHUNK, _STACK_BUDGET // max(1, n_tasks))


# --------------------------------------------------------------------------------------------
# one task vector: rescale it, apply it to weights


@torch.no_grad()
def rescale_to_norm(tv: Mapping[str, torch.Tensor], norm: float) -> TaskVector:
    """Scale ``tv`` so that its global L2 norm (over all entries) equals ``norm``."""
    if not math.isfinite(norm) or norm < 0:
        raise ValueError(f"norm must be finite and >= 0, got {norm!r}")
    for key, t in tv.items():
        _check_floating(key, t)
    sq = sum(float(t.detach().double().pow(2).sum()) for t in tv.values())
    current = math.sqrt(sq)
    if current == 0.0:
        raise ValueError("cannot rescale a zero task vector")
    factor = norm / current
    return {k: t.detach() * factor for k, t in tv.items()}


@torch.no_grad()
def apply_task_vector(
    theta0: Mapping[str, torch.Tensor], tau: Mapping[str, torch.Tensor], lam: float
) -> dict[str, torch.Tensor]:
    """New state dict ``theta0 + lam * tau`` for keys in ``tau``; theta0's own tensors elsewhere.

    Results keep theta0's dtype. Raises ValueError naming the key if a tau key is missing from
    theta0 or shapes differ.
    """
    lam = float(lam)
    if not math.isfinite(lam):
        raise ValueError(f"lam must be finite, got {lam!r}")
    for key, t in tau.items():
        if key not in theta0:
            raise ValueError(f"task vector key {key!r} is not in theta0")
        _check_floating(key, t)
        base = theta0[key]
        if not isinstance(base, torch.Tensor) or not base.is_floating_point():
            raise ValueError(f"theta0 entry {key!r} is not a floating tensor")
        if tuple(base.shape) != tuple(t.shape):
            raise ValueError(
                f"shape mismatch for key {key!r}: theta0 {tuple(base.shape)} vs tau {tuple(t.shape)}"
            )
    out: dict[str, torch.Tensor] = {}
    for key, base in theta0.items():
        if key in tau:
            b = base.detach()
            acc = _acc_dtype(torch.promote_types(b.dtype, tau[key].dtype))
            out[key] = b.to(acc).add(tau[key].detach().to(acc), alpha=lam).to(b.dtype)
        else:
            out[key] = base
    return out
