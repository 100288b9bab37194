"""The run folder of `dreamfusion generate`: RUN/config.yaml, checkpoints/, metrics.jsonl, validation/,
export/ and a `.lock` file.

- A new run's folder is claimed atomically: two `generate` commands started together with the same `--out`
  get two folders, never one with their checkpoints mixed.
- A process that trains a run holds an OS lock on RUN/.lock for as long as it runs; a second `resume` of
  it is refused. The operating system drops the lock when its holder dies, however it dies, so a lock left
  behind by a killed process is simply taken over.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from types import TracebackType

from filelock import FileLock, Timeout

from dreamfusion.errors import RunFolderError
from dreamfusion.files import claim_dir, free_dir, write_text_atomic

LOCK_NAME = ".lock"


def slug(prompt: str, max_len: int = 40) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")
    return s[:max_len].rstrip("-") or "run"


def free_run_dir(base: Path) -> Path:
    """Where a new run asked for at `base` would go: `base`, or `base-2`, ... if `base` holds something.
    An existing run is never written into; `dreamfusion resume` continues it instead."""
    return free_dir(base)


def claim_run_dir(base: Path) -> Path:
    """Create the new run's folder (the first free of `base`, `base-2`, ...) and own it."""
    try:
        return claim_dir(base, LOCK_NAME)
    except OSError as exc:
        raise RunFolderError(f"cannot create the run folder {base}: {exc.strerror or exc}") from exc


def check_can_create(folder: Path) -> None:
    """Fail now, not after the prior has loaded, if `folder` cannot be created. Permission bits do not stop
    root, so the test is to create (and remove) a temporary folder in the nearest existing parent."""
    parent = folder.absolute()
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise RunFolderError(f"cannot create the run folder {folder}: {parent} is not a folder")
    try:
        probe = tempfile.mkdtemp(prefix=".dreamfusion-write-test-", dir=parent)
        os.rmdir(probe)
    except OSError as exc:
        raise RunFolderError(f"cannot create the run folder {folder}: {exc.strerror or exc}") from exc


def write_run_config(run_dir: Path, text: str) -> None:
    try:
        write_text_atomic(run_dir / "config.yaml", text)
    except OSError as exc:
        raise RunFolderError(f"cannot write the run folder {run_dir}: {exc.strerror or exc}") from exc


class RunLock:
    """`with RunLock(run_dir):` holds RUN/.lock, or raises a UserError at once if another process does."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self._lock = FileLock(run_dir / LOCK_NAME, timeout=0)

    def __enter__(self) -> RunLock:
        try:
            self._lock.acquire()
        except Timeout:
            message = f"{self.run_dir} is in use: another dreamfusion process is training it"
            raise RunFolderError(f"{message} (wait for it, or stop it)") from None
        except OSError as exc:
            raise RunFolderError(f"cannot lock the run folder {self.run_dir}: {exc.strerror or exc}") from exc
        return self

    def abandon(self) -> None:
        """Give up a folder claimed but never written to: release it, then remove it if nothing else came."""
        self._lock.release()
        (self.run_dir / LOCK_NAME).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.run_dir.rmdir()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._lock.release()
