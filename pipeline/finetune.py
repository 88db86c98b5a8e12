"""One plain torch training loop: independent, sequential, joint, LwF and EWC are options of it.

The recipe is the paper's (AdamW, linear warmup then cosine, gradient clipping, a fresh optimizer
per task). During task t the head holds only task t's classes (labels remapped to 0..|C_t|-1);
the head is frozen and only the image tower trains. The loop syncs with the device once per
epoch (no ``.item()`` per step).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models import ImageClassifier


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/inf loss; the unit stops with this error."""


@dataclass(frozen=True)
class Recipe:
    lr: float = 1e-5
    weight_decay: float = 0.1
    epochs: int = 10
    warmup_steps: int = 500
    grad_clip: float = 1.0
    precision: str = "auto"


@dataclass
class LwF:
    """Learning without Forgetting: distil the previous model's outputs on the old classes."""

    teacher: nn.Module
    old_head: torch.Tensor
    lam: float = 0.3
    temperature: float = 2.0

    def penalty(self, model: ImageClassifier, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = F.softmax(self.teacher(images, self.old_head) / self.temperature, dim=1)
        student = F.log_softmax(model(images, self.old_head) / self.temperature, dim=1)
        return self.lam * -(target * student).sum(1).mean()


@dataclass
class EWC:
    """Elastic weight consolidation with a diagonal Fisher accumulated over tasks."""

    lam: float = 1e6
    fisher: dict[str, torch.Tensor] = field(default_factory=dict)
    anchor: dict[str, torch.Tensor] = field(default_factory=dict)

    def penalty(self, model: ImageClassifier, images: torch.Tensor) -> torch.Tensor:
        if not self.fisher:
            return images.new_zeros(())
        total = images.new_zeros(())
        for name, p in model.visual.named_parameters():
            if name in self.fisher:
                total = total + (self.fisher[name] * (p - self.anchor[name]) ** 2).sum()
        return 0.5 * self.lam * total

    def consolidate(self, model: ImageClassifier, batches: Iterable, head: torch.Tensor,
                    device: torch.device, max_batches: int = 0) -> None:
        """Add this task's Fisher (mean squared gradient of the log-likelihood) and re-anchor."""
        params = {n: p for n, p in model.visual.named_parameters() if p.requires_grad}
        fisher = {n: torch.zeros_like(p) for n, p in params.items()}
        count = 0
        model.eval()
        for i, (images, labels) in enumerate(batches):
            if max_batches and i >= max_batches:
                break
            images, labels = images.to(device), labels.to(device)
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(images, head), labels).backward()
            for n, p in params.items():
                if p.grad is not None:
                    fisher[n] += p.grad.detach() ** 2
            count += 1
        model.zero_grad(set_to_none=True)
        for n in fisher:
            fisher[n] /= max(count, 1)
            self.fisher[n] = self.fisher[n] + fisher[n] if n in self.fisher else fisher[n]
        self.anchor = {n: p.detach().clone() for n, p in params.items()}


def _autocast(device: torch.device, precision: str):
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def cosine_with_warmup(step: int, warmup: int, total: int) -> float:
    """Multiplier of the base lr: linear warmup, then cosine to zero."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train_task(
    model: ImageClassifier,
    loader: Iterable,
    head: torch.Tensor,
    recipe: Recipe,
    *,
    steps_per_epoch: int,
    device: torch.device | str = "cpu",
    regularizer: LwF | EWC | None = None,
    label_map: torch.Tensor | None = None,
    on_epoch_end=None,
    save_state: Callable[[int, torch.optim.Optimizer], None] | None = None,
    resume: tuple[int, dict] | None = None,
) -> dict[str, float]:
    """Fine-tune ``model.visual`` on one task; returns the mean loss of the last epoch.

    ``label_map`` maps dataset labels to rows of ``head`` (task-local labels).
    ``save_state(epochs_done, optimizer)`` is called after every epoch but the last, and
    ``resume=(epochs_done, optimizer_state)`` continues from such a state (the caller loads the
    weights): the learning-rate schedule and, through ``set_epoch`` on the loader, the data
    order of each epoch are functions of the epoch index, so a resumed task ends where an
    uninterrupted one would.
    """
    device = torch.device(device)
    model.to(device)
    head = head.to(device)
    label_map = label_map.to(device) if label_map is not None else None
    params = [p for p in model.visual.parameters() if p.requires_grad]
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay, fused=fused)
    start_epoch = 0
    if resume is not None:
        start_epoch, optimizer_state = resume
        optimizer.load_state_dict(optimizer_state)
    total = max(1, recipe.epochs * steps_per_epoch)
    offset = start_epoch * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_with_warmup(s + offset, recipe.warmup_steps, total))
    last = float("nan")
    for epoch in range(start_epoch, recipe.epochs):
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        model.train()
        running = torch.zeros((), device=device)
        seen = 0
        for images, labels in loader:
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            if label_map is not None:
                labels = label_map[labels]
            with _autocast(device, recipe.precision):
                loss = F.cross_entropy(model(images, head), labels)
                if regularizer is not None:
                    loss = loss + regularizer.penalty(model, images)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, recipe.grad_clip)
            optimizer.step()
            scheduler.step()
            running += loss.detach().float()
            seen += 1
        last = float(running.item()) / max(seen, 1)  # one sync per epoch
        if not math.isfinite(last):
            raise NonFiniteLossError(f"non-finite training loss ({last}) in epoch {epoch + 1}")
        if on_epoch_end is not None:
            on_epoch_end(epoch, last)
        if save_state is not None and epoch + 1 < recipe.epochs:
            save_state(epoch + 1, optimizer)
    model.eval()
    return {"loss": last, "epochs": float(recipe.epochs)}


def frozen_copy(model: ImageClassifier) -> ImageClassifier:
    """A frozen snapshot (the LwF teacher)."""
    teacher = copy.deepcopy(model)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def task_label_map(classes: Sequence[int], num_classes: int) -> torch.Tensor:
    """Dataset label -> row of the task head (-100, ignored, for labels outside the task)."""
    mapping = torch.full((num_classes,), -100, dtype=torch.long)
    mapping[torch.as_tensor(list(classes), dtype=torch.long)] = torch.arange(len(classes))
    return mapping
