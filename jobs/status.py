"""Where a running or interrupted run stands: fine-tuning units done, running, failed and left.

    python jobs/status.py results/demo
    python jobs/status.py 's3://bucket/runs/table1?endpoint_override=minio:9000&scheme=http'
    python jobs/status.py results/demo --replan --data-root /datasets   # ignore progress.json

Reads ``<storage>/<name>/progress.json`` (written by the driver while it fine-tunes) and checks
the recorded units' checkpoints in storage now, so an interrupted run lists exactly the units a
rerun fine-tunes. Without a progress.json, or with ``--replan``, the plan is rebuilt from the
run's config.yaml, which needs the data (checkpoints are keyed by their data's content).
Starts no Ray and changes nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="the run folder: <storage>/<name> (a local path or a URI)")
    parser.add_argument("--replan", action="store_true",
                        help="rebuild the plan from the run's config.yaml instead of reading progress.json")
    parser.add_argument("--data-root", default=None, help="where the data is here (for --replan)")
    args = parser.parse_args(argv)

    from pipeline import storage
    from pipeline.config import ConfigError
    from pipeline.orchestration.progress.run_status import status_lines

    run_dir = args.run_dir if storage.is_uri(args.run_dir) else str(Path(args.run_dir).expanduser().resolve())
    if not any(storage.exists(storage.join(run_dir, f)) for f in ("config.yaml", "progress.json")):
        print(f"{storage.shown(run_dir)}: not a run folder (neither config.yaml nor progress.json there)",
              file=sys.stderr)
        return 2
    try:
        lines = status_lines(run_dir, time.time(), replan=args.replan, data_root=args.data_root)
    except (ValueError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
