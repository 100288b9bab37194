"""What every training loop keeps in its folder besides weights: metrics.jsonl, one JSON record per line
with its "step", and the rolling window of checkpoints. Shared by `generate` runs and the prior's stages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dreamfusion.files import write_text_atomic


def append_record(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as file:
        file.write(json.dumps(record) + "\n")


def _record_step(line: str) -> float:
    """The step a line records; a torn line (its writer was killed mid-write) counts as after every
    checkpoint, so it is dropped."""
    try:
        return float(json.loads(line)["step"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        return float("inf")


def truncate_records(path: Path, step: int) -> None:
    """Keep the records up to `step`, the checkpoint a run resumes from: later steps will be run again, and
    the log must hold each step once."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines() if _record_step(line) <= step]
    write_text_atomic(path, "".join(line + "\n" for line in kept))


def last_record(path: Path) -> dict[str, Any] | None:
    """The last complete record of the log (None when there is none)."""
    if not path.is_file():
        return None
    for line in reversed(path.read_text(encoding="utf-8").splitlines()):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            return record
    return None


def prune_checkpoints(folder: Path, keep: int) -> None:
    """Delete all but the newest `keep` step_XXXXXXX.safetensors in `folder` (names sort by step)."""
    for old in sorted(folder.glob("step_*.safetensors"))[:-keep]:
        old.unlink(missing_ok=True)
