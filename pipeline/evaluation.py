"""Task-agnostic evaluation: top-1 over all classes of the dataset, then per-task accuracies.

One forward pass over the test set per model gives every entry of its accuracy-matrix row,
because the prediction is task-agnostic and only the grouping of samples differs per task.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from pipeline.models import ImageClassifier


@torch.no_grad()
def predict(model: ImageClassifier, batches: Iterable, head: torch.Tensor,
            device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Top-1 predictions over all rows of ``head`` and the true labels, for every test sample."""
    device = torch.device(device)
    model.to(device).eval()
    head = head.to(device)
    preds, labels = [], []
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    for images, target in batches:
        with autocast:
            logits = model(images.to(device, non_blocking=True), head)
        preds.append(logits.argmax(dim=1).cpu())
        labels.append(torch.as_tensor(target))
    return torch.cat(preds).numpy(), torch.cat(labels).numpy()


def accuracy(preds: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent (NaN for an empty set)."""
    if len(labels) == 0:
        return float("nan")
    return float((preds == labels).mean() * 100.0)
