"""Prepare datasets from their official distributions, or check the prepared ones.

    python jobs/prepare_data.py cifar100 --from ~/Downloads/cifar-100-python.tar.gz --data-root /datasets
    python jobs/prepare_data.py domainnet --from ~/Downloads/domainnet/ --data-root /datasets
    python jobs/prepare_data.py --verify --data-root /datasets cifar100 cub200
    python jobs/prepare_data.py --verify --config configs/paper/table1.yaml   # what that config reads

--from takes archives (.tar, .tar.gz, .tgz, .zip, .gz) or folders (already extracted, or holding
the archives), repeatable. Nothing is downloaded. A second run does nothing; an interrupted one
can be rerun. --verify exits 0 only if every dataset asked for is ready.
--expect FILE.json: counts to check instead of the published ones ({"cifar100": {"train": 200,
"test": 100, "classes": 100}}; keys left out are not checked), e.g. for a subset or test data.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", nargs="*", help="dataset name(s): one to prepare; any to --verify (default: all)")
    parser.add_argument("--from", dest="sources", action="append", default=[], metavar="PATH",
                        help="official archive or folder (repeatable)")
    parser.add_argument("--data-root", help="where the datasets live (the configs' data_root)")
    parser.add_argument("--force", action="store_true", help="replace a prepared or differing copy")
    parser.add_argument("--verify", action="store_true", help="check instead of prepare")
    parser.add_argument("--config", help="--verify the datasets this config reads (and its data_root)")
    parser.add_argument("--expect", metavar="FILE.json", help="expected counts instead of the published ones")
    args = parser.parse_args(argv)

    from pipeline.data.prepare import FOLDERS, PrepareError, format_checks, needed_datasets, prepare, verify

    data_root = args.data_root
    names = list(args.datasets)
    if args.config:
        from pipeline.config import ConfigError, load_suite
        from pipeline.orchestration.runner import resolve_paths

        try:
            configs = [resolve_paths(c) for c in load_suite(args.config)]
        except ConfigError as err:
            print(f"config error: {err}", file=sys.stderr)
            return 2
        data_root = data_root or configs[0].data_root
        names += [n for c in configs for n in needed_datasets(c) if n in FOLDERS]
    if not data_root:
        parser.error("--data-root is required (or --config, whose data_root is used)")
    unknown = [n for n in names if n not in FOLDERS]
    if unknown:
        parser.error(f"unknown dataset(s) {', '.join(unknown)}; known: {', '.join(sorted(FOLDERS))}")
    try:
        if args.verify:
            expected = json.loads(Path(args.expect).read_text()) if args.expect else None
            checks = verify(data_root, names or sorted(FOLDERS), expected)
            print(format_checks(checks))
            return 0 if all(c.ready for c in checks) else 1
        if len(names) != 1:
            parser.error("name exactly one dataset to prepare (or pass --verify)")
        prepare(names[0], args.sources, data_root, force=args.force)
    except PrepareError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as err:  # an --expect file; a loader's DatasetNotFoundError
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
