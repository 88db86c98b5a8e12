"""Run a benchmark: fine-tune on Ray Train, merge, sweep on Tune, write Parquet, tables and figures.

    python jobs/run_benchmark.py                       # the embedded demo (configs/demo.yaml)
    python jobs/run_benchmark.py --config configs/paper/table1.yaml data_root=/datasets storage=s3://bucket/runs
    python jobs/run_benchmark.py 'storage=s3://bucket/runs?endpoint_override=minio:9000&scheme=http&region=us-east-1'
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
        from pipeline.data.prepare import format_readiness  # manifests only: no dataset is loaded

        for line in dict.fromkeys(format_readiness(resolve_paths(cfg)) for cfg in configs):
            print(line)
        return 0
    status = 0
    try:
        for cfg in configs:
            status = max(status, _run_one(cfg, args.no_report))
    except KeyboardInterrupt:
        # what is finished is in storage; a rerun of the same command resumes from it
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return status


def _run_one(cfg: BenchmarkConfig, no_report: bool) -> int:
    from pipeline.orchestration.runner import run_benchmark

    try:
        summary = run_benchmark(cfg)
    except ConfigError as err:  # a DataCheckError (missing or unknown dataset) is one too
        print(f"config error: {err}", file=sys.stderr)
        return 2
    if not no_report:
        # a storage URI too: rendered into a local temp folder, then uploaded beside the results
        from jobs.make_report import render
        from pipeline import storage
        from pipeline.orchestration.runner import resolve_paths
        from pipeline.report.html import run_config_text
        from pipeline.results import read_run

        run_dir = storage.join(resolve_paths(cfg).storage, cfg.name)
        paths = render(read_run(run_dir), storage.join(run_dir, "report"), config=run_config_text(run_dir))
        if "table_md" in paths:
            print(storage.read_text(paths["table_md"]))
        print(f"report: {storage.shown(paths['index'])}")
    print(json.dumps(summary, indent=2))
    for failure in summary.get("failures", []):
        print(f"FAILED {failure['scenario']} {failure['mode']} ({', '.join(failure['methods'])}): "
              f"{failure['error']}", file=sys.stderr)
    return 1 if summary.get("failures") else 0


if __name__ == "__main__":
    raise SystemExit(main())
