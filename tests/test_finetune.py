import math

import pytest
import torch

from pipeline.finetune import EWC, LwF, NonFiniteLossError, Recipe, cosine_with_warmup, frozen_copy, \
    task_label_map, train_task
from pipeline.models import ImageClassifier, load_clip


@pytest.fixture(scope="module")
def clip(tiny_clip_dir):
    return load_clip(f"local-dir:{tiny_clip_dir}")


def _model(clip, classes=4):
    import copy

    torch.manual_seed(0)
    head = torch.nn.functional.normalize(torch.randn(classes, clip.model.text_projection.shape[1]), dim=1)
    return ImageClassifier(copy.deepcopy(clip.visual), head, 100.0), head


def _batches(n=4, bs=8, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(bs, 3, 32, 32, generator=g), torch.randint(0, classes, (bs,), generator=g))
            for _ in range(n)]


def test_schedule_warmup_then_cosine():
    assert cosine_with_warmup(0, 10, 100) == pytest.approx(0.1)
    assert cosine_with_warmup(9, 10, 100) == pytest.approx(1.0)
    assert cosine_with_warmup(10, 10, 100) == pytest.approx(1.0)
    assert cosine_with_warmup(55, 10, 100) == pytest.approx(0.5)
    assert cosine_with_warmup(100, 10, 100) == pytest.approx(0.0, abs=1e-12)


def test_label_map_remaps_task_classes():
    m = task_label_map([7, 2, 9], 10)
    assert m[7] == 0 and m[2] == 1 and m[9] == 2 and m[0] == -100


def test_training_fits_a_fixed_batch_and_only_touches_the_image_tower(clip):
    model, head = _model(clip)
    data = _batches(n=2)
    before = {k: v.clone() for k, v in model.visual.state_dict().items()}
    losses = []
    train_task(model, data, head, Recipe(lr=1e-3, epochs=8, warmup_steps=1), steps_per_epoch=2,
               on_epoch_end=lambda e, loss: losses.append(loss))
    assert losses[-1] < losses[0]
    changed = [k for k, v in model.visual.state_dict().items() if not torch.equal(v, before[k])]
    assert changed
    torch.testing.assert_close(model.head, head)


def test_nan_loss_stops_the_unit_with_a_clear_error(clip):
    model, head = _model(clip)
    data = _batches(n=1)
    data[0] = (torch.full_like(data[0][0], float("nan")), data[0][1])
    with pytest.raises(NonFiniteLossError, match="non-finite"):
        train_task(model, data, head, Recipe(lr=1e-4, epochs=1, warmup_steps=1), steps_per_epoch=1)


def test_ewc_penalty_is_zero_at_anchor_and_grows_away(clip):
    model, head = _model(clip)
    ewc = EWC(lam=1.0)
    x = torch.randn(2, 3, 32, 32)
    assert float(ewc.penalty(model, x)) == 0.0
    ewc.consolidate(model, _batches(n=2), head, torch.device("cpu"))
    assert float(ewc.penalty(model, x).detach()) == pytest.approx(0.0, abs=1e-12)
    with torch.no_grad():
        for p in model.visual.parameters():
            p.add_(0.01)
    assert float(ewc.penalty(model, x).detach()) > 0.0
    first = {k: v.clone() for k, v in ewc.fisher.items()}
    ewc.consolidate(model, _batches(n=2, seed=1), head, torch.device("cpu"))
    # Fisher accumulates across tasks
    assert all((ewc.fisher[k] >= first[k] - 1e-12).all() for k in first)


def test_lwf_penalty_is_distillation_against_the_teacher(clip):
    model, head = _model(clip)
    teacher = frozen_copy(model)
    lwf = LwF(teacher, head[:2], lam=0.3, temperature=2.0)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        p = torch.softmax(teacher(x, head[:2]) / 2.0, dim=1)
        expected = 0.3 * -(p * torch.log(p)).sum(1).mean()  # student == teacher: cross-entropy = entropy
    assert float(lwf.penalty(model, x).detach()) == pytest.approx(float(expected), rel=1e-4)
    assert all(not q.requires_grad for q in teacher.parameters())
    assert math.isfinite(float(lwf.penalty(model, x).detach()))
