"""Merging task vectors: pure tensor code (no Ray, no open_clip, no files).

Task vectors are ``dict[str, Tensor]`` keyed by parameter name. ``paper`` holds the MagMax
paper's merges (MagMax and its running form, Avg, task arithmetic, RandMix, TIES, k-th
magnitude); the other modules hold newer data-free merges, each from its own paper, and the
running (continual) classes ``OPCM`` and ``DOP``.
"""

from pipeline.merging.paper import *  # noqa: F401,F403 - the paper's merges are this package's API
from pipeline.merging.paper import __all__ as _paper_all
# helpers the newer merges and the analyses share with the paper's merges
from pipeline.merging.paper import (  # noqa: F401
    _acc_dtype, _as_list, _check_compatible, _check_floating, _key_seed, _validate,
)
from pipeline.merging.breadcrumbs import breadcrumbs
from pipeline.merging.consensus import consensus, tall_mask
from pipeline.merging.dare import dare
from pipeline.merging.dop import DOP
from pipeline.merging.iso import iso_c, iso_cts
from pipeline.merging.lines import lines, lines_multitask_alpha
from pipeline.merging.opcm import OPCM
from pipeline.merging.tsv import tsv_merge
from pipeline.merging.wudi import wudi

__all__ = [*_paper_all, "breadcrumbs", "consensus", "tall_mask", "dare", "DOP", "iso_c", "iso_cts", "lines", "lines_multitask_alpha",
           "OPCM", "tsv_merge", "wudi"]
