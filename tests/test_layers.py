"""The layering contracts of .importlinter (pure merging, orchestration on top, no cycles in it)."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert exe, "lint-imports (import-linter, a test dependency in pyproject.toml) is not installed"
    got = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert got.returncode == 0, got.stdout[-3000:] + got.stderr[-2000:]
    assert "0 broken" in got.stdout


# a module holds one concern: past this size it is two (the dataset records, a table of facts, may grow)
MAX_LINES = 550
EXEMPT = {"pipeline/data/records.py"}


def test_no_pipeline_module_is_over_the_size_limit():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in (ROOT / "pipeline").rglob("*.py")}
    over = {p: n for p, n in sizes.items() if n > MAX_LINES and p not in EXEMPT}
    assert not over, f"split these modules (over {MAX_LINES} lines): {over}"


def test_function_level_imports_of_pipeline_modules_say_why():
    """An import of a pipeline module inside a function must not hide a cycle: each one left keeps
    a heavy import (open_clip, Ray Train, matplotlib) off a path that must stay light, and a
    comment on it or just above says so. (Lazy imports of optional third-party packages, e.g.
    torchvision's dataset classes or scipy, need no comment.)"""
    import ast

    unexplained = []
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        text = path.read_text()
        lines = text.splitlines()
        for func in ast.walk(ast.parse(text)):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                         else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
                if any(n == "pipeline" or n.startswith("pipeline.") for n in names):
                    context = lines[max(0, node.lineno - 3):node.end_lineno]
                    if not any("#" in line for line in context):
                        unexplained.append(f"{path.relative_to(ROOT)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert not unexplained, "move to the module's top, or say why it stays:\n" + "\n".join(unexplained)
