"""One resumable training loop for the latent prior's stages (issue #15): the autoencoder, the text
encoder's contrastive pretraining and the latent U-Net.

A stage is an object with a step counter and four methods: `update()` trains one batch of its own drawing
and returns its metrics, `checkpoint()` / `restore()` save and load every weight, optimizer state and
generator state, and `export(folder)` writes what the next stage or the shipped prior reads. `run_stage`
trains it to `steps`, or for `max_minutes` of this sitting, with atomic checkpoints, so that a stage spread
over several sittings ends with the same weights as one that ran in one go.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from tqdm import tqdm

from dreamfusion.checkpoint import (
    Checkpoint,
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from dreamfusion.run.log import append_record, prune_checkpoints, truncate_records

CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"


class Stage(Protocol):
    step: int
    elapsed_s: float  # seconds of training over all sittings, start-up excluded

    def update(self) -> dict[str, float]: ...
    def checkpoint(self) -> Checkpoint: ...
    def restore(self, ckpt: Checkpoint) -> None: ...
    def export(self, folder: Path) -> None: ...


@dataclass(frozen=True)
class LoopConfig:
    steps: int
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    log_every: int = 10
    threads: int = 1
    # Steps where the learning-rate schedule started over: each time a finished stage was trained further
    # (`dreamfusion prior latent STAGE --extend-to N`).
    restarts: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if list(self.restarts) != sorted(set(self.restarts)) or any(
            not 0 < r < self.steps for r in self.restarts
        ):
            raise ValueError("loop.restarts must be increasing steps between 0 and loop.steps")


def resume_stage(stage: Stage, run_dir: Path) -> Stage:
    """Restore the latest checkpoint of `run_dir`, if any, and drop metrics logged after it."""
    latest = latest_checkpoint(run_dir / CHECKPOINTS)
    if latest is not None:
        stage.restore(load_checkpoint(latest))
    truncate_records(run_dir / METRICS, stage.step)
    return stage


def run_stage(
    stage: Stage,
    run_dir: Path,
    loop: LoopConfig,
    max_minutes: float | None,
    progress: bool,
    export_to: Path,
    images_per_step: int,
) -> bool:
    """Train to loop.steps or for max_minutes; checkpoint the last state either way. True when finished
    (and exported to `export_to`)."""
    torch.set_num_threads(loop.threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    bar = tqdm(total=loop.steps, initial=stage.step, disable=not progress, unit="step", dynamic_ncols=True)
    window_start, window_steps = time.monotonic(), 0
    try:
        while stage.step < loop.steps:
            step_start = time.monotonic()
            metrics = stage.update()
            stage.elapsed_s += time.monotonic() - step_start
            window_steps += 1
            bar.update(1)
            if stage.step % loop.log_every == 0 or stage.step == loop.steps:
                rate = window_steps * images_per_step / max(time.monotonic() - window_start, 1e-9)
                window_start, window_steps = time.monotonic(), 0
                bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items()} | {"img_s": f"{rate:.0f}"})
                record = {
                    "step": stage.step,
                    **metrics,
                    "images_per_s": round(rate, 1),
                    "elapsed_s": round(stage.elapsed_s, 1),
                }
                append_record(run_dir / METRICS, record)
            over_time = max_minutes is not None and time.monotonic() - start >= 60.0 * max_minutes
            if stage.step % loop.checkpoint_every == 0 or stage.step == loop.steps or over_time:
                save_start = time.monotonic()
                save_stage_checkpoint(stage, run_dir, loop.keep_checkpoints)
                stage.elapsed_s += time.monotonic() - save_start
            if over_time and stage.step < loop.steps:
                return False
    finally:
        bar.close()
    stage.export(export_to)
    return True


def save_stage_checkpoint(stage: Stage, run_dir: Path, keep: int) -> Path:
    folder = run_dir / CHECKPOINTS
    path = checkpoint_path(folder, stage.step)
    if not path.exists():
        save_checkpoint(path, stage.checkpoint())
    prune_checkpoints(folder, keep)
    return path
