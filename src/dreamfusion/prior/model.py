"""The built-in prior's networks: a small CLIP text encoder and a pixel-space U-Net, in diffusers' classes.

They are the very classes the pixel-space guidance backend loads (guidance/pixel_diffusion.py), so the
exported prior needs no special case there: a CLIPTextModel, a UNet2DConditionModel that maps RGB to the
predicted noise (out_channels 3, no learned variance), and a DDPM scheduler config with IF's cosine betas.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class PriorConfig:
    """Sizes of the built-in prior. Defaults chosen by measurement on a 2-core CPU (see the model card)."""

    # 32 px: a full training step runs at ~28 images/s on one core, against ~7 at 64 px (model card).
    resolution: int = 32  # side of the square images the U-Net denoises
    # Narrow at full resolution, where convolutions cost most; four levels reach 4x4 (5.5 M parameters).
    channels: tuple[int, ...] = (32, 64, 96, 128)  # U-Net width per level; each level halves the resolution
    # Attention at 8x8 and 4x4 only: at 32x32 and 16x16 it would cost more than it adds for these scenes.
    attention: tuple[bool, ...] = (False, False, True, True)  # cross-attention to the text per level
    layers_per_block: int = 1
    attention_heads: int = 4
    # The caption also enters every residual block through the timestep embedding, pooled by attention over
    # the text states, as in IF stage I (diffusers' addition_embed_type "text"). Cross-attention alone, at
    # 8x8 and 4x4, learned the captions far too slowly: after 2,500 steps the right caption lowered the
    # denoising loss by 1 % against a wrong one.
    pooled_text: bool = True
    norm_groups: int = 32
    text_width: int = 128  # the CLIP embedding table is 49,408 x this: the largest single tensor
    text_layers: int = 3  # world captions are short and regular; three layers are plenty
    text_heads: int = 4
    max_tokens: int = 32  # the longest world caption is under 20 CLIP tokens
    train_timesteps: int = 1000  # as DDPM and IF
    # What the U-Net predicts. Against the image, the epsilon loss weighs an error by the signal-to-noise
    # ratio, which vanishes at the high noise levels where the sampler decides what the object is; so an
    # epsilon prior learned the images but hardly the captions (the right caption lowered the loss by 2-4 %
    # after 3,500 steps). v (Salimans & Ho 2022) weighs the image error by SNR + 1, never below 1.
    prediction_type: Literal["epsilon", "v_prediction"] = "v_prediction"

    def __post_init__(self) -> None:
        if len(self.channels) != len(self.attention) or not self.channels:
            raise ValueError("channels and attention need one entry per U-Net level")
        if self.resolution % 2 ** (len(self.channels) - 1):
            raise ValueError(f"resolution {self.resolution} does not halve {len(self.channels) - 1} times")
        if any(c % self.norm_groups for c in self.channels):
            raise ValueError(f"every U-Net width must be a multiple of norm_groups ({self.norm_groups})")
        if self.text_width % self.text_heads:
            raise ValueError("text_width must be a multiple of text_heads")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError("prediction_type must be epsilon or v_prediction")
        if not 2 <= self.max_tokens <= 77:
            raise ValueError("max_tokens must be in [2, 77] (CLIP's context is 77)")


@dataclass(frozen=True)
class PriorModules:
    text_encoder: CLIPTextModel
    unet: UNet2DConditionModel
    scheduler: DDPMScheduler
    tokenizer: PreTrainedTokenizerBase


def load_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(folder)


def small_clip_text_config(
    vocab_size: int, width: int, layers: int, heads: int, max_tokens: int, bos: int, eos: int, pad: int
) -> CLIPTextConfig:
    """A CLIP text tower of OpenAI's design (quick GELU, 4x MLP), sized to be trained from scratch: the
    prior's text encoder and the world judge's text tower are both this."""
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=max_tokens,
        hidden_act="quick_gelu",  # as OpenAI's CLIP
        projection_dim=width,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
    )


def build_text_encoder(config: PriorConfig, tokenizer: PreTrainedTokenizerBase) -> CLIPTextModel:
    text = small_clip_text_config(
        len(tokenizer),
        config.text_width,
        config.text_layers,
        config.text_heads,
        config.max_tokens,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    )
    return CLIPTextModel(text)


def build_unet(config: PriorConfig) -> UNet2DConditionModel:
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in config.attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(config.attention))
    return UNet2DConditionModel(
        sample_size=config.resolution,
        in_channels=3,
        out_channels=3,  # the prediction only: the sampler uses a fixed variance, so none is learned
        down_block_types=down,
        mid_block_type="UNetMidBlock2DCrossAttn",
        up_block_types=up,
        block_out_channels=config.channels,
        layers_per_block=config.layers_per_block,
        norm_num_groups=config.norm_groups,
        cross_attention_dim=config.text_width,
        # diffusers' legacy name: for this U-Net, attention_head_dim is the number of heads.
        attention_head_dim=config.attention_heads,
        addition_embed_type="text" if config.pooled_text else None,
        addition_embed_type_num_heads=config.attention_heads,
    )


def build_scheduler(config: PriorConfig) -> DDPMScheduler:
    """IF stage I's noise schedule (cosine betas, Nichol & Dhariwal 2021). clip_sample keeps the sampler's
    x0 estimates inside the [-1, 1] the images live in."""
    return DDPMScheduler(
        num_train_timesteps=config.train_timesteps,
        beta_schedule="squaredcos_cap_v2",
        prediction_type=config.prediction_type,
        variance_type="fixed_small",
        clip_sample=True,
    )


def build_prior(config: PriorConfig, seed: int, tokenizer_folder: Path) -> PriorModules:
    """Freshly initialised networks; the same seed gives the same weights."""
    tokenizer = load_tokenizer(tokenizer_folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = build_text_encoder(config, tokenizer)
        unet = build_unet(config)
    return PriorModules(text_encoder, unet, build_scheduler(config), tokenizer)
