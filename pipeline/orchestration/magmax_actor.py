"""The MagMax actor: the running maximum-magnitude vector of one (scenario, fine-tuning mode).

It receives each new task vector as an ObjectRef, folds it into ``RunningMagMax`` in its own
memory (constant in the number of tasks), persists the state to ``state_dir`` after every fold
and reloads it when Ray restarts the actor (``max_restarts``), so a killed actor loses nothing.
"""

from __future__ import annotations

from pathlib import Path

import ray
import torch

from pipeline.merging import RunningMagMax
from pipeline.task_vectors import load_tensors, save_tensors


@ray.remote(num_cpus=0, max_restarts=3, max_task_retries=3)
class MagMaxActor:
    def __init__(self, state_dir: str) -> None:
        self.state_dir = Path(state_dir)
        self.running = RunningMagMax()
        self.folded: list[str] = []
        state = self.state_dir / "running_magmax.safetensors"
        if state.is_file():
            from safetensors import safe_open

            with safe_open(str(state), framework="pt") as fh:
                meta = fh.metadata() or {}
            self.folded = [t for t in meta.get("folded", "").split(",") if t]
            if self.folded:
                self.running = RunningMagMax.from_value(load_tensors(state), len(self.folded))

    def add(self, tag: str, tv: dict[str, torch.Tensor]) -> int:
        """Fold ``tv`` (named ``tag``) in; a tag folded before is skipped (idempotent retries)."""
        if tag in self.folded:
            return len(self.folded)
        self.running.add(tv)
        self.folded.append(tag)
        save_tensors(self.running.value, self.state_dir / "running_magmax.safetensors",
                     metadata={"folded": ",".join(self.folded)})
        return len(self.folded)

    def value(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.running.value.items()}

    def folded_tags(self) -> list[str]:
        return list(self.folded)
