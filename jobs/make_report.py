"""Rebuild a run's tables and figures from its Parquet results alone.

    python jobs/make_report.py RUN_DIR [--out DIR]

Writes table.md, table.tex, the figures whose data exists and index.md into DIR (default
RUN_DIR/report) and prints the Markdown result table.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

try:
    from pipeline import report
except ModuleNotFoundError:
    # Run as a plain script from a checkout: the repository root is not on sys.path.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from pipeline import report

from pipeline import results


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(description="Tables and figures of a MagMax run from its Parquet results.")
    parser.add_argument("run_dir", help="run directory (local path or pyarrow URI such as s3://...)")
    parser.add_argument("--out", default=None, help="report folder (default: RUN_DIR/report)")
    args = parser.parse_args(argv)

    if args.out is None and "://" in args.run_dir:
        parser.error("--out is required when RUN_DIR is a URI (the report is written locally)")
    out = Path(args.out) if args.out is not None else Path(args.run_dir) / "report"
    try:
        df = results.read_run(args.run_dir)
    except (FileNotFoundError, ValueError) as e:
        print(f"make_report: {e}", file=sys.stderr)
        return 1
    if df.empty:
        print(f"make_report: no results under {args.run_dir}", file=sys.stderr)
        return 1
    paths = report.write_report(df, out)
    print(report.to_markdown(report.final_table(df)), end="")
    print(f"\nreport: {paths['index']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
