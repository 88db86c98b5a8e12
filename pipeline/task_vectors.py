"""Task vectors tau = theta - theta_0: the math only.

Reading and writing weights and task vectors (local paths or URIs), the checks on weights read
and the lazy local view of a file are ``pipeline.storage``'s (``write_tensors``,
``read_tensors``, ``open_tensors``). Only safetensors are read for weights: nothing
user-supplied is ever unpickled.
"""

from __future__ import annotations

from typing import Mapping

import torch

StateDict = dict[str, torch.Tensor]


def task_vector(theta: Mapping[str, torch.Tensor], theta0: Mapping[str, torch.Tensor]) -> StateDict:
    """tau = theta - theta_0 over the floating-point tensors, naming a mismatched tensor."""
    out: StateDict = {}
    for key, base in theta0.items():
        if not torch.is_floating_point(base):
            continue
        if key not in theta:
            raise KeyError(f"fine-tuned weights lack tensor {key!r}")
        if theta[key].shape != base.shape:
            raise ValueError(f"tensor {key!r}: shape {tuple(theta[key].shape)} != {tuple(base.shape)}")
        out[key] = theta[key].detach().float() - base.detach().float()
    return out

