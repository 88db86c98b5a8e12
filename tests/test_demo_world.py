import numpy as np

from pipeline.data import load_dataset
from pipeline.data.demo_world import demo_classnames, downstream_split, overlap_check, pretraining_pairs


def test_pretraining_never_contains_downstream_images():
    pre, captions = pretraining_pairs(3000, seed=0)
    train, _ = downstream_split(5, seed=0, split="train")
    test, _ = downstream_split(5, seed=0, split="test")
    assert overlap_check(train, pre) == 0 and overlap_check(test, pre) == 0
    assert overlap_check(test, train) == 0
    # pretraining covers the demo concepts broadly
    joined = " ".join(captions)
    for name in demo_classnames():
        colour, shape = name.split(" ", 1)
        assert colour in joined and shape in joined


def test_generation_is_deterministic():
    a, la = downstream_split(2, seed=3, split="test")
    b, lb = downstream_split(2, seed=3, split="test")
    assert np.array_equal(a, b) and np.array_equal(la, lb)


def test_written_image_folder_loads_through_the_registry(demo_data_root):
    bundle = load_dataset("demo_shapes", demo_data_root)
    assert len(bundle.classnames) == 100
    assert len(bundle.train) == 1000 and len(bundle.test) == 600
    image, label = bundle.test[0]
    assert tuple(image.shape) == (3, 32, 32) and 0 <= label < 100
    assert all("_" not in name for name in bundle.classnames)
