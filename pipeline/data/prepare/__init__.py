"""Turn each dataset's official distribution into the layout its loader reads, and check it.

``prepare(name, sources, data_root)``: find the dataset's files in the archives / folders given
(pipeline.data.prepare.layouts), assemble them in ``<data_root>/.prepare/<name>/`` (extracted files
moved, a user's folders hard-linked or copied, never modified), load the result with the project's
own loader, write its manifest (pipeline.data.prepare.manifest), and only then rename the folder
into place. An interrupted run leaves only the staging folder, which the next run removes; a
second run of a finished preparation does nothing and says so. Nothing touches the network.

``verify(data_root, names)``: one `Check` per dataset (ready / missing / wrong counts / not
prepared, and what to do), against the published counts (pipeline.data.published_counts) or
counts the caller passes (tiny test data). ``readiness(cfg)``: the same, one word per dataset a
config reads, for `run_benchmark --plan`.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.data.prepare import manifest as mf
from pipeline.data.prepare.layouts import ASSEMBLERS, FOLDERS, OFFICIAL
from pipeline.data.prepare.sources import PrepareError, Sources
from pipeline.data.published_counts import PUBLISHED, Counts
from pipeline.data.synthetic import TINY_WRITERS

__all__ = ["Check", "FOLDERS", "PrepareError", "STATUS_TEXT", "format_checks", "format_readiness",
           "needed_datasets", "prepare", "readiness", "verify"]

STAGING = ".prepare"
# one-word status (readiness) -> the words of the --verify table
STATUS_TEXT = {"ready": "ready", "missing": "missing", "wrong_counts": "wrong counts",
               "unprepared": "not prepared", "generated": "generated", "unmanaged": "not managed",
               "remote": "remote"}
Expected = Mapping[str, "Counts | Mapping[str, Any]"]


def _known(name: str) -> None:
    if name not in ASSEMBLERS:
        raise PrepareError(f"unknown dataset {name!r}; prepare_data knows: {', '.join(sorted(ASSEMBLERS))}")


def _expected_of(name: str, expected: Expected | None) -> dict[str, Any]:
    table = PUBLISHED if expected is None else expected
    want = table.get(name)
    if want is None:
        return {}
    if isinstance(want, Counts):
        return {**want.as_dict(), "domains": want.domains}
    return dict(want)


# --------------------------------------------------------------------------- verify


@dataclass(frozen=True)
class Check:
    dataset: str
    status: str  # a key of STATUS_TEXT
    detail: str = ""
    todo: str = ""

    @property
    def ready(self) -> bool:
        return self.status == "ready"


def check_one(name: str, data_root: str | Path, expected: Expected | None = None, deep: bool = True) -> Check:
    """The state of one dataset under ``data_root``; ``deep``: also re-list its files and compare
    them with the manifest's digest (seconds on the largest datasets; --plan skips it)."""
    _known(name)
    root = Path(data_root).expanduser()
    target = root / FOLDERS[name]
    how = f"python jobs/prepare_data.py {name} --from <{OFFICIAL[name]}> --data-root {root}"
    if not target.is_dir():
        return Check(name, "missing", f"no folder {target}", how)
    manifest = mf.read(target)
    adopt = f"python jobs/prepare_data.py {name} --data-root {root}   (checks and adopts it as it is)"
    if manifest is None or manifest.get("dataset") != name:
        return Check(name, "unprepared", f"{target} has no {mf.MANIFEST}", adopt)
    if deep:
        count, digest = mf.file_list_digest(target)
        if digest != manifest.get("files", {}).get("sha256"):
            return Check(name, "unprepared",
                         f"files changed since prepared ({count:,} now, {manifest['files'].get('count', 0):,} then)",
                         adopt + ", or re-prepare from the archive with --force")
    problems = mf.count_problems(manifest, _expected_of(name, expected))
    if problems:
        return Check(name, "wrong_counts", "; ".join(problems),
                     f"re-prepare from the complete official data: {how} --force")
    counts = manifest["counts"]
    return Check(name, "ready", f"{counts['train']:,} train / {counts['test']:,} test, {counts['classes']} classes")


def verify(data_root: str | Path, names: Iterable[str], expected: Expected | None = None,
           deep: bool = True) -> list[Check]:
    """One Check per dataset; ``expected``: counts to check instead of the published ones (a
    dataset absent from it is checked for presence and manifest only)."""
    return [check_one(n, data_root, expected, deep) for n in dict.fromkeys(names)]


def format_checks(checks: Sequence[Check]) -> str:
    rows = [("dataset", "status", "details", "what to do")]
    rows += [(c.dataset, STATUS_TEXT.get(c.status, c.status), c.detail, c.todo or "-") for c in checks]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3] for r in rows)


# --------------------------------------------------------------------------- configs


def needed_datasets(cfg: Any) -> list[str]:
    """Every dataset a BenchmarkConfig's scenarios read, in order, each once."""
    return list(dict.fromkeys(n for s in cfg.scenarios for n in s.members))


def readiness(cfg: Any, expected: Expected | None = None) -> dict[str, str]:
    """Dataset -> one-word status for each dataset ``cfg`` reads: ready / missing / wrong_counts /
    unprepared, or generated (profile=tiny, the demo world: written at run time), unmanaged (a
    dataset prepare_data does not know: the run's own data check applies), remote (data_root URI)."""
    declared = {d.name for d in getattr(cfg, "datasets", ())}
    out = {}
    for name in needed_datasets(cfg):
        if (cfg.profile == "tiny" and name in TINY_WRITERS) or (name == "demo_shapes" and cfg.demo_data):
            out[name] = "generated"
        elif name in declared or name not in ASSEMBLERS:
            out[name] = "unmanaged"
        elif "://" in str(cfg.data_root):
            out[name] = "remote"
        else:
            out[name] = check_one(name, cfg.data_root, expected, deep=False).status
    return out


def format_readiness(cfg: Any) -> str:
    """One line for `run_benchmark --plan`."""
    states = readiness(cfg)
    line = "data readiness: " + ", ".join(f"{n} {s}" for n, s in states.items())
    if any(s in ("missing", "wrong_counts", "unprepared") for s in states.values()):
        line += f"  (details: python jobs/prepare_data.py --verify --data-root {cfg.data_root} {' '.join(states)})"
    return line


# --------------------------------------------------------------------------- prepare


def prepare(name: str, sources: Sequence[str | Path], data_root: str | Path, *, force: bool = False,
            log: Callable[[str], None] = print) -> Path:
    """Prepare ``name`` under ``data_root`` from ``sources``; returns the manifest's path.

    The dataset's folder already there: with a manifest that matches its files, nothing is done
    (unless ``force``); without one (or stale), it is adopted as it is when no source or the
    folder itself is given, else replaced only with ``force``.
    """
    _known(name)
    root = Path(data_root).expanduser().resolve()
    folder = FOLDERS[name]
    target = root / folder
    sources = [Path(s).expanduser().resolve() for s in sources]
    if target.is_dir():
        state = check_one(name, root, expected={}, deep=True)
        if state.status == "ready" and not force:
            log(f"{name}: already prepared at {target} ({state.detail}); nothing to do")
            return target / mf.MANIFEST
        if not sources or any(s in (target, root) for s in sources):
            log(f"{name}: checking {target} in place")
            manifest = mf.build(name, root, folder, [target])
            path = mf.write(target, manifest)
            _report(name, manifest, log)
            return path
        if not force:
            raise PrepareError(f"{target} exists but {state.detail}; run without --from to check and adopt it "
                               f"as it is, or pass --force to replace it with what --from holds")
    elif not sources:
        raise PrepareError(f"{name}: {target} not found and no --from given; pass the official data: "
                           f"--from <{OFFICIAL[name]}>")
    staging = root / STAGING / name
    if staging.exists():
        log(f"{name}: removing {staging} left by an interrupted run")
        shutil.rmtree(staging)
    out_root = staging / "out"
    src = Sources(sources, staging / "raw", log)
    log(f"{name}: assembling {folder}/ ...")
    ASSEMBLERS[name](src, out_root / folder)
    try:
        manifest = mf.build(name, out_root, folder, sources)
    except FileNotFoundError as err:  # DatasetNotFoundError: names the path and the layout
        raise PrepareError(f"{name}: what --from holds does not load as {name} after assembly (left in "
                           f"{staging} to look at; the next run removes it):\n{err}") from err
    mf.write(out_root / folder, manifest)
    if target.exists():  # --force: swap, then drop the old copy
        old = staging / "old"
        target.rename(old)
    (out_root / folder).rename(target)  # the commit point: the folder appears complete or not at all
    shutil.rmtree(staging)
    try:
        (root / STAGING).rmdir()
    except OSError:
        pass  # another dataset is being prepared
    _report(name, manifest, log)
    return target / mf.MANIFEST


def _report(name: str, manifest: Mapping[str, Any], log: Callable[[str], None]) -> None:
    c = manifest["counts"]
    log(f"{name}: prepared: {c['train']:,} train / {c['test']:,} test, {c['classes']} classes, "
        f"{c['images']:,} images; manifest {manifest['folder']}/{mf.MANIFEST}")
    problems = mf.count_problems(manifest, _expected_of(name, None))
    if problems:
        log(f"{name}: differs from the published counts: {'; '.join(problems)} "
            "(--verify will say 'wrong counts')")
