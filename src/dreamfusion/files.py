"""Writing files and folders so that a reader never sees half of one, even if the writer is killed."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def write_text_atomic(path: Path, text: str) -> None:
    """Write beside `path`, then rename over it: the rename is atomic within one filesystem."""
    temp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)


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
