"""configs/paper: every table and figure config loads, profile=tiny keeps its structure, all.yaml
shares every fine-tuning of the single-table configs, and (slow) the tiny run renders the
paper's tables with the paper's rows and columns."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pytest

from pipeline import paper
from pipeline.config import PROFILES, load_config, load_suite

ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT / "configs" / "paper"
CONFIGS = sorted(PAPER.glob("*.yaml"))
# the configs whose units all.yaml's ViT-B/16 part must cover (7 and 8 are its suite)
B16 = ["table1", "table2", "table3", "table4", "table5", "table6", "figure2_5_6_7_8_13", "figure3_10", "figure4_11", "figure9",
       "figure12"]


def test_every_table_and_figure_has_a_config():
    names = {p.stem for p in CONFIGS}
    assert {"all", "table7", "table8", *B16} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_tiny_profile_keeps_the_structure(path):
    full = load_config(path)
    tiny = load_config(path, ["profile=tiny"])
    assert full.profile == "full" and tiny.profile == "tiny"
    # what the table is about stays: scenarios, methods, λ, analyses
    assert tiny.scenarios == full.scenarios and tiny.methods == full.methods
    assert (tiny.merge.magmax_lambda, tiny.merge.ties_lambda) == (full.merge.magmax_lambda, full.merge.ties_lambda)
    # what makes it run on CPUs changes
    assert tiny.model.backbone == "local-dir:assets/tiny_clip" and not tiny.model.allow_download
    assert tiny.finetune.epochs == 1 and tiny.ray.num_workers == 0
    assert full.model.backbone in ("ViT-B-16", "ViT-L-14") and full.finetune.lr == 1e-5
    assert full.finetune.batch_size == 128 and full.finetune.warmup_steps == 500 and full.seed == 5


def test_command_line_overrides_win_over_the_profile():
    cfg = load_config(PAPER / "table1.yaml", ["profile=tiny", "finetune.epochs=2", "data_root=/x"])
    assert cfg.finetune.epochs == 2 and cfg.data_root == "/x"
    assert cfg.finetune.batch_size == PROFILES["tiny"]["finetune"]["batch_size"]


def test_tables_7_and_8_are_table_1_on_other_backbones():
    t1 = load_config(PAPER / "table1.yaml")
    for name, backbone in (("table7", ("ViT-L-14", "openai")), ("table8", ("ViT-B-16", "laion400m_e32"))):
        cfg = load_config(PAPER / f"{name}.yaml")
        assert (cfg.model.backbone, cfg.model.pretrained) == backbone
        assert cfg.scenarios == t1.scenarios and cfg.methods == t1.methods and cfg.finetune == t1.finetune


def test_table1_config_has_the_papers_columns():
    cfg = load_config(PAPER / "table1.yaml")
    ours = {(s.dataset, s.tasks) for s in cfg.scenarios}
    layout = {(c.dataset, c.tasks) for c in paper.LAYOUTS["table1"].columns if c.dataset != "avg"}
    assert ours == layout


def _units(cfg) -> set[tuple[str, tuple[str, tuple[int, ...]]]]:
    from pipeline.orchestration.plan import build_plan
    from pipeline.orchestration.runner import resolve_paths

    return {(Path(u.folder).name, u.unit.identity) for u in build_plan(resolve_paths(cfg)).units}


def test_joint_is_fine_tuned_once_per_dataset_and_backbone(tmp_path):
    """Joint's weights do not depend on the task count: Table 1's nine class-incremental
    scenarios over four datasets need four Joint units, one per dataset."""
    from pipeline.orchestration.plan import build_plan
    from pipeline.orchestration.runner import resolve_paths

    cfg = load_config(PAPER / "table1.yaml", [f"storage={tmp_path}"])
    joint = [u for u in build_plan(resolve_paths(cfg)).units if u.unit.mode == "joint"]
    datasets = {s.dataset for s in cfg.scenarios if s.kind == "class_incremental"}
    scenarios = [s for s in cfg.scenarios if s.kind == "class_incremental"]
    assert len(scenarios) > len(datasets)
    assert sorted(u.unit.scenario.dataset for u in joint) == sorted(datasets)
    for u in joint:
        assert u.unit.outputs == [0]
        assert len(u.scenarios) == sum(s.dataset == u.unit.scenario.dataset for s in scenarios)
    # the sequential chains still differ per task count
    seq = [u for u in build_plan(resolve_paths(cfg)).units if u.unit.mode == "seq"]
    assert len({Path(u.folder).name for u in seq}) == len(scenarios)


def test_all_yaml_shares_every_fine_tuning_of_the_single_configs(tmp_path, capsys):
    from jobs import run_benchmark

    storage = [f"storage={tmp_path}"]
    suite = load_suite(PAPER / "all.yaml", storage)
    assert [c.name for c in suite] == ["paper_all", "table7", "table8"]
    together: set = set()
    for cfg in suite:
        together |= _units(cfg)
    alone = 0
    for name in [*B16, "table7", "table8"]:
        units = _units(load_config(PAPER / f"{name}.yaml", storage))
        assert units <= together, name
        alone += len(units)
    assert alone > len(together)  # Tables 3, 4, 6 and the figures re-use Table 1's units
    assert run_benchmark.main(["--plan", "--config", str(PAPER / "all.yaml"), *storage]) == 0
    out = capsys.readouterr().out
    assert f"units: {len(together)} unique" in out and "estimated GPU-hours left for the suite" in out


def test_tiny_datasets_are_deterministic_and_have_the_real_class_counts(tmp_path):
    from pipeline.data import load_dataset
    from pipeline.data.synthetic import write_tiny_datasets

    def digest(root: Path) -> str:
        h = hashlib.sha256()
        for p in sorted(root.rglob("*")):
            if p.is_file():
                h.update(str(p.relative_to(root)).encode() + p.read_bytes())
        return h.hexdigest()

    assert write_tiny_datasets(tmp_path / "a", ["cifar100", "cub200"]) == ["cifar100", "cub200"]
    assert write_tiny_datasets(tmp_path / "a", ["cifar100"]) == []  # written once
    write_tiny_datasets(tmp_path / "b", ["cub200", "cifar100"])
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    for name, classes in (("cifar100", 100), ("cub200", 200)):
        bundle = load_dataset(name, tmp_path / "a")
        assert len(bundle.classnames) == classes
        assert len(bundle.train) == 2 * classes and len(bundle.test) == classes


# --------------------------------------------------------------------------------------------
# the tiny run: every Tables 1-4, 6-8 and figure path through the real entry points


def _table_rows_and_columns(markdown: str) -> tuple[list[str], list[str], list[list[str]]]:
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    header, body = cells[0], [r for r in cells[2:]]
    return header, [r[0] for r in body], body


def _check_rendered(report_dir: Path, table: str, filled: set[str]) -> None:
    layout = paper.LAYOUTS[table]
    header, row_labels, body = _table_rows_and_columns((report_dir / f"{table}.md").read_text())
    # the paper's columns, in the paper's order (after the row header and, for 4/5, the FT column)
    data_header = header[2:] if layout.ft_column else header[1:]
    assert [re.sub(r"\s+", " ", h) for h in data_header] == [c.label for c in layout.columns], table
    assert [r.strip("*_ ") for r in row_labels] == [r.label for r in layout.rows], table
    for i, row in enumerate(layout.rows):
        if row.delta is not None or not row.method:
            continue
        for j, col in enumerate(layout.columns):
            if col.label not in filled:
                continue
            cell = body[i][j + (2 if layout.ft_column else 1)]
            # "ours / paper (diff)": ours must be a number, not the missing mark
            assert not cell.startswith("–"), (table, row.label, col.label, cell)


# CI runs one scenario per kind of column (every table row, every figure, both kinds of
# incremental learning); MAGMAX_PAPER_TINY_FULL=1 runs all 18 of all.yaml (measured 47 min on a
# loaded 2-core machine, against ~half of that for this subset)
SUBSET = ("[{dataset: cifar100, tasks: 5, analyses: [layer_magnitudes]},"
          " {dataset: cifar100, tasks: 10, analyses: [pruning, kth_magnitude, update_consistency, contributions,"
          " leave_one_out, entry_histograms]},"
          " {dataset: imagenet_r, tasks: 10, analyses: [layer_magnitudes]}, {dataset: cub200, tasks: 5},"
          " {dataset: cars, tasks: 5}, {dataset: domainnet, tasks: 6, methods: &t2 [zero_shot, lwf, ewc, randmix,"
          " maxabs, avg, ties, magmax]},"
          " {dataset: domainnet, kind: domain_incremental, tasks: 6, methods: *t2},"
          " {dataset: imagenet_r, tasks: 15, methods: *t2},"
          " {dataset: imagenet_r, kind: domain_incremental, tasks: 15, methods: *t2},"
          " {kind: multi_dataset, name: 8datasets, datasets: [cars, mnist, eurosat, svhn, resisc45, sun397, dtd, gtsrb],"
          " methods: [zero_shot, randmix, avg, ties, maxabs, randmix_seq, avg_seq, ties_seq, magmax]}]")


@pytest.mark.slow
def test_tiny_paper_run_renders_every_table(tmp_path, ray_session, monkeypatch):
    """all.yaml (Tables 1-6 and every figure in one run) with profile=tiny, then make_report; then
    Tables 7 and 8 (all.yaml's suite: Table 1 on other backbones) through their own configs."""
    from jobs import make_report, run_benchmark

    monkeypatch.chdir(ROOT)
    argv = ["--config", str(PAPER / "all.yaml"), "profile=tiny", f"storage={tmp_path / 'storage'}",
            f"data_root={tmp_path / 'data'}", "suite=[]", "--no-report"]
    full = os.environ.get("MAGMAX_PAPER_TINY_FULL") == "1"
    if not full:
        argv.insert(-1, f"scenarios={SUBSET}")  # before --no-report: argparse takes overrides in one run
    assert run_benchmark.main(argv) == 0
    run_dir = tmp_path / "storage" / "paper_all"
    out = tmp_path / "report"
    tables = ["table1", "table2", "table3", "table4", "table5", "table6"]
    assert make_report.main([str(run_dir), "--out", str(out), "--tables", *tables, "--backbone", "tiny_clip"]) == 0
    cil = {c.label for c in paper.LAYOUTS["table1"].columns}
    if not full:
        cil = {"CIFAR100 /5", "CIFAR100 /10", "ImageNet-R /10", "CUB200 /5", "Cars /5"}
    for table in ("table1", "table3", "table4", "table6"):
        _check_rendered(out, table, cil)
    # Tables 7 and 8 through their own configs (all.yaml's suite): under profile=tiny their backbone
    # is the tiny CLIP too, so every unit is all.yaml's already and only merging and evaluation run
    for table in ("table7", "table8"):
        argv = ["--config", str(PAPER / f"{table}.yaml"), "profile=tiny", f"storage={tmp_path / 'storage'}",
                f"data_root={tmp_path / 'data'}", "scenarios=[{dataset: cifar100, tasks: 5}]", "--no-report"]
        assert run_benchmark.main(argv) == 0
        summary = json.loads((tmp_path / "storage" / table / "summary.json").read_text())
        assert summary["fine_tuned_tasks"] == 0, summary
        assert make_report.main([str(tmp_path / "storage" / table), "--out", str(tmp_path / table), "--tables",
                                 table, "--backbone", "tiny_clip"]) == 0
        _check_rendered(tmp_path / table, table, {"CIFAR100 /5"})
    _check_rendered(out, "table2", {c.label for c in paper.LAYOUTS["table2"].columns})
    _check_rendered(out, "table5", {c.label for c in paper.LAYOUTS["table5"].columns})
    # every figure of the report: 2, 3/10, 4, 5, 6, 7, 8, 9, 11, 12, 13
    from pipeline.report import FIGURES

    for spec in FIGURES:
        if spec.key == "continual_matrices":
            continue  # beyond the paper: its merges are not in all.yaml
        assert (out / f"{spec.key}.png").is_file(), spec.title
    assert "Not drawn" not in (out / "index.md").read_text()

    # beyond the paper at profile=tiny (issue 12): every newer merge on Table 1's first scenario,
    # on all.yaml's fine-tunings (none of its own), rendered as the "Beyond the paper" table and
    # the continual merges' accuracy matrices
    argv = ["--config", str(ROOT / "configs" / "beyond" / "table1_plus.yaml"), "profile=tiny",
            f"storage={tmp_path / 'storage'}", f"data_root={tmp_path / 'data'}",
            "scenarios=[{dataset: cifar100, tasks: 5}]", "merge.sweep_lambdas=[0.5]", "--no-report"]
    assert run_benchmark.main(argv) == 0
    plus = tmp_path / "storage" / "table1_plus"
    summary = json.loads((plus / "summary.json").read_text())
    assert summary["fine_tuned_tasks"] == 0 and summary["failures"] == [], summary
    assert make_report.main([str(plus), "--out", str(tmp_path / "plus")]) == 0
    beyond = (tmp_path / "plus" / "beyond.md").read_text()
    for name in ("Breadcrumbs", "DARE", "TSV-M", "Iso-C", "Iso-CTS", "WUDI", "OPCM", "DOP", "MagMax"):
        assert name in beyond, name
    assert "–" not in beyond.split("\n", 2)[2]  # every cell measured
    assert (tmp_path / "plus" / "continual_matrices.png").is_file()
    # and Table 2's beyond config on one of its scenarios (domain-incremental DomainNet), on
    # all.yaml's fine-tunings too: a final row for every method and variant it names
    argv = ["--config", str(ROOT / "configs" / "beyond" / "table2_plus.yaml"), "profile=tiny",
            f"storage={tmp_path / 'storage'}", f"data_root={tmp_path / 'data'}",
            "scenarios=[{dataset: domainnet, kind: domain_incremental, tasks: 6}]", "merge.sweep_lambdas=[0.5]",
            "--no-report"]
    assert run_benchmark.main(argv) == 0
    plus2 = tmp_path / "storage" / "table2_plus"
    summary = json.loads((plus2 / "summary.json").read_text())
    assert summary["fine_tuned_tasks"] == 0 and summary["failures"] == [], summary
    from pipeline.config import load_config

    named = set(load_config(ROOT / "configs" / "beyond" / "table2_plus.yaml", ["profile=tiny"]).methods)
    assert set(summary["variants"]) == named, set(summary["variants"]) ^ named
