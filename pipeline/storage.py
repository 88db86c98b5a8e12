"""Storage for everything a run keeps, on a local folder or any pyarrow URI (s3://, gs://, file://).

Fine-tuned weights live in a content-addressed folder per unit (``CheckpointStore``).

A unit's folder (``<storage>/checkpoints/<key>``) holds one ``task_NNN.safetensors`` per
finished task and, while a task trains, ``task_NNN.epoch.safetensors``: the weights, optimizer
moments and epoch counter after the last finished epoch, so a restarted worker resumes
mid-task instead of from the task's start. Every file is safetensors (nothing is unpickled) and
appears whole or not at all: local writes go through a temp file and ``os.replace``; object
stores (``s3://``, ``gs://``) get a single upload of the finished bytes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import pyarrow.fs as pafs
import torch

from pipeline.task_vectors import CorruptCheckpointError, StateDict, check_tensors, save_tensors


def is_uri(path: str | os.PathLike) -> bool:
    return "://" in str(path)


def join(base: str, *parts: str) -> str:
    """Join path parts for a local folder or a URI alike."""
    if is_uri(base):
        return "/".join([base.rstrip("/"), *parts])
    return str(Path(base, *parts))


def _fs(path: str) -> tuple[pafs.FileSystem, str]:
    if is_uri(path):
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(path)


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

    # -- finished tasks ------------------------------------------------------------------------

    def has(self, task: int) -> bool:
        return exists(self.task_file(task))

    def save(self, task: int, weights: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> str:
        """Write a finished task's weights, then drop its epoch state (no longer needed)."""
        path = self.task_file(task)
        write_tensors(weights, path, metadata)
        delete(self.epoch_file(task))
        return path

    def load(self, task: int, expected: Mapping[str, torch.Tensor] | None = None) -> StateDict:
        return read_tensors(self.task_file(task), expected)

    def metadata(self, task: int) -> dict[str, str]:
        return read_metadata(self.task_file(task))

    # -- mid-task state ------------------------------------------------------------------------

    def save_epoch(self, task: int, state: TrainState) -> None:
        tensors = {f"weights/{k}": v for k, v in state.weights.items()}
        groups = [dict(group, params=list(group["params"])) for group in state.optimizer["param_groups"]]
        for idx, slots in state.optimizer["state"].items():
            for name, value in slots.items():
                t = value if isinstance(value, torch.Tensor) else torch.tensor(value)
                tensors[f"optim/{idx}/{name}"] = t
        meta = {"epoch": str(state.epoch), "param_groups": json.dumps(groups)}
        write_tensors(tensors, self.epoch_file(task), meta)

    def load_epoch(self, task: int, expected: Mapping[str, torch.Tensor]) -> TrainState | None:
        """The saved mid-task state, or None when the task has none (or it is unreadable)."""
        path = self.epoch_file(task)
        if not exists(path):
            return None
        try:
            tensors = read_tensors(path)
            meta = read_metadata(path)
        except CorruptCheckpointError:
            return None  # a lost epoch costs one epoch of compute, never a wrong result
        weights = {k[len("weights/"):]: v for k, v in tensors.items() if k.startswith("weights/")}
        check_tensors(weights, expected, path)
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim/"):
                _, idx, name = key.split("/", 2)
                state.setdefault(int(idx), {})[name] = value
        optimizer = {"state": state, "param_groups": json.loads(meta["param_groups"])}
        return TrainState(epoch=int(meta["epoch"]), weights=weights, optimizer=optimizer)


def exists(path: str | os.PathLike) -> bool:
    fs, p = _fs(str(path))
    return fs.get_file_info(p).type == pafs.FileType.File


def write_tensors(tensors: Mapping[str, torch.Tensor], path: str, metadata: Mapping[str, str]) -> None:
    """Write safetensors to a local path or a URI; the file appears whole or not at all."""
    if not is_uri(path):
        save_tensors(tensors, path, metadata=metadata)
        return
    from safetensors.torch import save

    blob = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=dict(metadata))
    fs, p = _fs(path)
    fs.create_dir(p.rpartition("/")[0], recursive=True)
    # object stores publish an upload only once it is complete, so readers never see a partial file
    with fs.open_output_stream(p) as out:
        out.write(blob)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a small text file (config, summary, failures) atomically."""
    path = str(path)
    if not is_uri(path):
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, target)
        return
    fs, p = _fs(path)
    fs.create_dir(p.rpartition("/")[0], recursive=True)
    with fs.open_output_stream(p) as out:
        out.write(text.encode())


def read_text(path: str | os.PathLike) -> str:
    return _read_bytes(str(path)).decode()


def delete(path: str | os.PathLike) -> None:
    """Remove a file if it exists."""
    if exists(path):
        fs, p = _fs(str(path))
        fs.delete_file(p)


def _read_bytes(path: str) -> bytes:
    fs, p = _fs(path)
    if fs.get_file_info(p).type != pafs.FileType.File:
        raise FileNotFoundError(f"no weights file at {path}")
    with fs.open_input_stream(p) as fh:
        return fh.read()


def read_tensors(path: str | os.PathLike, expected: Mapping[str, torch.Tensor] | None = None) -> StateDict:
    """Read safetensors from a local path or a URI; with ``expected``, check names and shapes."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    if not is_uri(path):
        from pipeline.task_vectors import load_tensors

        return load_tensors(path, expected)
    try:
        tensors = load(_read_bytes(str(path)))
    except (SafetensorError, ValueError) as err:
        raise CorruptCheckpointError(f"{path} is not a readable safetensors file: {err}") from err
    if expected is not None:
        check_tensors(tensors, expected, path)
    return tensors


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a safetensors file (its JSON header), without reading the tensors."""
    import struct

    if not is_uri(path):
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise CorruptCheckpointError(f"{path} is not a readable safetensors file: truncated header")
            (n,) = struct.unpack("<Q", head)
            header = fh.read(n)
    else:
        blob = _read_bytes(str(path))
        (n,) = struct.unpack("<Q", blob[:8])
        header = blob[8:8 + n]
    try:
        return dict(json.loads(header).get("__metadata__", {}))
    except (ValueError, UnicodeDecodeError) as err:
        raise CorruptCheckpointError(f"{path} has an unreadable safetensors header: {err}") from err
