"""Task-agnostic evaluation: top-1 over all classes of the dataset, then per-task accuracies.

One forward pass over the test set per model gives every entry of its accuracy-matrix row,
because the prediction is task-agnostic and only the grouping of samples differs per task.
``Evaluator`` does that for any image-tower weights of a scenario; ``EvalData`` is what it reads,
to ship to other processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

import numpy as np
import torch

from pipeline.models import ImageClassifier, load_image_encoder_state

if TYPE_CHECKING:  # (the scenario module loads the data stack: not needed to evaluate from EvalData)
    from pipeline.scenario import Scenario


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


@dataclass
class EvalData:
    """What an ``Evaluator`` reads, without the scenario's training data or the dataset files:
    built once in one Ray task (``pipeline.orchestration.evaluate.put_eval_data``) and shipped
    through Ray's object store, so an evaluation worker or Tune trial does not decode the dataset
    and load the backbone again."""

    model: torch.nn.Module                   # ImageClassifier over θ0
    theta0: dict[str, torch.Tensor]
    head: torch.Tensor
    images: torch.Tensor                     # decoded, eval-transformed test images (test-loader order)
    labels: torch.Tensor
    groups: list[np.ndarray]                 # positions of each task's test samples
    task_classes: list[list[int]]
    multi_dataset: bool
    batch_size: int


class Evaluator:
    """Evaluation of image-tower weights on a scenario's test set, held in memory when the
    scenario's images are (else read from disk on every call).

    Task-agnostic over all classes, except in a multi-dataset scenario, where each dataset's
    test samples are classified with its own head and the overall figure is the datasets' mean.
    """

    def __init__(self, scn: "Scenario | None", device: str | torch.device = "cpu", *,
                 data: EvalData | None = None) -> None:
        self.scn = scn
        self.device = torch.device(device)
        self.images = self.labels = self.loader = None
        if data is not None:  # (Evaluator.from_data)
            self.model, self.theta0, self.head = data.model, data.theta0, data.head
            self.images, self.labels, self.groups = data.images, data.labels, data.groups
            self.task_classes, self.multi_dataset, self.batch_size = (data.task_classes, data.multi_dataset,
                                                                      data.batch_size)
            return
        assert scn is not None
        self.model, self.theta0, self.head = scn.classifier(), scn.theta0, scn.head
        self.task_classes, self.multi_dataset, self.batch_size = (scn.task_classes, scn.multi_dataset,
                                                                  scn.cfg.eval_batch_size)
        held = scn.test_in_memory  # (the train split may stay on disk: an evaluator reads only the test one)
        self.loader = scn.test_loader(scn.cfg.eval_batch_size, 0 if held else scn.cfg.finetune.loader_workers)
        if held:  # decoded once, then every evaluation is forward passes only
            xs, ys = zip(*self.loader)
            self.images, self.labels = torch.cat(xs), torch.cat([torch.as_tensor(y) for y in ys])
        self.groups = scn.test_eval_groups()

    @classmethod
    def from_data(cls, data: EvalData, device: str | torch.device = "cpu") -> "Evaluator":
        return cls(None, device, data=data)

    def data(self) -> EvalData | None:
        """This evaluator's inputs to ship to other processes (None: its images are read from disk)."""
        if self.images is None:
            return None
        load_image_encoder_state(self.model, self.theta0)  # (whatever it evaluated last: it travels as the model over θ0)
        return EvalData(self.model, self.theta0, self.head, self.images, self.labels, self.groups,
                        self.task_classes, self.multi_dataset, self.batch_size)

    def _batches(self, positions: np.ndarray | None = None):
        """Test batches (of ``positions`` in test-loader order, else all), from memory or disk."""
        bs = self.batch_size
        if self.images is not None:
            images, labels = self.images, self.labels
            if positions is not None:
                idx = torch.as_tensor(positions)
                images, labels = images[idx], labels[idx]
            return ((images[i:i + bs], labels[i:i + bs]) for i in range(0, len(labels), bs))
        if positions is None:
            return self.loader
        return torch.utils.data.DataLoader(torch.utils.data.Subset(self.loader.dataset, positions.tolist()),
                                           batch_size=bs, shuffle=False, num_workers=self.loader.num_workers)

    def __call__(self, state: dict[str, torch.Tensor]) -> tuple[float, list[float]]:
        """(accuracy over the whole test set, accuracy per task), in percent."""
        load_image_encoder_state(self.model, state)
        if self.multi_dataset:
            per_task = []
            for t, group in enumerate(self.groups):
                # each dataset's images classified over its own head rows only
                classes = np.asarray(self.task_classes[t])
                preds, labels = predict(self.model, self._batches(group), self.head[torch.as_tensor(classes)],
                                       self.device)
                per_task.append(accuracy(classes[preds], labels))
            return float(np.mean(per_task)), per_task
        preds, labels = predict(self.model, self._batches(), self.head, self.device)
        per_task = [accuracy(preds[g], labels[g]) for g in self.groups]
        return accuracy(preds, labels), per_task
