"""The demo's tiny CLIP: an open_clip ``CLIP`` small enough to pretrain on two CPU cores.

It is pretrained contrastively (symmetric InfoNCE, as CLIP) on the demo world's caption pairs and
saved in open_clip's ``local-dir:`` format, so the rest of the pipeline loads it exactly as it
loads ``ViT-B-16``/``openai``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.data import demo_world
from pipeline.models import create_clip_from_config, save_local_clip

TINY_CLIP_CONFIG: dict = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 96, "layers": 4, "head_width": 32,
                   "mlp_ratio": 4.0},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
# Pixel statistics of the generated images would do as well; CLIP's are kept so the
# transforms are open_clip's defaults.
PREPROCESS_CFG: dict = {"size": 32, "mode": "RGB", "interpolation": "bicubic", "resize_mode": "shortest"}

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny_clip"


@dataclass(frozen=True)
class PretrainRecipe:
    pairs: int = 30_000
    steps: int = 700
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: int = 100
    seed: int = 0


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def pretrain(recipe: PretrainRecipe = PretrainRecipe(), out_dir: str | Path = DEFAULT_DIR,
             log_every: int = 100) -> Path:
    """Pretrain the tiny CLIP deterministically and save it; returns the ``local-dir`` folder."""
    import open_clip

    torch.manual_seed(recipe.seed)
    np.random.seed(recipe.seed)
    images, captions = demo_world.pretraining_pairs(recipe.pairs, recipe.seed)
    pixels = _to_tensor(images)
    tokenizer = open_clip.get_tokenizer("ViT-B-16", context_length=TINY_CLIP_CONFIG["text_cfg"]["context_length"])
    tokens = tokenizer(captions)

    model = create_clip_from_config(TINY_CLIP_CONFIG)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr)

    def lr_at(step: int) -> float:
        if step < recipe.warmup:
            return recipe.lr * (step + 1) / recipe.warmup
        progress = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
        return 0.5 * recipe.lr * (1 + math.cos(math.pi * progress))

    gen = torch.Generator().manual_seed(recipe.seed)
    start = time.time()
    running = torch.zeros(())
    for step in range(recipe.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        idx = torch.randint(0, recipe.pairs, (recipe.batch_size,), generator=gen)
        img_f, txt_f, scale = model(pixels[idx], tokens[idx])
        logits = scale * img_f @ txt_f.t()
        # captions repeat in a batch; treat identical captions as positives of each other
        same = (tokens[idx][:, None, :] == tokens[idx][None, :, :]).all(-1).float()
        target = same / same.sum(1, keepdim=True)
        loss = 0.5 * (torch.sum(-target * F.log_softmax(logits, 1), 1).mean()
                      + torch.sum(-target * F.log_softmax(logits.t(), 1), 1).mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        running += loss.detach()
        if log_every and (step + 1) % log_every == 0:
            print(f"step {step + 1}/{recipe.steps} loss {running.item() / log_every:.3f} "
                  f"scale {model.logit_scale.exp().item():.1f} {time.time() - start:.0f}s", flush=True)
            running.zero_()
    model.eval()
    return save_local_clip(model, TINY_CLIP_CONFIG, out_dir, PREPROCESS_CFG)
