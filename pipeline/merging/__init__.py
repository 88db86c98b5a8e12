"""Merging task vectors: pure tensor code (no Ray, no open_clip, no files).

Task vectors are ``dict[str, Tensor]`` keyed by parameter name (``vectors``: the type, the checks
on inputs, chunked iteration, ``rescale_to_norm``, ``apply_task_vector``). The MagMax paper's
merges: ``max_magnitude`` (MagMax, MaxAbs, the running ``RunningMagMax``, k-th magnitude),
``baselines`` (task arithmetic, Avg, RandMix) and ``ties_merging`` (TIES and its trimming).
The other modules hold newer data-free merges, each from its own paper, and the running
(continual) classes ``OPCM`` and ``DOP``. A config runs a merge through the method table
(``pipeline.methods.register_method``).
"""

from collections.abc import Callable, Mapping
from types import MappingProxyType

from pipeline.merging.vectors import TaskVector, apply_task_vector, rescale_to_norm
from pipeline.merging.max_magnitude import RunningMagMax, kth_magnitude, magmax, maxabs
from pipeline.merging.baselines import average, random_mix, task_arithmetic
from pipeline.merging.ties_merging import ties, trim_count, trim_options, trim_threshold
from pipeline.merging.breadcrumbs import breadcrumbs
from pipeline.merging.consensus import consensus, tall_mask
from pipeline.merging.dare import dare
from pipeline.merging.dop import DOP
from pipeline.merging.iso import iso_c, iso_cts
from pipeline.merging.lines import lines, lines_multitask_alpha
from pipeline.merging.opcm import OPCM
from pipeline.merging.tsv import tsv_merge
from pipeline.merging.wudi import wudi

# The paper's merges by their own names, for benchmarks and tests that iterate them. The methods a
# config can run (names, λ, which fine-tuning they merge) are the method table, pipeline.methods.
MERGE_FUNCTIONS: Mapping[str, Callable[..., TaskVector]] = MappingProxyType({
    "magmax": magmax,
    "average": average,
    "task_arithmetic": task_arithmetic,
    "random_mix": random_mix,
    "ties": ties,
    "kth_magnitude": kth_magnitude,
})

__all__ = [
    "TaskVector", "magmax", "maxabs", "RunningMagMax", "average", "task_arithmetic", "random_mix", "ties",
    "kth_magnitude", "trim_threshold", "trim_count", "trim_options", "rescale_to_norm", "apply_task_vector",
    "MERGE_FUNCTIONS",
    "breadcrumbs", "consensus", "tall_mask", "dare", "DOP", "iso_c", "iso_cts", "lines", "lines_multitask_alpha",
    "OPCM", "tsv_merge", "wudi",
]
