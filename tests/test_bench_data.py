"""bench/data.py in its quick mode, so it does not rot (its numbers are not checked here)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_data_bench_quick(capsys):
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("bench_data", BENCH / "data.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    assert module.main(["--quick", "--gpu-rate", "1000"]) == 0
    out = capsys.readouterr().out
    assert "jpeg: decode + crop (today)" in out and "cache + CPU crop" in out and "x jpeg" in out
    assert "1000 (given)" in out and "cores per GPU" in out
