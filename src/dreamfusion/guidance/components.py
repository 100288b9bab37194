"""Pieces the two diffusers backends (stable_diffusion.py, pixel_diffusion.py) share: freezing, moving a
module to the accelerator only while it runs, the U-Net config, the scheduler's alphabar_t, and turning a
U-Net output into a noise prediction."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from torch import Tensor, nn

from dreamfusion.errors import ModelError
from dreamfusion.guidance.hub import ModelFolder


def freeze(module: nn.Module) -> nn.Module:
    """The prior is never trained (paper sec. 3: "frozen"): eval mode and no parameter gradients."""
    module.eval()
    module.requires_grad_(False)
    return module


@contextmanager
def on_device(module: nn.Module, device: torch.device, offload: bool) -> Iterator[None]:
    """With `offload`, keep `module` on the CPU and move it to `device` only while it runs, so that on a small
    GPU the text encoder, VAE and U-Net need not fit at once. Not around a forward pass whose backward is yet
    to come: `.to()` replaces the parameters' data in place, under the graph's saved references to them."""
    if not offload:
        yield
        return
    module.to(device)
    try:
        yield
    finally:
        module.to("cpu")


def unet_config(folder: ModelFolder, text_only: tuple[str | None, ...]) -> dict[str, Any]:
    """The U-Net's config, checked before any weights load: a UNet2DConditionModel that needs nothing but
    the text states (`text_only` lists the addition_embed_type values that are computed from them)."""
    found = folder.component_class("unet")
    if found != "UNet2DConditionModel":
        raise ModelError(
            f"model {folder.name!r}: unet is a {found}, this backend needs a UNet2DConditionModel"
        )
    config = dict(UNet2DConditionModel.load_config(folder.path, subfolder="unet"))
    addition, labels = config.get("addition_embed_type"), config.get("class_embed_type")
    if addition not in text_only or labels is not None:
        raise ModelError(
            f"model {folder.name!r}: its U-Net needs conditioning besides text (addition_embed_type "
            f"{addition!r}, class_embed_type {labels!r}), e.g. SDXL or an upscaling stage; use a base model"
        )
    return config


def scheduler_alphas(folder: ModelFolder) -> tuple[Tensor, str]:
    """(alphabar_t for t = 0..T-1, prediction type) from the folder's scheduler config.

    alphabar depends only on the training betas (num_train_timesteps, beta_start/end, beta_schedule,
    trained_betas, rescale_betas_zero_snr), which every diffusers scheduler config records and DDPMScheduler
    understands, whatever sampler class the folder names (SD ships PNDM, IF DDPM)."""
    scheduler = DDPMScheduler.from_pretrained(folder.path, subfolder="scheduler")
    prediction_type = str(scheduler.config.prediction_type)
    if prediction_type not in ("epsilon", "v_prediction", "sample"):
        raise ModelError(f"model {folder.name!r}: unsupported prediction_type {prediction_type!r}")
    return scheduler.alphas_cumprod.float().clone(), prediction_type


def epsilon_from_output(
    output: Tensor, z_t: Tensor, alphas_cumprod_t: Tensor, prediction_type: str
) -> Tensor:
    """The U-Net's noise prediction whatever it was trained to predict. With z_t = a x0 + s eps
    (a^2 = alphabar, a^2 + s^2 = 1): v = a eps - s x0 gives eps = a v + s z_t, and a predicted x0 gives
    eps = (z_t - a x0) / s."""
    a = alphas_cumprod_t.view(-1, *([1] * (z_t.dim() - 1))).sqrt()
    s = (1.0 - a * a).sqrt()
    match prediction_type:
        case "epsilon":
            return output
        case "v_prediction":
            return a * output + s * z_t
        case "sample":
            return (z_t - a * output) / s
        case _:
            raise ValueError(f"unknown prediction_type {prediction_type!r}")


def per_image(embeddings: Tensor, batch: int) -> Tensor:
    """(B, L, D) text embeddings for a batch of B images; one shared prompt (1, L, D) is broadcast."""
    if embeddings.shape[0] == batch:
        return embeddings
    if embeddings.shape[0] == 1:
        return embeddings.expand(batch, *embeddings.shape[1:])
    raise ValueError(f"text embeddings for {embeddings.shape[0]} images, but the batch has {batch}")


def square_size(sample_size: int | Sequence[int], name: str) -> int:
    """A U-Net's sample_size as one side length; non-square priors are not supported."""
    if isinstance(sample_size, int):
        return sample_size
    sides = list(sample_size)
    if len(sides) != 2 or sides[0] != sides[1]:
        raise ModelError(f"model {name!r}: only square U-Nets are supported, sample_size is {sample_size}")
    return int(sides[0])
