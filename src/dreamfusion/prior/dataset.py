"""A fixed training set of world renders, rendered once and read back as arrays (issue #15).

The pixel prior rendered a fresh batch every step, so the world's sphere tracer and the U-Net shared one
core. The latent prior's stages (autoencoder, text encoder, U-Net) each read the same fixed set instead:

- the set is cut into shards of `shard_size` images; shard k is rendered from its own generator, seeded by
  (seed, k), so the set does not depend on how many processes rendered it, or in how many sittings;
- each shard is one `.npz` (uint8 images, captions, scene ids, shading modes), written beside its final
  name and renamed into place, so a killed renderer leaves whole shards only and a rerun renders the rest;
- `workers` processes render shards side by side (one per core).
"""

from __future__ import annotations

import json
import multiprocessing
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dreamfusion.errors import UserError
from dreamfusion.files import atomic_path, write_text_atomic
from dreamfusion.world import sample_training_batch

DATASET_CONFIG = "dataset.json"
RENDER_BATCH = 256  # images traced together: the tracer's per-step overhead is spread over these


@dataclass(frozen=True)
class DatasetConfig:
    images: int = 300_000
    resolution: int = 32
    shard_size: int = 4096
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("images", "resolution", "shard_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")

    @property
    def shards(self) -> int:
        return -(-self.images // self.shard_size)

    def shard_images(self, k: int) -> int:
        return min(self.shard_size, self.images - k * self.shard_size)


def shard_path(folder: Path, k: int) -> Path:
    return folder / f"shard_{k:05d}.npz"


def render_shard(config: DatasetConfig, k: int) -> dict[str, np.ndarray]:
    """Shard k's arrays. The world's training batches never hold a held-out composition."""
    from dreamfusion.world import prior_world

    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + k)
    world = prior_world()
    parts: dict[str, list[np.ndarray]] = {"images": [], "captions": [], "scene_ids": [], "modes": []}
    remaining = config.shard_images(k)
    while remaining > 0:
        n = min(RENDER_BATCH, remaining)
        batch = sample_training_batch(n, config.resolution, generator, world)
        parts["images"].append((batch.images.clamp(0, 1) * 255.0).round().to(torch.uint8).numpy())
        parts["captions"].append(np.array(batch.captions, dtype=np.str_))
        parts["scene_ids"].append(batch.scene_ids.numpy())
        parts["modes"].append(batch.modes.numpy())
        remaining -= n
    return {name: np.concatenate(arrays) for name, arrays in parts.items()}


def _write_shard(args: tuple[DatasetConfig, Path, int]) -> int:
    config, folder, k = args
    torch.set_num_threads(1)
    arrays = render_shard(config, k)
    final = shard_path(folder, k)
    with atomic_path(final) as temp:
        np.savez(temp, **arrays)
    return int(arrays["images"].shape[0])


def read_dataset_config(folder: Path) -> DatasetConfig:
    path = folder / DATASET_CONFIG
    if not path.is_file():
        raise UserError(f"{folder} is not a rendered training set: it has no {DATASET_CONFIG}")
    return DatasetConfig(**json.loads(path.read_text(encoding="utf-8"))["config"])


def render_dataset(folder: Path, config: DatasetConfig, workers: int, progress: bool) -> float:
    """Render every missing shard of `config` into `folder`; returns images per second of this sitting.
    A folder that already holds a set with other settings is an error, not a mix of the two."""
    folder.mkdir(parents=True, exist_ok=True)
    record = folder / DATASET_CONFIG
    if record.is_file():
        old = read_dataset_config(folder)
        if old != config:
            raise UserError(
                f"{folder} holds a training set with other settings ({old}); choose another folder"
            )
    else:
        write_text_atomic(record, json.dumps({"config": asdict(config)}, indent=2) + "\n")
    todo = [k for k in range(config.shards) if not shard_path(folder, k).is_file()]
    start, done = time.monotonic(), 0
    bar = tqdm(
        total=config.images,
        initial=config.images - sum(map(config.shard_images, todo)),
        unit="img",
        disable=not progress,
        dynamic_ncols=True,
    )
    jobs = [(config, folder, k) for k in todo]
    if workers <= 1:
        results = map(_write_shard, jobs)
        for n in results:
            done += n
            bar.update(n)
    else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for n in pool.imap_unordered(_write_shard, jobs):
                done += n
                bar.update(n)
    bar.close()
    rate = done / max(time.monotonic() - start, 1e-9)
    info = json.loads(record.read_text(encoding="utf-8"))
    if done:
        info.setdefault("sittings", []).append(
            {"images": done, "seconds": round(time.monotonic() - start, 1), "workers": workers}
        )
        write_text_atomic(record, json.dumps(info, indent=2) + "\n")
    return rate


@dataclass(frozen=True)
class Dataset:
    """A whole rendered set in memory: (N, H, W, 3) uint8 images and their captions."""

    images: np.ndarray
    captions: np.ndarray
    scene_ids: np.ndarray
    modes: np.ndarray

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def batch(self, index: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float images in [-1, 1], the diffusers convention."""
        chosen = torch.from_numpy(self.images[np.asarray(index)])
        return (chosen.permute(0, 3, 1, 2).float() / 127.5 - 1.0).contiguous()


def load_dataset(folder: Path) -> Dataset:
    config = read_dataset_config(folder)
    missing = [k for k in range(config.shards) if not shard_path(folder, k).is_file()]
    if missing:
        raise UserError(
            f"{folder} is missing {len(missing)} of {config.shards} shards: finish it with "
            "dreamfusion prior dataset --out FOLDER (same settings)"
        )
    parts: dict[str, list[np.ndarray]] = {"images": [], "captions": [], "scene_ids": [], "modes": []}
    for k in range(config.shards):
        with np.load(shard_path(folder, k)) as shard:
            for name in parts:
                parts[name].append(shard[name])
    return Dataset(**{name: np.concatenate(arrays) for name, arrays in parts.items()})
