"""Zero-shot template sets: counts from design.md and the reference code, one slot each."""

import pytest

from pipeline.data import templates as T

EXPECTED_COUNTS = {
    "cifar100": 18,
    "imagenet_r": 80,
    "domainnet": 80,
    "cub200": 80,
    "cars": 8,
    "dtd": 8,
    "eurosat": 3,
    "gtsrb": 3,
    "mnist": 1,
    "svhn": 1,
    "resisc45": 18,
    "sun397": 2,
}


@pytest.mark.parametrize(("dataset", "count"), sorted(EXPECTED_COUNTS.items()))
def test_template_counts(dataset: str, count: int) -> None:
    assert len(T.get_templates(dataset)) == count


@pytest.mark.parametrize("dataset", sorted(T.TEMPLATES))
def test_each_template_has_one_slot_and_no_duplicates(dataset: str) -> None:
    templates = T.get_templates(dataset)
    assert all(t.count("{}") == 1 for t in templates)
    assert len(set(templates)) == len(templates)
    assert all(t.format("x") for t in templates)


def test_imagenet_set_is_shared_and_known_prompts_present() -> None:
    assert T.get_templates("imagenet_r") == T.get_templates("domainnet") == T.get_templates("cub200")
    assert T.render(T.CIFAR100_TEMPLATES, "apple")[0] == "a photo of a apple."
    assert 'a zoomed in photo of a "stop" traffic sign.' in T.render(T.GTSRB_TEMPLATES, "stop")
    assert T.render(T.MNIST_TEMPLATES, "7") == ['a photo of the number: "7".']


def test_get_templates_returns_a_copy_and_rejects_unknown() -> None:
    t = T.get_templates("cars")
    t.append("mutated {}")
    assert len(T.get_templates("cars")) == 8
    with pytest.raises(KeyError, match="known"):
        T.get_templates("nope")
