"""What `--from` points at: archives (extracted safely into a staging folder) and folders,
searched for the files and folders a dataset's layout is assembled from.

Extraction never writes outside its target (tar's "data" filter; zip member names checked), and
folders given by the user are never modified: their files are hard-linked into the staging
folder where the file system allows it (no extra space, instant), else copied. What was
extracted into staging is moved.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tarfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
# how deep below a source the search looks: DomainNet's raw/<n>/<domain>/<class> is 3
_MAX_DEPTH = 6


class PrepareError(RuntimeError):
    """Preparing or verifying a dataset failed; the message names the path and what was expected."""


def is_archive(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(TAR_SUFFIXES) or name.endswith((".zip", ".gz", ".rar", ".7z"))


def extract(archive: Path, dest: Path) -> None:
    """Extract one archive into ``dest`` (created). ``x.gz`` (not a tar) is gunzipped to ``dest/x``."""
    name = archive.name.lower()
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if name.endswith(TAR_SUFFIXES) or (name.endswith(".gz") and tarfile.is_tarfile(archive)):
            with tarfile.open(archive) as tar:
                tar.extractall(dest, filter="data")  # refuses absolute paths, '..', device files
        elif name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                for member in zf.namelist():
                    parts = Path(member).parts
                    if Path(member).is_absolute() or ".." in parts:
                        raise PrepareError(f"{archive}: member {member!r} would extract outside the target")
                zf.extractall(dest)
        elif name.endswith(".gz"):
            with gzip.open(archive, "rb") as src, (dest / archive.name[:-3]).open("wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
        else:
            raise PrepareError(
                f"{archive}: {archive.suffix} archives cannot be read here (no rar/7z support); "
                "extract it with unrar/7z and pass the extracted folder to --from"
            )
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, gzip.BadGzipFile) as err:
        raise PrepareError(f"{archive}: not a readable archive ({type(err).__name__}: {err}); "
                           "download it again") from err


def link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another file system, or one without hard links
        shutil.copy2(src, dst)


class Sources:
    """The folders searched: each ``--from`` folder as given, each archive's extraction."""

    def __init__(self, paths: Iterable[Path], raw: Path, log: Callable[[str], None] = print) -> None:
        self.given = [Path(p) for p in paths]
        self.raw = raw
        self.roots: list[Path] = []
        for i, path in enumerate(self.given):
            if not path.exists():
                raise PrepareError(f"--from {path}: no such file or folder")
            if path.is_dir():
                self.roots.append(path)
                # archives lying in a given folder (DomainNet's zips, MNIST's .gz) are extracted too
                inner = sorted(p for p in path.iterdir() if p.is_file() and is_archive(p))
                for j, archive in enumerate(inner):
                    self._extract(archive, raw / f"{i}.{j}", log)
            elif is_archive(path):
                self._extract(path, raw / str(i), log)
            else:  # a single plain file (SVHN's .mat): searched by its folder, that file only
                self.roots.append(path)
        self._index: list[tuple[Path, list[str], list[str]]] | None = None

    def _extract(self, archive: Path, dest: Path, log: Callable[[str], None]) -> None:
        log(f"  extracting {archive} ...")
        extract(archive, dest)
        self.roots.append(dest)

    def owned(self, path: Path) -> bool:
        """Whether ``path`` was extracted here (so it may be moved rather than linked)."""
        return path.resolve().is_relative_to(self.raw.resolve())

    def walk(self) -> list[tuple[Path, list[str], list[str]]]:
        """(folder, subfolders, files) of every folder under the sources, to _MAX_DEPTH."""
        if self._index is None:
            index = []
            for root in self.roots:
                if root.is_file():
                    index.append((root.parent, [], [root.name]))
                    continue
                base = len(root.parts)
                for folder, dirs, files in os.walk(root):
                    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                    if len(Path(folder).parts) - base >= _MAX_DEPTH:
                        dirs[:] = []
                    index.append((Path(folder), list(dirs), sorted(files)))
            self._index = index
        return self._index

    def find_dir(self, what: str, test: Callable[[Path, list[str], list[str]], bool],
                 required: bool = True) -> Path | None:
        """The shallowest folder for which ``test(folder, subfolders, files)`` holds."""
        hits = [f for f, d, fs in self.walk() if test(f, d, fs)]
        if hits:
            return min(hits, key=lambda p: (len(p.parts), str(p)))
        if required:
            raise self.not_found(what)
        return None

    def find_file(self, names: Iterable[str], what: str, required: bool = True) -> Path | None:
        """The shallowest file named the first of ``names`` that any source has."""
        names = list(names)
        hits = [(names.index(n), len(f.parts), f / n) for f, _, fs in self.walk() for n in fs if n in names]
        if hits:
            return min(hits)[2]
        if required:
            raise self.not_found(what)
        return None

    def not_found(self, what: str) -> PrepareError:
        given = ", ".join(str(p) for p in self.given) or "(nothing: pass --from)"
        return PrepareError(f"{what} not found in --from {given}")

    def place(self, src: Path, dst: Path) -> None:
        """Put a file or folder from the sources at ``dst``: moved if extracted here, else linked."""
        if dst.exists():
            raise PrepareError(f"{dst}: already assembled (two sources give the same path?)")
        dst.parent.mkdir(parents=True, exist_ok=True)
        if self.owned(src):
            os.replace(src, dst)
        elif src.is_dir():
            shutil.copytree(src, dst, copy_function=lambda s, d: link_or_copy(Path(s), Path(d)))
        else:
            link_or_copy(src, dst)


def files_under(folder: Path, skip: str = "") -> Iterator[str]:
    """Relative posix paths of every regular file under ``folder`` (``skip``: a top-level name)."""
    for current, dirs, files in os.walk(folder):
        dirs.sort()
        rel = Path(current).relative_to(folder)
        for f in files:
            path = (rel / f).as_posix()
            if path != skip:
                yield path
