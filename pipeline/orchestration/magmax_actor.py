"""The MagMax actor: the running maximum-magnitude vector of one (scenario, fine-tuning mode).

It receives each new task vector as an ObjectRef, folds it into ``RunningMagMax`` in its own
memory (constant in the number of tasks), persists the state to ``state_dir`` (a local folder
or a storage URI) after every fold, and reloads it when Ray restarts the actor
(``max_restarts``): a killed actor loses nothing, and a fold retried after a restart is skipped
by its tag, so the merged vector is the same as without the fault.
"""

from __future__ import annotations

import ray
import torch

from pipeline.merging import RunningMagMax
from pipeline.storage import exists, join, read_metadata, read_tensors, write_tensors


class MagMaxState:
    """The actor's logic as a plain class: tested without Ray, wrapped as ``MagMaxActor`` below."""

    def __init__(self, state_dir: str) -> None:
        self.state_file = join(state_dir, "running_magmax.safetensors")
        self.running = RunningMagMax()
        self.folded: list[str] = []
        if exists(self.state_file):
            self.folded = [t for t in read_metadata(self.state_file).get("folded", "").split(",") if t]
            if self.folded:
                self.running = RunningMagMax.from_value(read_tensors(self.state_file), len(self.folded))

    def add(self, tag: str, tv: dict[str, torch.Tensor]) -> int:
        """Fold ``tv`` (named ``tag``) in; a tag folded before is skipped (idempotent retries)."""
        if tag in self.folded:
            return len(self.folded)
        self.running.add(tv)
        self.folded.append(tag)
        write_tensors(self.running.value, self.state_file, metadata={"folded": ",".join(self.folded)})
        return len(self.folded)

    def value(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.running.value.items()}

    def folded_tags(self) -> list[str]:
        return list(self.folded)


@ray.remote(num_cpus=0, max_restarts=3, max_task_retries=3)
class MagMaxActor(MagMaxState):
    """``MagMaxState`` as a restartable Ray actor (a subclass, so Ray and its dashboard name it so)."""
