"""The checkpoints of one fine-tuning unit: a content-addressed folder per unit.

A unit's folder (``<storage>/checkpoints/<key>``) holds one ``task_NNN.safetensors`` per
finished task and, while a task trains, ``task_NNN.epoch.safetensors``: the weights, optimizer
moments and epoch counter after the last finished epoch, so a restarted worker resumes
mid-task instead of from the task's start. An EWC unit also keeps ``task_NNN.fisher.safetensors``
of its last finished task: the Fisher the next task's penalty uses, which a resumed chain cannot
rebuild exactly (the official Fisher starts from the last training step's gradient). A damaged
file is moved aside and its task computed again (``integrity.discard``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

from pipeline.storage.files import delete, exists
from pipeline.storage.integrity import DamagedFileError, discard
from pipeline.storage.paths import join, shown
from pipeline.storage.tensors import check_tensors, check_tensors_file, read_metadata, read_tensors, write_tensors

if TYPE_CHECKING:
    import torch

    from pipeline.storage.tensors import StateDict


@dataclass(frozen=True)
class TrainState:
    """What a task's training needs to go on after ``epoch`` finished epochs."""

    epoch: int
    weights: StateDict
    optimizer: dict  # torch optimizer ``state_dict()``


class CheckpointStore:
    """The checkpoints of one fine-tuning unit (``folder``: a local path or a URI)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = str(folder)

    def task_file(self, task: int) -> str:
        return join(self.folder, f"task_{task:03d}.safetensors")

    def epoch_file(self, task: int) -> str:
        return join(self.folder, f"task_{task:03d}.epoch.safetensors")

    def fisher_file(self, task: int) -> str:
        return join(self.folder, f"task_{task:03d}.fisher.safetensors")

    # -- finished tasks ------------------------------------------------------------------------

    def has(self, task: int) -> bool:
        """Whether the task's checkpoint is there and whole, judged cheaply (header, and file size
        against it: what the plan asks of hundreds of files); a truncated or unreadable one is
        moved aside and said, and does not count. Its content is checked against its digest
        where it is read (``load``, ``verify``)."""
        return self._whole(task, full=False)

    def verify(self, task: int) -> bool:
        """``has``, and every byte against the checkpoint's digest (one pass; once per process)."""
        return self._whole(task, full=True)

    def _whole(self, task: int, *, full: bool) -> bool:
        path = self.task_file(task)
        if not exists(path):
            return False
        try:
            check_tensors_file(path, full=full)
        except DamagedFileError as err:
            discard(err, path, "its task will be fine-tuned again")
            return False
        return True

    def save(self, task: int, weights: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> str:
        """Write a finished task's weights, then drop its epoch state (no longer needed)."""
        path = self.task_file(task)
        write_tensors(weights, path, metadata)
        delete(self.epoch_file(task))
        return path

    def load(self, task: int, expected: Mapping[str, torch.Tensor] | None = None) -> StateDict:
        """The task's weights, checked against their digest; a damaged file is moved aside (so
        that the next look, e.g. a restarted Train worker's, fine-tunes it again) and raised."""
        path = self.task_file(task)
        try:
            return read_tensors(path, expected)
        except DamagedFileError as err:
            discard(err, path, "its task will be fine-tuned again")
            raise

    def metadata(self, task: int) -> dict[str, str]:
        return read_metadata(self.task_file(task))

    # -- EWC's Fisher after a task -------------------------------------------------------------

    def save_fisher(self, task: int, fisher: Mapping[str, torch.Tensor]) -> None:
        """Keep the Fisher after ``task`` (the chain writes it before the task's checkpoint, and
        drops the previous task's only after, so the last finished task always has one)."""
        write_tensors(fisher, self.fisher_file(task), {"task": str(task)})

    def load_fisher(self, task: int) -> StateDict | None:
        """The Fisher saved after ``task``, or None when there is none or it is damaged (moved
        aside and said: the chain then rebuilds it from the task's weights)."""
        path = self.fisher_file(task)
        if not exists(path):
            return None
        try:
            return read_tensors(path)
        except DamagedFileError as err:
            discard(err, path, "its Fisher is computed again from the task's weights")
            return None

    def drop_fisher(self, task: int) -> None:
        delete(self.fisher_file(task))

    # -- mid-task state ------------------------------------------------------------------------

    def save_epoch(self, task: int, state: TrainState) -> None:
        # torch is imported on use: the plan and the results layers ask ``has`` without torch
        import torch

        tensors = {f"weights/{k}": v for k, v in state.weights.items()}
        groups = [dict(group, params=list(group["params"])) for group in state.optimizer["param_groups"]]
        for idx, slots in state.optimizer["state"].items():
            for name, value in slots.items():
                t = value if isinstance(value, torch.Tensor) else torch.tensor(value)
                tensors[f"optim/{idx}/{name}"] = t
        meta = {"epoch": str(state.epoch), "param_groups": json.dumps(groups)}
        write_tensors(tensors, self.epoch_file(task), meta)

    def load_epoch(self, task: int, expected: Mapping[str, torch.Tensor]) -> TrainState | None:
        """The saved mid-task state, or None when the task has none, or when it is damaged (moved
        aside and said: the task restarts from its first epoch, never from a wrong state)."""
        path = self.epoch_file(task)
        if not exists(path):
            return None
        try:
            tensors = read_tensors(path)
            meta = read_metadata(path)
        except DamagedFileError as err:
            discard(err, path, "its task restarts from its first epoch")
            return None
        weights = {k[len("weights/"):]: v for k, v in tensors.items() if k.startswith("weights/")}
        check_tensors(weights, expected, shown(path))
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim/"):
                _, idx, name = key.split("/", 2)
                state.setdefault(int(idx), {})[name] = value
        optimizer = {"state": state, "param_groups": json.loads(meta["param_groups"])}
        return TrainState(epoch=int(meta["epoch"]), weights=weights, optimizer=optimizer)
