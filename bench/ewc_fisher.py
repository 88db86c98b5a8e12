"""EWC's Fisher, both ways, on the demo: how much larger the official code's Fisher is.

    .venv/bin/python bench/ewc_fisher.py                  # the demo world, its first two tasks (~minutes on CPU)
    .venv/bin/python bench/ewc_fisher.py --tasks 3 --chain empirical

Runs the EWC chain of ``configs/demo.yaml`` (its recipe, its tiny CLIP, the demo world written
to a temporary folder unless ``--data-root`` holds one) as ``pipeline.chain.run_chain`` does,
and after each task computes, from the same weights, the task's Fisher both ways
(``pipeline.finetune.EWC``): ``empirical`` (textbook: the dataset's labels, gradients cleared
per batch) and ``reference`` (the official code: argmax labels, gradients never cleared,
starting from the last training step's), plus ``reference`` started from cleared gradients, to
show what the leftover gradient contributes. It prints the ratios of the mean Fisher entries:
per task, and of what the penalty uses (empirical: the sum over tasks; reference: F ← ½F + ½F_t).
The chain itself is trained with ``--chain``'s Fisher (default reference, as configs/paper/).
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, machine, table  # noqa: E402

import torch  # noqa: E402


def mean_entry(fisher: dict[str, torch.Tensor]) -> float:
    total = sum(float(f.double().sum()) for f in fisher.values())
    return total / sum(f.numel() for f in fisher.values())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", default="", help="a folder holding demo_shapes/ (default: a fresh one)")
    ap.add_argument("--tasks", type=int, default=2)
    ap.add_argument("--chain", choices=("reference", "empirical"), default="reference")
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. finetune.epochs=2")
    args = ap.parse_args(argv)

    from pipeline.config import load_config
    from pipeline.data.demo_world import write_image_folder
    from pipeline.finetune import EWC, train_task
    from pipeline.scenario import build_scenario
    from pipeline.chain import _mapped, _steps
    from pipeline.units import recipe_from

    tmp = None
    root = args.data_root
    if not root:
        tmp = tempfile.TemporaryDirectory()
        root = tmp.name
        write_image_folder(Path(root) / "demo_shapes", seed=0)  # the demo world, as run_benchmark writes it
    cfg = load_config(ROOT / "configs" / "demo.yaml", [f"data_root={root}", *args.overrides])
    f = cfg.finetune
    scn = build_scenario(cfg, cfg.scenarios[0])
    model = scn.classifier()
    dev = torch.device("cpu")
    chain = EWC(lam=f.ewc_lambda, fisher_mode=args.chain)
    stored = {"empirical": EWC(lam=f.ewc_lambda), "reference": EWC(lam=f.ewc_lambda, fisher_mode="reference")}
    rows = []
    for task in range(args.tasks):
        head, lmap = scn.train_head(task)
        loader = scn.train_loader([task], cfg.seed * 1000 + task, f.batch_size, 0)
        recipe = recipe_from(cfg, scn.epochs_for(task))
        torch.manual_seed(cfg.seed * 1000 + task)
        n = len(scn.train_task_idx[task])
        train_task(model, loader, head, recipe, steps_per_epoch=_steps(n, f.batch_size), device=dev,
                   regularizer=chain, label_map=lmap)

        def fisher_batches():
            return _mapped(scn.train_loader([task], cfg.seed, f.batch_size), lmap)

        means = {}
        for mode in ("empirical", "reference", "reference_cleared"):
            twin = copy.deepcopy(model)  # same weights and the same leftover gradient
            for p, q in zip(model.parameters(), twin.parameters()):
                q.grad = None if p.grad is None or mode == "reference_cleared" else p.grad.clone()
            one = EWC(lam=f.ewc_lambda, fisher_mode=mode.split("_")[0])
            one.consolidate(twin, fisher_batches(), head, dev, f.ewc_fisher_batches, batch_size=f.batch_size)
            # one task: empirical holds F_t, reference ½F_t
            means[mode] = mean_entry(one.fisher) * (2.0 if mode.startswith("reference") else 1.0)
            if mode in stored:
                twin = copy.deepcopy(model)
                for p, q in zip(model.parameters(), twin.parameters()):
                    q.grad = None if p.grad is None else p.grad.clone()
                stored[mode].consolidate(twin, fisher_batches(), head, dev, f.ewc_fisher_batches,
                                         batch_size=f.batch_size)
        chain.consolidate(model, fisher_batches(), head, dev, f.ewc_fisher_batches, batch_size=f.batch_size)
        emp, ref = mean_entry(stored["empirical"].fisher), mean_entry(stored["reference"].fisher)
        e3 = "{:.3e}".format
        rows.append([task, e3(means["empirical"]), e3(means["reference"]), e3(means["reference_cleared"]),
                     means["reference"] / means["empirical"], e3(emp), e3(ref), ref / emp])
        print(f"task {task}: done", flush=True)

    print(f"\n{machine()}")
    print(f"configs/demo.yaml, EWC chain trained with the {args.chain} Fisher, λ = {f.ewc_lambda:g}, "
          f"batch {f.batch_size}, {scn.epochs_for(0)} epochs per task\n")
    print(table(["task", "mean F_t empirical", "mean F_t reference", "reference, cleared start",
                 "ratio F_t", "penalty F empirical (Σ)", "penalty F reference (½/½)", "ratio penalty F"], rows))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
