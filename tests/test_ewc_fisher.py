"""EWC's Fisher, both ways: ``reference`` against a hand-written transcription of the official
MagMax loop (danielm1405/magmax ewc.py: compute_fisher_matrix_diag, the ½/½ merge across tasks,
calc_ewc_loss), ``empirical`` against its textbook definition."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from pipeline.finetune import EWC, Recipe, train_task
from pipeline.models import ImageClassifier, load_clip

DEV = torch.device("cpu")


# ---- the oracle: the official code's loops, transcribed (our model's call convention) -------


def official_fisher(model: ImageClassifier, loader: DataLoader, head: torch.Tensor) -> dict[str, torch.Tensor]:
    fisher = {n: torch.zeros(p.shape) for n, p in model.visual.named_parameters() if p.requires_grad}
    num_samples = len(loader.dataset)
    n_samples_batches = (num_samples // loader.batch_size + 1) if num_samples > 0 \
        else (len(loader.dataset) // loader.batch_size)
    model.train()
    for images, targets in itertools.islice(loader, n_samples_batches):
        outputs = model(images, head)
        preds = outputs.argmax(1)
        loss = torch.nn.functional.cross_entropy(outputs, preds)
        loss.backward()
        for n, p in model.visual.named_parameters():
            if p.grad is not None:
                fisher[n] += p.grad.pow(2) * len(targets)
    n_samples = n_samples_batches * loader.batch_size
    return {n: (p / n_samples) for n, p in fisher.items()}


def official_chain(model: ImageClassifier, loaders, head, between=None):
    """Fisher over tasks as the official finetune(): zeros, then F = ½F + ½F_task after each."""
    fisher = {n: torch.zeros(p.shape) for n, p in model.visual.named_parameters() if p.requires_grad}
    for t, loader in enumerate(loaders):
        if between is not None:
            between(t, model)
        curr = official_fisher(model, loader, head)
        alpha = 0.5
        for n in fisher.keys():
            fisher[n] = (alpha * fisher[n] + (1 - alpha) * curr[n])
    return fisher


def official_ewc_loss(visual, fisher, older_params):
    loss_reg = 0
    for n, p in visual.named_parameters():
        if n in fisher.keys():
            loss_reg += torch.sum(fisher[n] * (p - older_params[n]).pow(2)) / 2
    return loss_reg


# ---- small models and data ------------------------------------------------------------------


def small_model(seed: int = 0, classes: int = 5) -> tuple[ImageClassifier, torch.Tensor]:
    torch.manual_seed(seed)
    visual = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 12), torch.nn.GELU(),
                                 torch.nn.Linear(12, 8))
    head = F.normalize(torch.randn(classes, 8), dim=1)
    return ImageClassifier(visual, head, 100.0), head


def loader(n: int, bs: int, seed: int, classes: int = 5, size: int = 4) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    ds = TensorDataset(torch.randn(n, 3, size, size, generator=g), torch.randint(0, classes, (n,), generator=g))
    return DataLoader(ds, batch_size=bs, shuffle=False)


def twin(model: ImageClassifier) -> ImageClassifier:
    """A copy with the same weights *and* the same .grad (deepcopy drops gradients)."""
    other = copy.deepcopy(model)
    for p, q in zip(model.parameters(), other.parameters()):
        q.grad = None if p.grad is None else p.grad.clone()
    return other


def assert_same(ours: dict, ref: dict) -> None:
    assert ours.keys() == ref.keys()
    for n in ref:
        torch.testing.assert_close(ours[n], ref[n], rtol=1e-6, atol=0, msg=lambda m: f"{n}: {m}")


# ---- tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("n, bs", [(20, 8), (16, 8), (5, 8)])  # partial last batch, exact multiple, one short batch
def test_reference_fisher_equals_the_official_loop(n, bs):
    model, head = small_model()
    data = loader(n, bs, seed=1)
    ref = official_chain(twin(model), [data], head)
    ewc = EWC(lam=1.0, fisher_mode="reference")
    ewc.consolidate(model, data, head, DEV, batch_size=bs)
    assert_same(ewc.fisher, ref)
    # one task leaves half its Fisher, normalised by (N // B + 1) * B samples
    assert all(f.abs().sum() > 0 for f in ewc.fisher.values())


def test_reference_fisher_starts_from_the_gradients_left_by_training():
    # the official loop never clears .grad: the last training step's (clipped) gradient is the
    # first term of the running sum; consolidate right after train_task must see the same
    model, head = small_model()
    train_task(model, list(loader(24, 8, seed=2)), head, Recipe(lr=1e-2, epochs=1, warmup_steps=1, grad_clip=1.0),
               steps_per_epoch=3)
    assert any(p.grad is not None for p in model.visual.parameters())
    data = loader(24, 8, seed=3)
    ref = official_chain(twin(model), [data], head)
    ewc = EWC(lam=1.0, fisher_mode="reference")
    ewc.consolidate(model, data, head, DEV, batch_size=8)
    assert_same(ewc.fisher, ref)
    # ... and differs from a start with cleared gradients
    fresh = twin(model)
    fresh.zero_grad(set_to_none=True)
    other = EWC(lam=1.0, fisher_mode="reference")
    other.consolidate(fresh, data, head, DEV, batch_size=8)
    assert not all(torch.allclose(other.fisher[k], ewc.fisher[k]) for k in ewc.fisher)
    # the gradients are dropped afterwards (the next step starts with zero_grad anyway)
    assert all(p.grad is None for p in model.visual.parameters())


def test_reference_chain_halves_old_fisher_and_penalty_matches_official():
    model, head = small_model(seed=4)
    loaders = [loader(20, 8, seed=5), loader(13, 8, seed=6), loader(9, 4, seed=7)]

    def move(t, m):  # the training between tasks, in short: zero_grad, backward, clip, step
        m.zero_grad()
        x, y = next(iter(loaders[t]))
        F.cross_entropy(m(x, head), y % 5).backward()
        torch.nn.utils.clip_grad_norm_(list(m.visual.parameters()), 1.0)
        with torch.no_grad():
            for p in m.visual.parameters():
                p.sub_(0.05 * p.grad)

    oracle_model = twin(model)
    ref = official_chain(oracle_model, loaders, head, between=move)
    ewc = EWC(lam=1e6, fisher_mode="reference")
    for t, data in enumerate(loaders):
        move(t, model)
        ewc.consolidate(model, data, head, DEV, batch_size=data.batch_size)
    assert_same(ewc.fisher, ref)
    # penalty: lam * calc_ewc_loss with θ* the weights after the last task
    old = {n: p.clone().detach() for n, p in oracle_model.visual.named_parameters()}
    with torch.no_grad():
        for m in (model, oracle_model):
            for p in m.visual.parameters():
                p.mul_(1.01)
    x = torch.randn(2, 3, 4, 4)
    want = 1e6 * official_ewc_loss(oracle_model.visual, ref, old)
    torch.testing.assert_close(ewc.penalty(model, x), want, rtol=1e-6, atol=0)


def test_reference_ignores_labels_empirical_does_not():
    model, head = small_model(seed=8)
    a = loader(16, 8, seed=9)
    shuffled = DataLoader(TensorDataset(a.dataset.tensors[0], a.dataset.tensors[1].flip(0)), batch_size=8)
    out = {}
    for mode in ("reference", "empirical"):
        for name, data in (("a", a), ("b", shuffled)):
            ewc = EWC(lam=1.0, fisher_mode=mode)
            ewc.consolidate(twin(model), data, head, DEV, batch_size=8)
            out[mode, name] = ewc.fisher
    assert all(torch.equal(out["reference", "a"][k], out["reference", "b"][k]) for k in out["reference", "a"])
    assert not all(torch.equal(out["empirical", "a"][k], out["empirical", "b"][k]) for k in out["empirical", "a"])


def test_empirical_fisher_is_the_textbook_mean_and_sums_over_tasks():
    model, head = small_model(seed=10)
    loaders = [loader(12, 4, seed=11), loader(8, 4, seed=12)]
    want = None
    for data in loaders:
        per = []
        for x, y in data:  # per batch, cleared gradients, at the dataset's labels
            m = twin(model)
            m.zero_grad(set_to_none=True)
            m.eval()
            F.cross_entropy(m(x, head), y).backward()
            per.append({n: p.grad ** 2 for n, p in m.visual.named_parameters()})
        mean = {n: sum(d[n] for d in per) / len(per) for n in per[0]}
        want = mean if want is None else {n: want[n] + mean[n] for n in mean}
    ewc = EWC(lam=1.0)
    assert ewc.fisher_mode == "empirical"
    for data in loaders:
        ewc.consolidate(model, data, head, DEV)
    assert_same(ewc.fisher, want)


def test_reference_on_the_tiny_clip_equals_the_official_loop(tiny_clip_dir):
    clip = load_clip(f"local-dir:{tiny_clip_dir}")
    torch.manual_seed(0)
    head = F.normalize(torch.randn(4, clip.model.text_projection.shape[1]), dim=1)
    model = ImageClassifier(copy.deepcopy(clip.visual), head, clip.logit_scale)
    data = loader(10, 4, seed=13, classes=4, size=clip.image_size)
    train_task(model, list(data), head, Recipe(lr=1e-4, epochs=1, warmup_steps=1), steps_per_epoch=3)
    ref = official_chain(twin(model), [data], head)
    ewc = EWC(lam=1.0, fisher_mode="reference")
    ewc.consolidate(model, data, head, DEV, batch_size=4)
    assert_same(ewc.fisher, ref)


def test_bad_mode_is_named():
    with pytest.raises(ValueError, match="fisher_mode"):
        EWC(fisher_mode="textbook")


def test_checkpoint_key_separates_the_fisher_modes():
    from pipeline.config import load_config
    from pipeline.units import checkpoint_key

    emp = load_config("configs/demo.yaml", [])
    ref = load_config("configs/demo.yaml", ["finetune.ewc_fisher=reference"])
    s = emp.scenarios[0]
    assert checkpoint_key(emp, s, "ewc") != checkpoint_key(ref, s, "ewc")
    assert checkpoint_key(emp, s, "seq") == checkpoint_key(ref, s, "seq")


@pytest.mark.parametrize("mode", ["reference", "empirical"])
def test_a_micro_batched_fisher_equals_the_whole_batch_one(mode):
    # a Fisher pass in micro batches (a large backbone on a small GPU) is the same Fisher: each
    # batch's gradient is the sum of its parts' Σ CE_i / n, whatever the split
    model, head = small_model()
    train_task(model, list(loader(24, 8, seed=2)), head, Recipe(lr=1e-2, epochs=1, warmup_steps=1, grad_clip=1.0),
               steps_per_epoch=3)
    data = loader(20, 8, seed=4)
    whole = EWC(lam=1.0, fisher_mode=mode)
    whole.consolidate(twin(model), data, head, DEV, batch_size=8)
    for micro in (3, 1):
        parts = EWC(lam=1.0, fisher_mode=mode)
        parts.consolidate(twin(model), data, head, DEV, batch_size=8, micro_batch_size=micro)
        for n, want in whole.fisher.items():  # float32 rounding of sums taken in another order
            scale = float(want.abs().max())
            torch.testing.assert_close(parts.fisher[n], want, rtol=1e-3, atol=1e-5 * scale)


def test_an_out_of_memory_fisher_batch_is_redone_in_halves_not_added_twice():
    model, head = small_model()
    train_task(model, list(loader(24, 8, seed=2)), head, Recipe(lr=1e-2, epochs=1, warmup_steps=1, grad_clip=1.0),
               steps_per_epoch=3)
    data = loader(16, 8, seed=5)
    want = EWC(lam=1.0, fisher_mode="reference")
    want.consolidate(twin(model), data, head, DEV, batch_size=8, micro_batch_size=4)

    small = twin(model)
    forward, sizes = small.forward, []

    def forward_that_fails_on_big_parts(images, head):
        sizes.append(len(images))
        out = forward(images, head)
        if len(images) > 4:  # after the forward: the failed part's graph exists, as on a GPU
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return out

    small.forward = forward_that_fails_on_big_parts
    got = EWC(lam=1.0, fisher_mode="reference")
    got.consolidate(small, data, head, DEV, batch_size=8)
    assert sizes == [8, 4, 4, 4, 4]  # the first batch failed whole, then halves from there on
    assert_same(got.fisher, want.fisher)
