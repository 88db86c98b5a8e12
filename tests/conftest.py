"""Shared fixtures: one Ray session for the whole suite, tiny models and data built here."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

# two cores: one intra-op thread per process avoids OpenMP spin contention between processes
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    # `ray stop` in a ray_cli test ends every Ray process on the machine: those tests go last
    items.sort(key=lambda item: item.get_closest_marker("ray_cli") is not None)


@pytest.fixture(scope="session")
def ray_session():
    import ray

    if not ray.is_initialized():
        # "local": a fresh instance even if a `ray start` cluster runs on this machine (Ray would join it)
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_clip_dir() -> Path:
    return ROOT / "assets" / "tiny_clip"


@pytest.fixture(scope="session")
def demo_data_root(tmp_path_factory) -> Path:
    """A small demo world (10 train, 6 test images per class) in its ImageFolder layout."""
    from pipeline.data.demo_world import write_image_folder

    root = tmp_path_factory.mktemp("demo_data")
    write_image_folder(root / "demo_shapes", train_per_class=10, test_per_class=6, seed=0)
    return root
