"""The MagMax actor: the running maximum-magnitude vectors of one run, one per (scenario, mode).

One actor serves a whole run (a process start imports torch: seconds of CPU and ~0.7 GB per
process, paid once instead of once per scenario and mode). Each sequence of folds has a key
(``<scenario>-<mode>``); the actor keeps only the key it is folding in memory (constant in the
number of tasks and of scenarios), persists that state under ``<root>/<key>/`` (a local folder or a
storage URI) after every fold, and reloads it when Ray restarts the actor (``max_restarts``) or when
the driver comes back to the key: a killed actor loses nothing, and a fold retried after a restart
is skipped by its tag, so the merged vector is the same as without the fault.
"""

from __future__ import annotations

import ray
import torch

from pipeline.merging import RunningMagMax
from pipeline.storage import delete, exists, join, read_metadata, read_tensors, write_tensors

STATE_FILE = "running_magmax.safetensors"


class MagMaxState:
    """The actor's logic as a plain class: tested without Ray, wrapped as ``MagMaxActor`` below."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.key: str | None = None
        self.running = RunningMagMax()
        self.folded: list[str] = []

    def state_file(self, key: str) -> str:
        return join(self.root, key, STATE_FILE)

    def _select(self, key: str) -> None:
        # the previous key's state is on storage already (written after its last fold)
        if key == self.key:
            return
        self.key, self.running, self.folded = key, RunningMagMax(), []
        path = self.state_file(key)
        if exists(path):
            self.folded = [t for t in read_metadata(path).get("folded", "").split(",") if t]
            if self.folded:
                self.running = RunningMagMax.from_value(read_tensors(path), len(self.folded))

    def reset(self, key: str) -> None:
        """Start ``key``'s sequence from nothing (a scenario run again folds from its first task:
        a state resumed from the last run would skip every fold and give the final vector for each t)."""
        delete(self.state_file(key))
        self.key, self.running, self.folded = key, RunningMagMax(), []

    def add(self, key: str, tag: str, tv: dict[str, torch.Tensor]) -> int:
        """Fold ``tv`` (named ``tag``) into ``key``'s vector; a tag folded before is skipped (idempotent retries)."""
        self._select(key)
        if tag in self.folded:
            return len(self.folded)
        self.running.add(tv)
        self.folded.append(tag)
        write_tensors(self.running.value, self.state_file(key), metadata={"folded": ",".join(self.folded)})
        return len(self.folded)

    def value(self, key: str) -> dict[str, torch.Tensor]:
        self._select(key)
        return {k: v.clone() for k, v in self.running.value.items()}

    def folded_tags(self, key: str) -> list[str]:
        self._select(key)
        return list(self.folded)

    def release(self) -> None:
        """Drop the vector held in memory (its state stays on storage)."""
        self.key, self.running, self.folded = None, RunningMagMax(), []


@ray.remote(num_cpus=0, max_restarts=3, max_task_retries=3)
class MagMaxActor(MagMaxState):
    """``MagMaxState`` as a restartable Ray actor (a subclass, so Ray and its dashboard name it so)."""
