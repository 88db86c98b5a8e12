"""Task vectors and merges as Ray tasks, so that the driver holds ObjectRefs and no vector.

At paper scale one task vector is the whole image tower (344 MB for ViT-B/16) and a scenario has
up to 5 fine-tuning modes × 20 tasks of them: the driver of ``run_scenario`` makes each one from
its checkpoint in a task (``task_vector_from``), hands the refs to the merges
(``merge_task``, ``fold_running``, ``post_process_task``) and to the evaluations, and never
fetches a value. The returns are owned by the driver (the caller), so they outlive the workers.

Every function computes what the driver computed before, in the same order on the same inputs:
the rows stay bit-for-bit the same. Merges get the ``Method`` itself, not its name: a method
registered at run time in the driver (``methods.register_method``) is not in a worker's table.
"""

from __future__ import annotations

from typing import Any

import ray
import torch

from pipeline import methods as method_table
from pipeline.methods import MergeContext, Method
from pipeline.storage import read_tensors
from pipeline.task_vectors import task_vector

TaskVector = dict[str, torch.Tensor]


@ray.remote
def task_vector_from(path: str, theta0: TaskVector) -> TaskVector:
    """τ = θ - θ0 of the checkpoint at ``path`` (a local path or a storage URI)."""
    return task_vector(read_tensors(path, theta0), theta0)


@ray.remote
def merge_task(method: Method, ctx: MergeContext, *tvs: TaskVector) -> TaskVector:
    """``method``'s merge of ``tvs`` (refs, resolved by Ray), ``merge.post`` applied."""
    tvs_list = list(tvs)
    return method_table.post_process(method.merge(tvs_list, ctx), tvs_list, ctx.merge)


@ray.remote
def post_process_task(merge_cfg: Any, tau: TaskVector, *tvs: TaskVector) -> TaskVector:
    """``merge.post`` of a merged vector ``tau`` of ``tvs`` (the MagMax actor folds MagMax only)."""
    return method_table.post_process(tau, list(tvs), merge_cfg)


@ray.remote
def fold_running(method: Method, ctx: MergeContext, tv_refs: list[ray.ObjectRef]):
    """A continual merge (OPCM, DOP, ...) folded task by task: yields its value after every task.

    Called with ``.options(num_returns=len(tv_refs))``: one ref per prefix, each stored as it is
    yielded. The vectors come in a list (not resolved by Ray) and are fetched one at a time, so
    this worker holds the fold's state and the current vector only, unless ``merge.post`` needs
    the prefix (LiNeS's multi-task alpha reads every vector merged so far).
    """
    fold = method.fold(ctx)
    kept: list[TaskVector] = []
    for ref in tv_refs:
        tv = ray.get(ref)
        fold.add(tv)
        if ctx.merge.post:
            kept.append(tv)
        yield method_table.post_process(fold.value(), kept, ctx.merge)
        del tv
