"""Sampling images from an exported prior folder with DDIM (Song et al. 2021) and classifier-free guidance,
for the model card's grids and the acceptance check."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler
from PIL import Image
from torch import Tensor

from dreamfusion.prior.export import load_prior

# (z_t (N, 3, H, W), t) -> predicted noise (N, 3, H, W)
NoisePredictor = Callable[[Tensor, Tensor], Tensor]


@torch.no_grad()
def ddim(predict_noise: NoisePredictor, noise: Tensor, scheduler: DDIMScheduler, steps: int) -> Tensor:
    """Deterministic DDIM (eta 0) from pure noise (N, C, H, W) to the clean sample (images or latents)."""
    scheduler.set_timesteps(steps)
    x = noise
    for t in scheduler.timesteps:
        x = scheduler.step(predict_noise(x, t), t, x, eta=0.0).prev_sample
    return x


@torch.no_grad()
def sample(
    folder: Path,
    captions: Sequence[str],
    steps: int = 50,
    cfg_scale: float = 5.0,
    seed: int = 0,
    clip_x0: bool = False,
) -> Tensor:
    """(N, H, W, 3) images in [0, 1], one per caption. Deterministic for a given seed.

    CFG as in Ho & Salimans 2022: eps = eps_uncond + s (eps_cond - eps_uncond), the unconditioned half being
    the empty caption, as in training. `cfg_scale` is s = 1 + omega, where omega is SDS's guidance_scale.
    The network's output is v or epsilon, whichever the folder's scheduler config names; CFG is linear, so
    it combines either alike.

    `clip_x0` clips each step's estimate of the clean image to [-1, 1] (the exported scheduler config's
    `clip_sample`, which IF sets). It is off by default: with the built-in prior (v-prediction, CFG 5), DDIM
    with the clip left grainy noise in the samples and off-centre fragments, which the classifier of
    benchmarks/prior_acceptance.py then misread (see the model card)."""
    prior = load_prior(folder)
    n = len(captions)
    max_length = int(prior.tokenizer.model_max_length)
    tokens = prior.tokenizer(
        [*captions, *[""] * n],
        padding="max_length",
        max_length=max_length,
        truncation=True,
        return_tensors="pt",
    )
    text = prior.text_encoder(tokens["input_ids"]).last_hidden_state  # conditioned rows, then unconditioned

    def guided(x: Tensor, t: Tensor) -> Tensor:
        both = prior.unet(torch.cat([x, x]), t, encoder_hidden_states=text).sample
        cond, uncond = both[:n], both[n:]
        return uncond + cfg_scale * (cond - uncond)

    size = prior.unet.config.sample_size
    channels = prior.unet.config.in_channels
    noise = torch.randn((n, channels, size, size), generator=torch.Generator().manual_seed(seed))
    scheduler = DDIMScheduler.from_pretrained(prior.scheduler_folder, clip_sample=clip_x0)
    clean = ddim(guided, noise, scheduler, steps)
    if prior.vae is not None:  # a latent prior: decode as Stable Diffusion does
        config = prior.vae.config
        clean = prior.vae.decode(clean / config.scaling_factor + (config.shift_factor or 0.0)).sample
    return ((clean.clamp(-1.0, 1.0) + 1.0) / 2.0).permute(0, 2, 3, 1)


def save_grid(images: Tensor, path: Path, columns: int | None = None, scale: int = 1) -> Path:
    """Images (N, H, W, 3) in [0, 1] tiled row by row into one PNG, each enlarged `scale` times."""
    n, h, w, _ = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = torch.ones(rows * h, columns * w, 3)
    for i in range(n):
        r, c = divmod(i, columns)
        grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = images[i]
    pixels = (grid.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    picture = Image.fromarray(np.ascontiguousarray(pixels))
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path
