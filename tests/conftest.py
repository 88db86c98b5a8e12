"""Shared fixtures: one Ray session for the whole suite, tiny models and data built here."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

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
    # fast tests first, while no Ray runs in this process (the guard below can then see any that
    # starts one); `ray stop` in a ray_cli test ends every Ray process on the machine: those go last
    items.sort(key=lambda item: (item.get_closest_marker("ray_cli") is not None,
                                 item.get_closest_marker("slow") is not None))


def pytest_runtest_setup(item):
    # before any fixture runs: the session-wide Ray would start before the guard below could look
    if item.get_closest_marker("slow") is None and "ray_session" in item.fixturenames:
        pytest.fail(f"{item.nodeid} uses ray_session but is not marked slow", pytrace=False)


@pytest.fixture(autouse=True)
def _no_ray_in_fast_tests(request):
    """A test not marked slow must not start Ray: it fails if it calls ray.init or leaves Ray running."""
    if request.node.get_closest_marker("slow") is not None:
        yield
        return
    import ray

    was_running = ray.is_initialized()
    calls: list[str] = []
    real_init = ray.init

    def refuse(*args, **kwargs):
        calls.append(str(kwargs.get("address", args[0] if args else None)))
        raise RuntimeError(f"{request.node.nodeid}: ray.init in a fast test (mark it @pytest.mark.slow)")

    ray.init = refuse
    try:
        yield
    finally:
        ray.init = real_init
    left_running = ray.is_initialized() and not was_running
    if left_running:
        ray.shutdown()
    if calls or left_running:
        pytest.fail(f"{request.node.nodeid} is not marked slow but started Ray "
                    f"(ray.init calls: {calls or 'none seen'}; left running: {left_running})", pytrace=False)


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


# tests/test_end_to_end.py's tiny demo: 2 tasks of 1 epoch, every method, a 2-point λ grid
# the paper's methods (the demo config adds the newer merges, which the plumbing tests do not need)
PAPER_METHODS = "methods=[zero_shot,joint,seq_ft,lwf,ewc,randmix,maxabs,avg,ties,magmax]"
TINY_DEMO = ("demo_data=false", "scenarios.0.tasks=2", "finetune.epochs=1", "finetune.batch_size=32",
             "merge.sweep_lambdas=[0.5,1.0]", PAPER_METHODS)


@pytest.fixture(scope="session")
def tiny_demo_run(tmp_path_factory, demo_data_root, ray_session):
    """The tiny demo run once through ``jobs/run_benchmark.py`` (in this process, on the suite's Ray)
    for every slow test that starts from a finished run. Its storage is for reading and for reruns
    that must change nothing; a test that changes files works on a copy (``shutil.copytree`` keeps
    mtimes). ``argv(storage, *extra)`` is the same run's command line for another storage folder."""
    from jobs import run_benchmark

    def argv(storage: Path, *extra: str) -> list[str]:
        return ["--config", str(ROOT / "configs" / "demo.yaml"), "name=e2e", f"storage={storage}",
                f"data_root={demo_data_root}", *TINY_DEMO, *extra]

    storage = tmp_path_factory.mktemp("tiny_demo") / "storage"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)
        start = time.time()
        code = run_benchmark.main(argv(storage))
        seconds = time.time() - start
    assert code == 0
    return SimpleNamespace(storage=storage, run_dir=storage / "e2e", seconds=seconds, argv=argv)
