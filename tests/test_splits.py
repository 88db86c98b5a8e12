"""Class- and domain-incremental task splits."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.data.splits import (
    CIFAR100_ORDER,
    DOMAINNET_DOMAINS,
    IMAGENET_R_DOMAINS,
    class_incremental_splits,
    class_order,
    domain_incremental_tasks,
    task_indices,
)


def test_cifar100_order_is_a_permutation() -> None:
    assert len(CIFAR100_ORDER) == 100
    assert sorted(CIFAR100_ORDER) == list(range(100))
    assert CIFAR100_ORDER[:5] == (70, 89, 11, 13, 63)
    assert CIFAR100_ORDER[-1] == 32


def test_class_order_reference_and_natural() -> None:
    assert class_order("cifar100", 100) == list(CIFAR100_ORDER)
    assert class_order("cars", 196) == list(range(196))
    # CUB200's reference order (was the natural order before the official orders were adopted);
    # without class names the labels are the reference's (tests/test_class_orders.py maps names)
    assert class_order("cub200", 200)[:5] == [186, 157, 67, 59, 117]
    assert class_order("some_new_dataset", 7) == list(range(7))
    with pytest.raises(ValueError, match="100"):
        class_order("cifar100", 10)


def test_seeded_class_order_is_a_deterministic_permutation() -> None:
    a = class_order("cars", 50, seed=3)
    assert a == class_order("cars", 50, seed=3)
    assert sorted(a) == list(range(50))
    assert a != class_order("cars", 50, seed=4)


def test_cifar100_five_tasks_split0_is_sorted_first_20() -> None:
    splits = class_incremental_splits(CIFAR100_ORDER, 5)
    assert splits[0] == sorted(CIFAR100_ORDER[:20])
    assert splits[4] == sorted(CIFAR100_ORDER[80:])
    assert [len(s) for s in splits] == [20] * 5


def test_uneven_split_follows_floor_formula() -> None:
    # Cars: 196 classes in 10 tasks -> floor(19.6 * s) boundaries.
    splits = class_incremental_splits(range(196), 10)
    bounds = [math.floor(196 / 10 * s) for s in range(11)]
    assert [len(s) for s in splits] == [b - a for a, b in zip(bounds, bounds[1:])]


@settings(max_examples=60, deadline=None)
@given(data=st.data(), num_classes=st.integers(1, 300))
def test_splits_are_disjoint_sorted_and_cover_every_class(data, num_classes: int) -> None:
    num_tasks = data.draw(st.integers(1, num_classes))
    order = data.draw(st.permutations(range(num_classes)))
    splits = class_incremental_splits(order, num_tasks)
    assert len(splits) == num_tasks
    flat = [c for s in splits for c in s]
    assert sorted(flat) == list(range(num_classes))
    assert all(s == sorted(s) and s for s in splits)
    sizes = [len(s) for s in splits]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("num_tasks", [0, -1, 11])
def test_invalid_num_tasks_raises_naming_it(num_tasks: int) -> None:
    with pytest.raises(ValueError, match=f"num_tasks={num_tasks}"):
        class_incremental_splits(range(10), num_tasks)


def test_domain_orders_match_design() -> None:
    assert DOMAINNET_DOMAINS == ("clipart", "sketch", "real", "infograph", "quickdraw", "painting")
    assert len(IMAGENET_R_DOMAINS) == 15 and len(set(IMAGENET_R_DOMAINS)) == 15
    assert IMAGENET_R_DOMAINS[0] == "tattoo" and IMAGENET_R_DOMAINS[-1] == "deviantart"


def test_domain_incremental_tasks() -> None:
    domains = np.array(["real", "sketch", "real", "clipart", "sketch"])
    tasks = domain_incremental_tasks(domains, ["clipart", "sketch", "real"])
    assert [t.tolist() for t in tasks] == [[3], [1, 4], [0, 2]]
    assert all(t.dtype == np.int64 for t in tasks)
    with pytest.raises(ValueError, match="painting"):
        domain_incremental_tasks(domains, ["clipart", "painting"])


def test_task_indices() -> None:
    targets = np.array([3, 1, 4, 1, 5, 9, 2, 6], dtype=np.int64)
    assert task_indices(targets, [1, 9]).tolist() == [1, 3, 5]
    assert task_indices(targets, []).tolist() == []
    assert task_indices(targets, [1, 9]).dtype == np.int64


@settings(max_examples=30, deadline=None)
@given(num_classes=st.integers(2, 60), per_class=st.integers(1, 4), data=st.data())
def test_task_indices_partition_samples(num_classes: int, per_class: int, data) -> None:
    num_tasks = data.draw(st.integers(1, num_classes))
    targets = np.repeat(np.arange(num_classes), per_class)
    splits = class_incremental_splits(range(num_classes), num_tasks)
    parts = [task_indices(targets, s) for s in splits]
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(targets.size))
