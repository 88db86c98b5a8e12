"""Run a benchmark: fine-tune on Ray Train, merge, sweep on Tune, write Parquet, tables and figures.

    python jobs/run_benchmark.py                       # the embedded demo (configs/demo.yaml)
    python jobs/run_benchmark.py --config configs/paper/table1.yaml data_root=/datasets storage=s3://bucket/runs
    python jobs/run_benchmark.py finetune.lr=1e-4 merge.magmax_lambda=0.6
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pipeline.config import BenchmarkConfig, ConfigError, load_suite  # noqa: E402

DEFAULT_CONFIG = ROOT / "configs" / "demo.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML config (default: the demo)")
    parser.add_argument("--no-report", action="store_true", help="skip tables and figures")
    parser.add_argument("--plan", action="store_true",
                        help="print the units, what is cached and the GPU-hours left; run nothing")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. finetune.lr=1e-4")
    args = parser.parse_args(argv)
    try:
        # a config with a `suite` (configs/paper/all.yaml) runs the configs it names after itself
        configs = load_suite(args.config, args.overrides)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2

    from pipeline.orchestration.runner import resolve_paths

    if args.plan:
        from pipeline.orchestration.plan import build_plan, format_plan, suite_summary

        plans = [build_plan(resolve_paths(cfg)) for cfg in configs]
        print("\n\n".join(format_plan(plan) for plan in plans))
        if len(plans) > 1:
            print("\n" + suite_summary(plans))
        return 0
    status = 0
    for cfg in configs:
        status = max(status, _run_one(cfg, args.no_report))
    return status


def _run_one(cfg: BenchmarkConfig, no_report: bool) -> int:
    from pipeline.orchestration.runner import run_benchmark

    try:
        summary = run_benchmark(cfg)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    run_dir = Path(cfg.storage if "://" in cfg.storage else Path(cfg.storage).resolve()) / cfg.name
    if not no_report and "://" not in cfg.storage:
        from pipeline.report import write_report

        paths = write_report(run_dir, run_dir / "report")
        table = Path(paths["table.md"] if "table.md" in paths else run_dir / "report" / "table.md")
        if table.is_file():
            print(table.read_text())
        print(f"report: {run_dir / 'report' / 'index.md'}")
    print(json.dumps(summary, indent=2))
    for failure in summary.get("failures", []):
        print(f"FAILED {failure['scenario']} {failure['mode']} ({', '.join(failure['methods'])}): "
              f"{failure['error']}", file=sys.stderr)
    return 1 if summary.get("failures") else 0


if __name__ == "__main__":
    raise SystemExit(main())
