"""Writing files and folders so that a reader never sees half of one, even if the writer is killed."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary name beside `path` to write to; when the block ends, it is renamed over `path` (atomic
    within one filesystem), or removed if the block failed. The name starts with a dot and keeps the
    suffix, so writers that add one (numpy) or read it (PIL) behave, and folder scans skip it."""
    temp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        yield temp
        os.replace(temp, path)
    finally:
        with suppress(FileNotFoundError):
            temp.unlink()


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as temp:
        temp.write_text(text, encoding="utf-8")


def free_dir(base: Path) -> Path:
    """`base` if it does not exist (or is an empty folder), else the first free `base-2`, `base-3`, ...
    Only a guess: another process may take it before the caller does. `claim_dir` takes one for certain."""
    candidate, n = base, 1
    while candidate.exists() and (not candidate.is_dir() or any(candidate.iterdir())):
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def claim_dir(base: Path, marker: str) -> Path:
    """Create and take the first of `base`, `base-2`, `base-3`, ... that is absent or an empty folder, with
    `marker` (a file name) made inside it. Two processes asking for the same base at once get two folders:
    whoever creates the marker first (O_EXCL, atomic) owns the folder, and the other moves on."""
    candidate, n = base, 1
    while True:
        try:
            candidate.mkdir(parents=True, exist_ok=True)
            if not any(entry.name != marker for entry in candidate.iterdir()):
                os.close(os.open(candidate / marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
                return candidate
        except (FileExistsError, NotADirectoryError):
            pass  # a file of that name, or a folder someone else has just claimed
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")


def build_folder_once(folder: Path, build: Callable[[Path], None], done_marker: str) -> Path:
    """`folder`, built by `build(staging)` into a staging folder and renamed into place, unless it already
    holds `done_marker` (a relative path). Two processes may build at once; the first rename wins."""
    if (folder / done_marker).is_file():
        return folder
    staging = folder.with_name(f".{folder.name}.partial{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    build(staging)
    if folder.exists():  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    else:
        staging.rename(folder)
    return folder


def dreamfusion_cache() -> Path:
    """$DREAMFUSION_CACHE, default ~/.cache/dreamfusion (under $XDG_CACHE_HOME when set)."""
    root = os.environ.get("DREAMFUSION_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "dreamfusion"
    )
    return Path(root)
