"""Merges published after MagMax (issue "Beyond the paper"): pure tensor functions over task
vectors (``dict[str, Tensor]`` keyed by parameter name), and running classes for the continual
ones. No Ray, no open_clip, no files."""

from pipeline.merging_newer.breadcrumbs import breadcrumbs
from pipeline.merging_newer.consensus import consensus, tall_mask
from pipeline.merging_newer.dare import dare
from pipeline.merging_newer.dop import DOP
from pipeline.merging_newer.iso import iso_c, iso_cts
from pipeline.merging_newer.lines import lines
from pipeline.merging_newer.opcm import OPCM
from pipeline.merging_newer.tsv import tsv_merge
from pipeline.merging_newer.wudi import wudi

__all__ = ["breadcrumbs", "consensus", "tall_mask", "dare", "DOP", "iso_c", "iso_cts", "lines", "OPCM",
           "tsv_merge", "wudi"]
