"""The benchmarks in their quick modes, so they do not rot (numbers are not checked here)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _bench(name: str):
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def test_merge_bench_quick(tmp_path, capsys):
    assert _bench("merge").main(["--quick", "--tasks", "2", "--reps", "1", "--bandwidth-threads", "1",
                                 "--dir", str(tmp_path / "tv")]) == 0
    out = capsys.readouterr().out
    assert "## MagMax fold vs copy" in out and "naive_magmax" in out and "kth_magnitude" in out
    assert "bit-identical at every T run: True" in out
    assert not (tmp_path / "tv").exists()  # the task-vector files are cleaned up


def test_eval_bench_quick(capsys):
    assert _bench("eval").main(["--quick", "--sweeps", "1x1", "1x2"]) == 0
    out = capsys.readouterr().out
    assert "images / s" in out and "per trial: apply" in out


@pytest.mark.slow
def test_finetune_bench_quick(capsys, ray_session):
    assert _bench("finetune").main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "steady-state overhead of the Ray path" in out
