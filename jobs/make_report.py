"""Rebuild a run's tables and figures from its Parquet results alone.

    python jobs/make_report.py RUN_DIR [--out DIR] [--tables table1 table4 ...] [--backbone ID]
    python jobs/make_report.py 's3://bucket/runs/demo?endpoint_override=host:9000&scheme=http&region=us-east-1'

RUN_DIR and DIR may be local folders or storage URIs (read and written through
``pipeline.storage``; a URI's report is rendered into a local temp folder, then uploaded).
Writes into DIR (default RUN_DIR/report): table.md/.tex (every final result), the paper's
tables the run belongs to as table<N>.md/.tex with the paper's numbers beside ours (or exactly
--tables), the figures whose rows exist as PNG and PDF, index.md linking all of it, and
index.html, all of it on one self-contained page (figures embedded, config.yaml shown). Prints
the Markdown result table and the paper tables written.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

try:
    from pipeline import report
except ModuleNotFoundError:
    # Run as a plain script from a checkout: the repository root is not on sys.path.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from pipeline import report

from pipeline import paper, results, storage
from pipeline.report.html import run_config_text


def render(df: Any, out: str | os.PathLike[str], tables: Sequence[str] | None = None,
           backbone: str | None = None, config: str | None = None) -> dict[str, str]:
    """``report.write_report`` into ``out``, a local folder or a storage URI; returns
    ``{name: path or URI}`` as it names them. ``config``: the run's config.yaml text, shown in
    index.html (``run_config_text(run_dir)`` reads it).

    The tables and figures are drawn by local tools (matplotlib writes files), so a URI's report
    is rendered into a temp folder first and then uploaded file by file, each whole.
    """
    if not storage.is_uri(out):
        return {k: str(v) for k, v in report.write_report(df, out, tables=tables, backbone=backbone,
                                                          config=config).items()}
    with tempfile.TemporaryDirectory(prefix="magmax-report-") as tmp:
        paths = report.write_report(df, tmp, tables=tables, backbone=backbone, config=config)
        storage.upload_dir(tmp, out)
        return {k: storage.join(out, *Path(v).relative_to(tmp).parts) for k, v in paths.items()}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(description="Tables and figures of a MagMax run from its Parquet results.")
    parser.add_argument("run_dir", help="run directory (local path or pyarrow URI such as s3://...)")
    parser.add_argument("--out", default=None, help="report folder or URI (default: RUN_DIR/report)")
    parser.add_argument("--tables", nargs="+", choices=paper.TABLES, default=None,
                        help="paper tables to render (default: those the run's rows belong to)")
    parser.add_argument("--backbone", default=None,
                        help="lay out --tables from this backbone's rows (e.g. ViT-B-16/openai) instead of each "
                             "table's own")
    args = parser.parse_args(argv)

    if args.backbone is not None and args.tables is None:
        parser.error("--backbone needs --tables")
    out = args.out if args.out is not None else storage.join(args.run_dir, "report")
    try:
        df = results.read_run(args.run_dir)
    except (OSError, ValueError) as e:
        print(f"make_report: {e}", file=sys.stderr)
        return 1
    if df.empty:
        print(f"make_report: no results under {args.run_dir}", file=sys.stderr)
        return 1
    try:
        paths = render(df, out, tables=args.tables, backbone=args.backbone, config=run_config_text(args.run_dir))
    except (ValueError, OSError) as e:
        print(f"make_report: {e}", file=sys.stderr)
        return 1
    print(report.to_markdown(report.final_table(df)), end="")
    written = [name for name in paper.TABLES if f"{name}_md" in paths]
    if written:
        print("\npaper tables: " + ", ".join(storage.shown(paths[f"{n}_md"]) for n in written))
    print(f"\nreport: {storage.shown(paths['index'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
