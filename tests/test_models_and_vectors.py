import numpy as np
import pytest
import torch

from pipeline.models import CheckpointMismatchError, ImageClassifier, image_encoder_state, load_clip, \
    load_image_encoder_state, zero_shot_head
from pipeline.storage import CorruptCheckpointError, read_tensors, write_tensors
from pipeline.task_vectors import task_vector


@pytest.fixture(scope="module")
def clip(tiny_clip_dir):
    return load_clip(f"local-dir:{tiny_clip_dir}")


def test_tiny_clip_loads_through_open_clip_local_dir(clip):
    assert clip.image_size == 32
    state = image_encoder_state(clip.model)
    assert "conv1.weight" in state and all(torch.is_floating_point(v) for v in state.values())


def test_zero_shot_head_is_normalised_mean_of_normalised_templates(clip):
    templates = ["a photo of a {}.", "a drawing of a {}."]
    head = zero_shot_head(clip, ["red circle", "blue bar"], templates)
    assert head.shape == (2, clip.model.text_projection.shape[1])
    torch.testing.assert_close(head.norm(dim=1), torch.ones(2))
    with torch.no_grad():
        emb = clip.model.encode_text(clip.tokenizer([t.format("red circle") for t in templates]))
    emb = emb / emb.norm(dim=-1, keepdim=True)
    mean = emb.mean(0)
    torch.testing.assert_close(head[0], mean / mean.norm(), rtol=1e-5, atol=1e-6)


def test_classifier_logits_are_scaled_cosines(clip):
    head = torch.nn.functional.normalize(torch.randn(3, clip.model.text_projection.shape[1]), dim=1)
    model = ImageClassifier(clip.visual, head, 100.0)
    x = torch.randn(2, 3, 32, 32)
    logits = model(x)
    assert logits.shape == (2, 3)
    assert logits.abs().max() <= 100.0 + 1e-4


def test_mismatched_checkpoint_names_the_tensor(clip):
    state = image_encoder_state(clip.model)
    bad = dict(state)
    bad["conv1.weight"] = torch.zeros(1, 2, 3)
    with pytest.raises(CheckpointMismatchError, match="conv1.weight"):
        load_image_encoder_state(clip.model, bad)
    missing = dict(state)
    missing.pop("proj")
    with pytest.raises(CheckpointMismatchError, match="'proj'"):
        load_image_encoder_state(clip.model, missing)
    extra = dict(state, **{"blocks.99.weight": torch.zeros(1)})
    with pytest.raises(CheckpointMismatchError, match="blocks.99.weight"):
        load_image_encoder_state(clip.model, extra)


def test_task_vector_roundtrip_and_errors(tmp_path):
    theta0 = {"a": torch.tensor([1.0, 2.0]), "b": torch.ones(2, 2)}
    theta = {"a": torch.tensor([1.5, 1.0]), "b": torch.zeros(2, 2)}
    tau = task_vector(theta, theta0)
    torch.testing.assert_close(tau["a"], torch.tensor([0.5, -1.0]))
    path = write_tensors(tau, tmp_path / "tv.safetensors")
    back = read_tensors(path, theta0)
    torch.testing.assert_close(back["b"], -torch.ones(2, 2))
    with pytest.raises(ValueError, match="'b'"):
        read_tensors(path, {"a": theta0["a"], "b": torch.ones(3)})
    with pytest.raises(ValueError, match="'a'"):
        task_vector({"a": torch.ones(3), "b": theta["b"]}, theta0)


def test_corrupt_safetensors_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.safetensors"
    write_tensors({"a": torch.ones(100)}, path)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CorruptCheckpointError, match="broken.safetensors"):
        read_tensors(path)


def test_atomic_save_leaves_no_partial_file(tmp_path, monkeypatch):
    import safetensors.torch as st

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(st, "save_file", boom)
    with pytest.raises(KeyboardInterrupt):
        write_tensors({"a": torch.ones(3)}, tmp_path / "x.safetensors")
    assert list(tmp_path.iterdir()) == []
