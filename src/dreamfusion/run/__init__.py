"""A generate run's folder: its name, its atomic creation and the lock a training process holds on it."""

from dreamfusion.run.folder import (
    LOCK_NAME,
    RunLock,
    check_can_create,
    claim_run_dir,
    free_run_dir,
    slug,
    write_run_config,
)

__all__ = [
    "LOCK_NAME",
    "RunLock",
    "check_can_create",
    "claim_run_dir",
    "free_run_dir",
    "slug",
    "write_run_config",
]
