"""The latent prior's U-Net (issue #15): a diffusers `UNet2DConditionModel` that denoises the autoencoder's
16x16x4 latents, conditioned on the frozen, contrastively pretrained text encoder's token states through
cross-attention, as Stable Diffusion is.

Training reads the set's latents, encoded once (posterior means times the measured scaling factor), and the
captions. 10 % of captions are dropped to the empty string, so one network gives both halves of
classifier-free guidance (Ho & Salimans 2022). The loss weighting is a setting, measured in the model card:

- "v": v-prediction's plain MSE (Salimans & Ho 2022), which weighs an error of the clean latent by SNR + 1;
- "min-snr": min(SNR, gamma) + 1 instead (Hang et al. 2023, the form for v-prediction);
- "lognormal": v's weighting with EDM's log-normal distribution of noise levels (Karras et al. 2022:
  ln sigma ~ N(-1.2, 1.2^2), sigma = sqrt((1 - abar) / abar)), mapped to the nearest training timestep.
  With unit-variance latents, EDM's lambda(sigma) = (sigma^2 + 1) / sigma^2 on x0 is exactly v's SNR + 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from torch import Tensor
from transformers import CLIPTextModel, PreTrainedTokenizerBase

from dreamfusion.checkpoint import Checkpoint
from dreamfusion.config import dump_yaml
from dreamfusion.prior.ema import EMA
from dreamfusion.prior.stage import LoopConfig
from dreamfusion.prior.text_pretrain import tokenize
from dreamfusion.training.schedules import WarmupCosine

Weighting = Literal["v", "min-snr", "lognormal"]


@dataclass(frozen=True)
class LatentUNetConfig:
    sample_size: int = 16  # latent side: the autoencoder's 32 px / 2
    latent_channels: int = 4
    # 16x16 -> 8x8 -> 4x4 -> 2x2. For 8x8 latents, (64, 128, 128) with attention everywhere trained at 55
    # images/s on one core; at 16x16 the same network manages 26/s. A fourth, narrow level with no attention
    # at 16x16 brings it to 89/s at the same 7.0 M parameters (benchmarks/latent_unet_speed.py, batch 128).
    channels: tuple[int, ...] = (32, 64, 128, 128)
    # Cross-attention to the text states from 8x8 down: at 8x8 it places the object (measured on 8x8
    # latents); at 16x16 it would cost 1.8x the step. The pooled caption reaches every level regardless.
    attention: tuple[bool, ...] = (False, True, True, True)
    layers_per_block: int = 1
    attention_heads: int = 4
    norm_groups: int = 32
    # The caption pooled into the timestep embedding too (IF's addition_embed_type "text"): the pixel prior
    # learned its captions several times faster with it (model card, version 1). Off = plain SD.
    pooled_text: bool = True
    text_width: int = 128

    def __post_init__(self) -> None:
        if len(self.channels) != len(self.attention) or not self.channels:
            raise ValueError("channels and attention need one entry per U-Net level")
        if self.sample_size % 2 ** (len(self.channels) - 1):
            raise ValueError(f"sample_size {self.sample_size} does not halve {len(self.channels) - 1} times")


def build_latent_unet(config: LatentUNetConfig, seed: int) -> UNet2DConditionModel:
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in config.attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(config.attention))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DConditionModel(
            sample_size=config.sample_size,
            in_channels=config.latent_channels,
            out_channels=config.latent_channels,
            down_block_types=down,
            mid_block_type="UNetMidBlock2DCrossAttn",
            up_block_types=up,
            block_out_channels=config.channels,
            layers_per_block=config.layers_per_block,
            norm_num_groups=config.norm_groups,
            cross_attention_dim=config.text_width,
            attention_head_dim=config.attention_heads,  # diffusers' legacy name: the number of heads
            addition_embed_type="text" if config.pooled_text else None,
            addition_embed_type_num_heads=config.attention_heads,
        )


def build_latent_scheduler(prediction_type: str = "v_prediction") -> DDPMScheduler:
    """Stable Diffusion's noise schedule (scaled-linear betas 0.00085 .. 0.012 over 1,000 steps)."""
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type=prediction_type,
        clip_sample=False,  # latents are not bounded
    )


@dataclass(frozen=True)
class LatentUNetTrainConfig:
    unet: LatentUNetConfig = field(default_factory=LatentUNetConfig)
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(steps=20000))
    batch_size: int = 128
    learning_rate: float = 3e-4
    warmup_fraction: float = 0.02
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    weighting: Weighting = "v"
    min_snr_gamma: float = 5.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.weighting not in ("v", "min-snr", "lognormal"):
            raise ValueError(f"weighting must be v, min-snr or lognormal, got {self.weighting!r}")
        if not 0.0 <= self.caption_dropout < 1.0:
            raise ValueError("caption_dropout must be in [0, 1)")


def lognormal_timesteps(alphas_cumprod: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """EDM's ln sigma ~ N(-1.2, 1.2^2), as the nearest of the discrete timesteps' sigmas."""
    sigmas = ((1.0 - alphas_cumprod) / alphas_cumprod).sqrt()
    wanted = (torch.randn(n, generator=generator) * 1.2 - 1.2).exp()
    return (sigmas.log()[None, :] - wanted.log()[:, None]).abs().argmin(1)


class LatentUNetStage:
    def __init__(
        self,
        config: LatentUNetTrainConfig,
        latents: Tensor,
        captions: np.ndarray,
        text_encoder: CLIPTextModel,
        tokenizer: PreTrainedTokenizerBase,
        max_tokens: int,
    ):
        wanted = (config.unet.latent_channels, config.unet.sample_size, config.unet.sample_size)
        if tuple(latents.shape[1:]) != wanted:
            raise ValueError(
                f"the latents are {'x'.join(map(str, latents.shape[1:]))} but the U-Net expects "
                f"{'x'.join(map(str, wanted))}: set unet.sample_size and unet.latent_channels to match"
            )
        self.config = config
        self.latents = latents  # (N, C, h, w), already scaled to unit variance
        self.captions = captions
        self.text_encoder = text_encoder.eval().requires_grad_(False)  # frozen, as SD's and Imagen's
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.unet = build_latent_unet(config.unet, config.seed).train()
        self.scheduler = build_latent_scheduler()
        self.alphas_cumprod = self.scheduler.alphas_cumprod.float()
        self.ema = EMA(self.unet, config.ema_decay)
        self.optimizer = torch.optim.AdamW(
            self.unet.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay, fused=True
        )
        self.schedule = WarmupCosine(
            config.loop.steps, config.warmup_fraction, start=0.0, end=0.1, restarts=config.loop.restarts
        )
        self.data_generator = torch.Generator().manual_seed(config.seed + 1)
        self.noise_generator = torch.Generator().manual_seed(config.seed + 2)
        self.step = 0
        self.elapsed_s = 0.0

    @torch.no_grad()
    def encode_text(self, captions: list[str]) -> Tensor:
        return self.text_encoder(tokenize(self.tokenizer, captions, self.max_tokens)).last_hidden_state

    def update(self) -> dict[str, float]:
        n, g = self.config.batch_size, self.noise_generator
        index = torch.randint(0, len(self.latents), (n,), generator=self.data_generator)
        x0 = self.latents[index]
        dropped = (torch.rand(n, generator=g) < self.config.caption_dropout).tolist()
        captions = ["" if d else str(c) for c, d in zip(self.captions[index.numpy()], dropped, strict=True)]
        if self.config.weighting == "lognormal":
            t = lognormal_timesteps(self.alphas_cumprod, n, g)
        else:
            t = torch.randint(0, len(self.alphas_cumprod), (n,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        abar = self.alphas_cumprod[t].view(n, 1, 1, 1)
        z_t = abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise  # q(z_t | x), DDPM eq. 4
        v = abar.sqrt() * noise - (1.0 - abar).sqrt() * x0  # Salimans & Ho 2022
        predicted = self.unet(z_t, t, encoder_hidden_states=self.encode_text(captions)).sample
        per_sample = (predicted - v).square().mean((1, 2, 3))
        if self.config.weighting == "min-snr":
            snr = abar.flatten() / (1.0 - abar.flatten())
            per_sample = per_sample * (snr.clamp(max=self.config.min_snr_gamma) + 1.0) / (snr + 1.0)
        loss = per_sample.mean()
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.learning_rate * self.schedule(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.unet.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.ema.update(self.unet, self.step)
        self.step += 1
        return {"loss": float(loss.detach())}

    def checkpoint(self) -> Checkpoint:
        return Checkpoint(
            step=self.step,
            modules={"unet": self.unet.state_dict(), "ema_unet": self.ema.average.state_dict()},
            optimizer=self.optimizer.state_dict(),
            rng={"data": self.data_generator.get_state(), "noise": self.noise_generator.get_state()},
            meta={"config": dump_yaml(self.config), "elapsed_s": repr(self.elapsed_s)},
        )

    def restore(self, ckpt: Checkpoint) -> None:
        self.unet.load_state_dict(ckpt.modules["unet"])
        self.ema.average.load_state_dict(ckpt.modules["ema_unet"])
        self.optimizer.load_state_dict(ckpt.optimizer)
        self.data_generator.set_state(ckpt.rng["data"])
        self.noise_generator.set_state(ckpt.rng["noise"])
        self.step = ckpt.step
        self.elapsed_s = float(ckpt.meta.get("elapsed_s", "0"))

    def export(self, folder: Path) -> None:
        """The EMA U-Net and the scheduler config: a Stable Diffusion folder's unet/ and scheduler/."""
        self.ema.average.save_pretrained(folder / "unet", safe_serialization=True)
        self.scheduler.save_pretrained(folder / "scheduler")
