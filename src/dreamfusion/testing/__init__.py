"""Helpers for tests and benchmarks: tiny diffusion priors built offline in the real on-disk layouts."""

from dreamfusion.testing.tiny_models import (
    save_clip_tokenizer,
    save_t5_tokenizer,
    save_tiny_pixel_diffusion,
    save_tiny_stable_diffusion,
    stable_diffusion_15_unet_config,
    stable_diffusion_21_base_unet_config,
)

__all__ = [
    "save_clip_tokenizer",
    "save_t5_tokenizer",
    "save_tiny_pixel_diffusion",
    "save_tiny_stable_diffusion",
    "stable_diffusion_15_unet_config",
    "stable_diffusion_21_base_unet_config",
]
