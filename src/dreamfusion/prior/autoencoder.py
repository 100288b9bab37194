"""The latent prior's autoencoder (issue #15): a small diffusers `AutoencoderKL`, trained on the fixed set of
world renders, so that the U-Net only has to learn the layout of a scene and the decoder takes the
high-frequency detail (Rombach et al. 2022, sec. 4.1).

- Loss: L1 reconstruction plus a tiny KL term towards N(0, I), as Stable Diffusion's first stage (their
  weight 1e-6 on per-image sums); no perceptual or adversarial term, for which no weights can be had here.
- The latent scaling factor is measured on the data after training: 1 / std of the posterior means over a
  sample of the set, as Stable Diffusion's 0.18215 was measured, so the diffusion sees unit-variance latents.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from torch import Tensor

from dreamfusion.checkpoint import Checkpoint
from dreamfusion.config import dump_yaml
from dreamfusion.prior.dataset import Dataset
from dreamfusion.prior.ema import EMA
from dreamfusion.prior.stage import LoopConfig
from dreamfusion.training.schedules import WarmupCosine


@dataclass(frozen=True)
class AutoencoderConfig:
    # Two levels halve once: 32x32 RGB -> 16x16x4 latents (f = 2), 3x fewer numbers than the image.
    # Measured against f = 4 (8x8x4, 32/64/64) and f = 4 with 8 latent channels, one core each, 700 steps:
    # f = 2 reached L1 0.084 at step 600 where 8x8x4 had 0.109, and 8x8x4 trained for 1,800 steps kept only
    # 67 % of the acceptance classifier's kind accuracy (benchmarks/latent_autoencoder.py; MODEL_CARD.md).
    channels: tuple[int, ...] = (32, 64)
    latent_channels: int = 4
    layers_per_block: int = 1
    norm_groups: int = 32
    resolution: int = 32


def build_autoencoder(config: AutoencoderConfig, seed: int) -> AutoencoderKL:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * len(config.channels),
            up_block_types=("UpDecoderBlock2D",) * len(config.channels),
            block_out_channels=config.channels,
            layers_per_block=config.layers_per_block,
            latent_channels=config.latent_channels,
            norm_num_groups=config.norm_groups,
            sample_size=config.resolution,
            scaling_factor=1.0,  # replaced by the measured one at export
        )


@dataclass(frozen=True)
class AutoencoderTrainConfig:
    model: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(steps=4000))
    batch_size: int = 64
    learning_rate: float = 1e-3
    warmup_fraction: float = 0.025
    kl_weight: float = 1e-6  # on per-image sums, as Stable Diffusion's first stage
    ema_decay: float = 0.999
    seed: int = 11  # its own: not the U-Net's, the text encoder's or the judge's
    scale_sample: int = 8192  # images whose latents set the scaling factor


def reconstruction_loss(
    vae: AutoencoderKL, images: Tensor, kl_weight: float
) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, L1, KL per image) of one batch in [-1, 1], decoding a posterior sample."""
    posterior = vae.encode(images).latent_dist
    decoded = vae.decode(posterior.sample()).sample
    l1 = (decoded - images).abs().mean()
    kl = posterior.kl().mean()  # summed over the latent, averaged over the batch
    per_pixel_kl = kl / images[0].numel()  # the same 1e-6-on-sums weight, in the L1's per-pixel units
    return l1 + kl_weight * per_pixel_kl, l1, kl


class AutoencoderStage:
    def __init__(self, config: AutoencoderTrainConfig, data: Dataset):
        self.config = config
        self.data = data
        self.vae = build_autoencoder(config.model, config.seed).train()
        self.ema = EMA(self.vae, config.ema_decay)
        self.optimizer = torch.optim.AdamW(self.vae.parameters(), lr=config.learning_rate, weight_decay=0.0)
        self.schedule = WarmupCosine(
            config.loop.steps, config.warmup_fraction, start=0.0, end=0.1, restarts=config.loop.restarts
        )
        self.data_generator = torch.Generator().manual_seed(config.seed + 1)
        self.step = 0
        self.elapsed_s = 0.0

    def update(self) -> dict[str, float]:
        index = torch.randint(0, len(self.data), (self.config.batch_size,), generator=self.data_generator)
        images = self.data.batch(index)
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.learning_rate * self.schedule(self.step)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed * 7919 + self.step)  # the posterior sample's noise
            loss, l1, kl = reconstruction_loss(self.vae, images, self.config.kl_weight)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.vae.parameters(), 1.0)
        self.optimizer.step()
        self.ema.update(self.vae, self.step)
        self.step += 1
        return {"loss": float(loss.detach()), "l1": float(l1.detach()), "kl": float(kl.detach())}

    def checkpoint(self) -> Checkpoint:
        return Checkpoint(
            step=self.step,
            modules={"vae": self.vae.state_dict(), "ema_vae": self.ema.average.state_dict()},
            optimizer=self.optimizer.state_dict(),
            rng={"data": self.data_generator.get_state()},
            meta={"config": dump_yaml(self.config), "elapsed_s": repr(self.elapsed_s)},
        )

    def restore(self, ckpt: Checkpoint) -> None:
        self.vae.load_state_dict(ckpt.modules["vae"])
        self.ema.average.load_state_dict(ckpt.modules["ema_vae"])
        self.optimizer.load_state_dict(ckpt.optimizer)
        self.data_generator.set_state(ckpt.rng["data"])
        self.step = ckpt.step
        self.elapsed_s = float(ckpt.meta.get("elapsed_s", "0"))

    def export(self, folder: Path) -> None:
        """The EMA autoencoder in diffusers' folder format, with the scaling factor measured on the data."""
        vae = self.ema.average
        vae.register_to_config(scaling_factor=latent_scaling_factor(vae, self.data, self.config.scale_sample))
        vae.save_pretrained(folder, safe_serialization=True)


@torch.no_grad()
def encode_means(vae: AutoencoderKL, data: Dataset, index: np.ndarray, batch: int = 512) -> Tensor:
    """Posterior means (N, C, h, w) of the images at `index`, unscaled."""
    parts = [
        vae.encode(data.batch(index[i : i + batch])).latent_dist.mean for i in range(0, len(index), batch)
    ]
    return torch.cat(parts)


def latent_scaling_factor(vae: AutoencoderKL, data: Dataset, sample: int) -> float:
    """1 / std of the posterior means of an evenly spaced sample of the set."""
    index = np.linspace(0, len(data) - 1, min(sample, len(data))).astype(np.int64)
    return float(1.0 / encode_means(vae.eval(), data, index).std())


@torch.no_grad()
def psnr(vae: AutoencoderKL, images: Tensor) -> Tensor:
    """Per-image PSNR (dB) of the mean's reconstruction, on images in [-1, 1] measured in [0, 1]."""
    decoded = vae.decode(vae.encode(images).latent_dist.mean).sample.clamp(-1, 1)
    mse = ((decoded - images) / 2.0).square().mean((1, 2, 3))
    return -10.0 * torch.log10(mse.clamp_min(1e-10))
