"""CLIP backbones and frozen zero-shot heads.

This is the only module that imports open_clip. Backbones are named as open_clip names them:
``ViT-B-16`` with a pretrained tag (``openai``, ``laion400m_e32``) or a weights file, or
``local-dir:/path`` for a folder holding ``open_clip_config.json`` and
``open_clip_model.safetensors`` (how the demo's tiny CLIP ships, and how users bring their own).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

StateDict = dict[str, torch.Tensor]


class CheckpointMismatchError(ValueError):
    """A weights file does not fit the backbone; the message names the tensor."""


@dataclass
class Clip:
    """An open_clip model with its transforms and tokenizer."""

    model: nn.Module
    # open_clip's own preprocessing, for open_clip names and local-dir: alike. Train: RandomResizedCrop
    # to the model's size, scale (0.9, 1.0), bicubic, CLIP normalisation (drawn per sample, seeded, by
    # pipeline.data.augment); eval: resize, centre crop, normalisation.
    train_transform: Callable[[Any], torch.Tensor]
    eval_transform: Callable[[Any], torch.Tensor]
    tokenizer: Callable[[Sequence[str]], torch.Tensor]
    name: str

    @property
    def visual(self) -> nn.Module:
        return self.model.visual

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp().item())

    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)


def backbone_id(backbone: str, pretrained: str | None) -> str:
    """A readable identifier such as ``ViT-B-16/openai`` used in results and cache keys."""
    from pipeline.config import redact  # it lands in every result row: no URI credentials

    if backbone.startswith("local-dir:"):
        return Path(backbone.split(":", 1)[1]).name
    return redact(f"{backbone}/{pretrained}" if pretrained else backbone)


def load_clip(
    backbone: str,
    pretrained: str | None = None,
    *,
    cache_dir: str | None = None,
    device: str | torch.device = "cpu",
    allow_download: bool = False,
) -> Clip:
    """Build an open_clip model the way users run it on a cluster.

    ``pretrained`` is an open_clip tag (downloaded into ``cache_dir`` only when
    ``allow_download``; otherwise it must already be cached) or a path to a weights file.
    """
    import open_clip  # local import: keeps the rest of the pipeline importable without it

    if not allow_download and pretrained and not os.path.isfile(pretrained):
        # Huggingface hub honours this: a tag must then already be in the cache.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if backbone.startswith("local-dir:"):
        folder = Path(backbone.split(":", 1)[1])
        if not (folder / "open_clip_config.json").is_file():
            raise FileNotFoundError(
                f"backbone {backbone!r}: expected {folder}/open_clip_config.json and "
                f"{folder}/open_clip_model.safetensors"
            )
        pretrained = None
    model, train_tf, eval_tf = open_clip.create_model_and_transforms(
        backbone, pretrained=pretrained, cache_dir=cache_dir, device=device
    )
    tokenizer = open_clip.get_tokenizer(backbone)
    model.eval()
    return Clip(model, train_tf, eval_tf, tokenizer, backbone_id(backbone, pretrained))


def visual_shapes(backbone: str) -> dict[str, tuple[int, ...]]:
    """Shapes of an open_clip architecture's floating-point image-tower tensors (e.g. the 86M
    parameters of ``ViT-B-16``), built on the meta device: no weights allocated or downloaded."""
    import open_clip

    model = open_clip.create_model(backbone, pretrained=None, device="meta")
    return {k: tuple(v.shape) for k, v in model.visual.state_dict().items() if v.is_floating_point()}


def save_local_clip(model: nn.Module, model_cfg: dict, folder: str | os.PathLike,
                    preprocess_cfg: dict | None = None) -> Path:
    """Write a model in open_clip's ``local-dir:`` format (config JSON + safetensors)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg or {}}
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    return folder


def create_clip_from_config(model_cfg: dict) -> nn.Module:
    """A randomly initialised open_clip CLIP from a config dict (used to pretrain the tiny CLIP)."""
    from open_clip.model import CLIP

    cfg = dict(model_cfg)
    return CLIP(**cfg)


def visual_state(visual: nn.Module) -> StateDict:
    """Floating-point tensors of an image tower, as CPU copies keyed as in its ``state_dict()``."""
    return {
        k: v.detach().cpu().clone()
        for k, v in visual.state_dict().items()
        if torch.is_floating_point(v)
    }


def image_encoder_state(model: nn.Module) -> StateDict:
    """Floating-point tensors of the image tower, keyed as in ``model.visual.state_dict()``."""
    return visual_state(model.visual)


def load_visual_state(visual: nn.Module, state: StateDict) -> None:
    """Load image-tower weights, naming the first tensor that is missing, extra or mis-shaped."""
    own = visual.state_dict()
    for key, value in own.items():
        if not torch.is_floating_point(value):
            continue
        if key not in state:
            raise CheckpointMismatchError(f"checkpoint lacks tensor {key!r} (shape {tuple(value.shape)})")
        if tuple(state[key].shape) != tuple(value.shape):
            raise CheckpointMismatchError(
                f"tensor {key!r}: checkpoint shape {tuple(state[key].shape)} != model shape {tuple(value.shape)}"
            )
    extra = sorted(set(state) - set(own))
    if extra:
        raise CheckpointMismatchError(f"checkpoint has tensor {extra[0]!r} that the backbone does not have")
    with torch.no_grad():
        for key, param in own.items():
            if key in state:
                param.copy_(state[key].to(param.dtype))


def load_image_encoder_state(model: nn.Module, state: StateDict) -> None:
    """``load_visual_state`` on ``model.visual``."""
    load_visual_state(model.visual, state)


@torch.no_grad()
def zero_shot_head(
    clip: Clip, classnames: Sequence[str], templates: Sequence[str], device: str | torch.device = "cpu",
    batch_size: int = 256,
) -> torch.Tensor:
    """Class weights [C, D]: per class, encode every template, L2-normalise, average, L2-normalise."""
    model = clip.model.to(device)
    model.eval()
    weights = []
    for name in classnames:
        texts = [t.format(name) for t in templates]
        feats = []
        for i in range(0, len(texts), batch_size):
            tokens = clip.tokenizer(texts[i:i + batch_size]).to(device)
            feats.append(model.encode_text(tokens))
        emb = torch.cat(feats)
        emb = emb / emb.norm(dim=-1, keepdim=True)
        mean = emb.mean(dim=0)
        weights.append(mean / mean.norm())
    return torch.stack(weights).float().cpu()


class ImageClassifier(nn.Module):
    """Image tower + frozen zero-shot head: logits = scale * <normalised feature, w_c>."""

    def __init__(self, visual: nn.Module, head: torch.Tensor, logit_scale: float = 100.0) -> None:
        super().__init__()
        self.visual = visual
        self.register_buffer("head", head.detach().clone(), persistent=False)
        self.logit_scale = float(logit_scale)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.visual(images)
        return feats / feats.norm(dim=-1, keepdim=True)

    def logits(self, features: torch.Tensor, head: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of already computed ``features`` (one image pass can serve several heads)."""
        weights = self.head if head is None else head
        return self.logit_scale * features @ weights.t()

    def forward(self, images: torch.Tensor, head: torch.Tensor | None = None) -> torch.Tensor:
        return self.logits(self.features(images), head)
