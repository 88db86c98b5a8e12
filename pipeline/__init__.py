"""The MagMax pipeline: continual fine-tuning of CLIP and maximum-magnitude merging of task vectors."""

__version__ = "0.1.0"
