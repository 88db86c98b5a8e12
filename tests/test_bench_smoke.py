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
    for name in ("breadcrumbs", "dare_ta", "dare_ties", "consensus", "tsv_merge", "iso_c", "iso_cts", "wudi",
                 "lines", "opcm", "dop"):
        assert f"| {name} " in out, name
    assert "needs all T" in out and "naive_magmax yes" in out and "dop no" in out
    assert not (tmp_path / "tv").exists()  # the task-vector files are cleaned up


def test_merge_bench_stops_a_case_over_budget(tmp_path, capsys):
    # a zero budget stops the case at its first input read: reported, not crashed, not a number
    assert _bench("merge").main(["--quick", "--tasks", "2", "--reps", "1", "--bandwidth-threads", "1",
                                 "--methods", "copy", "tsv_merge", "--case-budget", "0",
                                 "--dir", str(tmp_path / "tv")]) == 0
    out = capsys.readouterr().out
    assert "tsv_merge, T=2: NOT finished" in out and "too little done to extrapolate" in out


def test_merge_bench_work_fraction():
    bench = _bench("merge")
    shapes = {"a.weight": (4, 2), "b.bias": (3,), "c.weight": (2, 2)}
    progress = bench._Progress(list(shapes), deadline=0.0)
    progress.index = 2  # reading c.weight: a.weight and b.bias are done
    # SVD work m n min(m, n): 4*2*2 = 16 of 16 + 8; non-matrix entries cost nothing
    assert bench._fraction_done("tsv_merge", progress, shapes, 3) == 16 / 24
    # running merges: one pass per vector after the first; in pass 2 of 2 (T = 3), half done
    progress.vector = 2
    assert bench._fraction_done("opcm", progress, shapes, 3) == (1 + 16 / 24) / 2


def test_peers_bench_says_why_without_fusion_bench(capsys):
    pytest.importorskip("torch")
    try:
        import fusion_bench  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("FusionBench is installed here: the comparison itself would run (minutes)")
    assert _bench("peers").main(["--shapes", "tiny", "-T", "2"]) == 2
    err = capsys.readouterr().err
    assert "FusionBench cannot be imported" in err and "fusion_bench" in err


def test_eval_bench_quick(capsys):
    assert _bench("eval").main(["--quick", "--sweeps", "1x1", "1x2"]) == 0
    out = capsys.readouterr().out
    assert "images / s" in out and "per trial: apply" in out


@pytest.mark.slow
def test_finetune_bench_quick(capsys, ray_session):
    assert _bench("finetune").main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "steady-state overhead of the Ray path" in out
