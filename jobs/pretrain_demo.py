"""Pretrain the demo's tiny CLIP (deterministic) and save it to assets/tiny_clip.

The committed weights were made by `python jobs/pretrain_demo.py` (about 5 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pipeline.tiny_clip import DEFAULT_DIR, PretrainRecipe, pretrain  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(DEFAULT_DIR))
    parser.add_argument("--steps", type=int, default=PretrainRecipe.steps)
    parser.add_argument("--pairs", type=int, default=PretrainRecipe.pairs)
    parser.add_argument("--seed", type=int, default=PretrainRecipe.seed)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    out = pretrain(PretrainRecipe(steps=args.steps, pairs=args.pairs, seed=args.seed), args.out)
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
