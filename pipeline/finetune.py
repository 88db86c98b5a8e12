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
    precision: str = "fp32"        # fp32 (the official code) | bf16 | fp16 autocast | auto (bf16 on GPU)
    micro_batch_size: int = 0      # samples per forward/backward; 0: the whole part, halved on GPU OOM


@dataclass
class LwF:
    """Learning without Forgetting: distil the previous model's outputs on the old classes."""

    teacher: nn.Module
    old_head: torch.Tensor
    lam: float = 0.3
    temperature: float = 2.0

    def penalty(self, model: ImageClassifier, images: torch.Tensor,
                features: torch.Tensor | None = None) -> torch.Tensor:
        """``features``: the student's features of ``images`` where the caller has them already
        (the training step computes them once for the task loss and this: one encoder pass and
        one backward instead of two)."""
        with torch.no_grad():
            target = F.softmax(self.teacher(images, self.old_head) / self.temperature, dim=1)
        feats = model.features(images) if features is None else features
        student = F.log_softmax(model.logits(feats, self.old_head) / self.temperature, dim=1)
        return self.lam * -(target * student).sum(1).mean()


@dataclass
class EWC:
    """Elastic weight consolidation with a diagonal Fisher accumulated over tasks.

    ``fisher_mode`` picks how ``consolidate`` computes and combines the Fisher:

    - ``"empirical"`` (the textbook diagonal): per batch, the squared gradient of the mean
      cross-entropy at the dataset's labels, gradients cleared between batches, averaged over the
      batches; summed over tasks.
    - ``"reference"``: the official MagMax code's ``compute_fisher_matrix_diag`` (ewc.py), which
      the paper's λ = 1e6 was tuned under: labels are the model's own argmax, gradients are *not*
      cleared (batch b adds the square of the running sum of the gradients so far, starting from
      whatever ``.grad`` the parameters hold -- right after ``train_task``, its last step's
      clipped gradient, as in the official loop), each batch weighted by its size, the sum divided
      by ``(N // B + 1) * B`` (N samples seen, B the loader's batch size), the model in train
      mode; across tasks F ← ½F + ½F_task, starting from 0 (so one task leaves ½F_task).

    The penalty is the same in both: ½ λ Σ F (θ - θ*)², θ* the weights after the last task.
    """

    lam: float = 1e6
    fisher_mode: str = "empirical"
    fisher: dict[str, torch.Tensor] = field(default_factory=dict)
    anchor: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.fisher_mode not in ("empirical", "reference"):
            raise ValueError(f"EWC fisher_mode: {self.fisher_mode!r} is not empirical or reference")

    def penalty(self, model: ImageClassifier, images: torch.Tensor) -> torch.Tensor:
        if not self.fisher:
            return images.new_zeros(())
        total = images.new_zeros(())
        for name, p in model.visual.named_parameters():
            if name in self.fisher:
                total = total + (self.fisher[name] * (p - self.anchor[name]) ** 2).sum()
        return 0.5 * self.lam * total

    def consolidate(self, model: ImageClassifier, batches: Iterable, head: torch.Tensor,
                    device: torch.device, max_batches: int = 0, *, batch_size: int = 0,
                    micro_batch_size: int = 0) -> None:
        """Fold this task's Fisher into ``self.fisher`` (see the class) and re-anchor.

        ``batch_size``: the loader's batch size B of the reference normalisation (0: the first
        batch's size); ``max_batches`` (0: all) stops early, N then counts the samples used.
        ``micro_batch_size``: samples per forward/backward, as in training (0: the whole batch,
        halved on a CUDA out-of-memory error); a batch's gradient is the same either way.
        """
        params = {n: p for n, p in model.visual.named_parameters() if p.requires_grad}
        grads = _BatchGradients(model, list(params.values()), head, device, micro_batch_size)
        if self.fisher_mode == "reference":
            fisher = self._reference_fisher(model, params, batches, grads, max_batches, batch_size)
            for n in fisher:
                old = self.fisher[n] if n in self.fisher else torch.zeros_like(fisher[n])
                self.fisher[n] = 0.5 * old + (1 - 0.5) * fisher[n]
        else:
            fisher = self._empirical_fisher(model, params, batches, grads, max_batches)
            for n in fisher:
                self.fisher[n] = self.fisher[n] + fisher[n] if n in self.fisher else fisher[n]
        self.anchor = {n: p.detach().clone() for n, p in params.items()}

    def restore(self, model: ImageClassifier, fisher: dict[str, torch.Tensor]) -> None:
        """Continue after the task whose weights ``model`` holds, with the Fisher saved after it
        (``consolidate``'s result, as written by the chain): what an uninterrupted chain holds."""
        self.fisher = dict(fisher)
        self.anchor = {n: p.detach().clone() for n, p in model.visual.named_parameters() if p.requires_grad}

    @staticmethod
    def _empirical_fisher(model: ImageClassifier, params: dict[str, nn.Parameter], batches: Iterable,
                          grads: _BatchGradients, max_batches: int) -> dict[str, torch.Tensor]:
        fisher = {n: torch.zeros_like(p) for n, p in params.items()}
        count = 0
        model.eval()
        for i, (images, labels) in enumerate(batches):
            if max_batches and i >= max_batches:
                break
            for n, g in zip(params, grads(images, labels)):
                if g is not None:
                    fisher[n] += g ** 2
            count += 1
        model.zero_grad(set_to_none=True)
        for n in fisher:
            fisher[n] /= max(count, 1)
        return fisher

    @staticmethod
    def _reference_fisher(model: ImageClassifier, params: dict[str, nn.Parameter], batches: Iterable,
                          grads: _BatchGradients, max_batches: int, batch_size: int) -> dict[str, torch.Tensor]:
        """The official loop, operation for operation (fp32, no autocast: as the official code)."""
        fisher = {n: torch.zeros_like(p) for n, p in params.items()}
        seen = 0
        model.train()  # as the official code (CLIP's towers have no dropout: same outputs as eval)
        for i, (images, _labels) in enumerate(batches):
            if max_batches and i >= max_batches:
                break
            # labels: the model's own argmax; no zero_grad: the official loop leaves it commented
            # out, so each batch's gradient adds to what .grad holds (as backward() would)
            for (n, p), g in zip(params.items(), grads(images, None)):
                if g is None:
                    continue
                if p.grad is None:
                    p.grad = g
                else:
                    p.grad.add_(g)
            for n, p in params.items():
                if p.grad is not None:
                    fisher[n] += p.grad.detach().pow(2) * len(images)
            seen += len(images)
            batch_size = batch_size or len(images)
        # the official loop's later use starts with optimizer.zero_grad(): dropping them here is equal
        model.zero_grad(set_to_none=True)
        model.eval()
        if seen == 0:
            return fisher
        n_samples = (seen // batch_size + 1) * batch_size
        return {n: f / n_samples for n, f in fisher.items()}


class _BatchGradients:
    """The gradient of one batch's mean cross-entropy, computed in micro batches.

    ``labels`` None: the model's own argmax (the reference Fisher). A micro batch as large as the
    batch is one ``cross_entropy`` mean, as the official loop computes it; smaller ones sum
    ``Σ CE_i / n`` over the parts. With ``micro`` 0 the whole batch is tried first and halved on a
    CUDA out-of-memory error: the partial gradient is dropped and the batch redone, so a retry
    never adds to ``.grad`` twice (the gradients are returned, not accumulated into ``.grad``).
    """

    def __init__(self, model: ImageClassifier, params: list[nn.Parameter], head: torch.Tensor,
                 device: torch.device, micro: int) -> None:
        self.model, self.params, self.device = model.to(device), params, device
        self.head = head.to(device)
        self.auto, self.micro = micro <= 0, max(micro, 0)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor | None) -> list[torch.Tensor | None]:
        while True:
            try:
                return self._gradient(images, labels, self.micro or len(images))
            except torch.cuda.OutOfMemoryError:
                if not self.auto or (self.micro or len(images)) <= 1:
                    raise
            torch.cuda.empty_cache()
            self.micro = max(1, (self.micro or len(images)) // 2)

    def _gradient(self, images: torch.Tensor, labels: torch.Tensor | None, micro: int) -> list[torch.Tensor | None]:
        n = len(images)
        total: list[torch.Tensor | None] = [None] * len(self.params)
        for start in range(0, n, micro):
            x = images[start:start + micro].to(self.device)
            outputs = self.model(x, self.head)
            y = outputs.argmax(1) if labels is None else torch.as_tensor(labels[start:start + micro]).to(self.device)
            loss = F.cross_entropy(outputs, y) if micro >= n else F.cross_entropy(outputs, y, reduction="sum") / n
            parts = torch.autograd.grad(loss, self.params, allow_unused=True)
            for j, g in enumerate(parts):
                if g is not None:
                    total[j] = g if total[j] is None else total[j] + g
        return total


def _autocast(device: torch.device, precision: str):
    """The forward's numerics: fp32 (no autocast), or bf16/fp16 autocast; "auto" is bf16 on GPU."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def world_info() -> tuple[int, int]:
    """(rank, world size) of the torch.distributed group Ray Train set up, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _broadcast_weights(params: Sequence[torch.Tensor]) -> None:
    """Every worker starts the task from rank 0's weights (they load the same files anyway)."""
    import torch.distributed as dist

    for p in params:
        dist.broadcast(p.data, 0)


def _allreduce_grads(params: Sequence[torch.Tensor], bucket_bytes: int = 32 << 20) -> None:
    """Sum the gradients over the workers, in flat buckets (one collective per ~32 MB).

    Each worker's gradient is already its share of the global-batch mean, so the sum is the
    gradient one worker would compute on the whole batch. A parameter no worker reached keeps
    ``grad=None`` (AdamW skips it, as on one worker); one a worker did not reach counts as zero there.
    """
    import torch.distributed as dist

    # on the parameters' device: NCCL reduces device tensors only
    reached = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=params[0].device)
    dist.all_reduce(reached, op=dist.ReduceOp.MAX)
    live = []
    for p, r in zip(params, reached.tolist()):
        if not r:
            p.grad = None
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        live.append(p)
    bucket: list[torch.Tensor] = []
    size = 0
    for i, p in enumerate(live):
        bucket.append(p)
        size += p.numel() * p.element_size()
        last = i + 1 == len(live)
        if size >= bucket_bytes or last or live[i + 1].grad.dtype != p.grad.dtype \
                or live[i + 1].grad.device != p.grad.device:
            flat = torch.cat([q.grad.reshape(-1) for q in bucket])
            dist.all_reduce(flat)
            offset = 0
            for q in bucket:
                q.grad.copy_(flat[offset:offset + q.numel()].view_as(q.grad))
                offset += q.numel()
            bucket, size = [], 0


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

    Every item of ``loader`` is one optimizer step: ``(images, labels)``, or this worker's part of
    a global batch (``pipeline.scenario.Part``, which carries the global batch's size; its
    images are None when the part is empty). The step's loss is the mean over the *global* batch:
    each worker sums its per-sample losses and divides by the global size, in micro batches of
    ``recipe.micro_batch_size`` whose gradients accumulate, and under torch.distributed the
    gradients are summed over the workers before clipping and one optimizer step. So neither the
    worker count nor the micro batch changes the weights beyond float rounding. LwF's penalty (a
    mean over samples) is weighted per sample like the loss; EWC's (one per model) is added once
    per step, by rank 0.

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
    rank, world = world_info()
    params = [p for p in model.visual.parameters() if p.requires_grad]
    if world > 1:
        _broadcast_weights(params)
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
    # An explicit micro batch is used as given. 0 starts with the whole part and halves it on a
    # CUDA out-of-memory error, redoing the step (the result does not depend on the micro batch),
    # then keeps it for the task; on a CPU (no such error) the whole part is one micro batch.
    auto_micro = recipe.micro_batch_size <= 0
    micro = recipe.micro_batch_size if recipe.micro_batch_size > 0 else 0
    step_penalty = regularizer is not None and not isinstance(regularizer, LwF) and rank == 0
    last = float("nan")
    for epoch in range(start_epoch, recipe.epochs):
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        model.train()
        running = torch.zeros((), device=device)
        seen = 0
        for batch in loader:
            images, labels = batch
            global_size = getattr(batch, "global_size", None) or len(labels)
            optimizer.zero_grad(set_to_none=True)
            while True:
                try:
                    loss = _accumulate(model, images, labels, head, label_map, recipe, device, global_size,
                                       micro or (len(labels) if labels is not None else 1),
                                       regularizer, step_penalty)
                    break
                except torch.cuda.OutOfMemoryError:
                    if not auto_micro or (micro or len(labels)) <= 1:
                        raise
                # outside the except block: the failed step's activations are released
                optimizer.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                micro = max(1, (micro or len(labels)) // 2)
            if world > 1:
                _allreduce_grads(params)
            if recipe.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, recipe.grad_clip)
            optimizer.step()
            scheduler.step()
            running += loss
            seen += 1
        if world > 1:
            import torch.distributed as dist

            dist.all_reduce(running)  # the global batches' losses: every worker sees the same figure
        last = float(running.item()) / max(seen, 1)  # one sync per epoch
        if not math.isfinite(last):
            raise NonFiniteLossError(f"non-finite training loss ({last}) in epoch {epoch + 1}")
        if on_epoch_end is not None:
            on_epoch_end(epoch, last)
        if save_state is not None and epoch + 1 < recipe.epochs:
            save_state(epoch + 1, optimizer)
    model.eval()
    return {"loss": last, "epochs": float(recipe.epochs), "micro_batch_size": float(micro)}


def _accumulate(model: ImageClassifier, images: torch.Tensor | None, labels: torch.Tensor | None,
                head: torch.Tensor, label_map: torch.Tensor | None, recipe: Recipe, device: torch.device,
                global_size: int, micro: int, regularizer: LwF | EWC | None, step_penalty: bool) -> torch.Tensor:
    """Backpropagate this worker's share of one step's loss; returns that share (detached).

    The share is Σ_i (CE_i + LwF_i) / global_size over the part's samples, plus, if
    ``step_penalty``, the regularizer's per-step penalty (EWC) once.
    """
    share = torch.zeros((), device=device)
    n = 0 if labels is None else len(labels)
    for start in range(0, n, micro):
        x = images[start:start + micro].to(device, non_blocking=True)
        y = torch.as_tensor(labels[start:start + micro]).to(device, non_blocking=True)
        if label_map is not None:
            y = label_map[y]
        with _autocast(device, recipe.precision):
            feats = model.features(x)
            loss = F.cross_entropy(model.logits(feats, head), y, reduction="sum") / global_size
            if isinstance(regularizer, LwF):
                loss = loss + regularizer.penalty(model, x, feats) * (len(y) / global_size)
            if step_penalty and start == 0:
                loss = loss + regularizer.penalty(model, x)
        loss.backward()
        share += loss.detach().float()
    return share


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
