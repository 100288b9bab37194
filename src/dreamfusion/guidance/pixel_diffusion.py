"""Score distillation from a pixel-space diffusion prior: DeepFloyd IF stage I, or any folder in its layout.

This is the setting of the paper: its prior, Imagen's 64x64 base model, denoises pixels directly, and IF
stage I is the closest open model (a 64x64 cascaded base stage with a frozen T5-XXL text encoder). The render
is resized to the U-Net's resolution and mapped to [-1, 1]; SDS (eq. 3) acts on those pixels and is pulled
back through the resize to the render.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from torch import Tensor

from dreamfusion.errors import ModelError
from dreamfusion.guidance.base import (
    GuidanceOutput,
    SDSConfig,
    TextEmbeddings,
    ViewBatch,
    pull_back,
)
from dreamfusion.guidance.components import (
    freeze,
    on_device,
    scheduler_alphas,
    square_size,
    unet_config,
)
from dreamfusion.guidance.diffusion import FrozenPrior, build_backend
from dreamfusion.guidance.hub import resolve_model
from dreamfusion.guidance.text_encoder import PromptEncoder

COMPONENTS = ("unet", "text_encoder", "tokenizer", "scheduler")

if TYPE_CHECKING:
    from dreamfusion.guidance import GuidanceConfig, GuidanceContext


class PixelDiffusionGuidance(FrozenPrior):
    """SDS with a pixel-space UNet2DConditionModel and a T5 or CLIP text encoder."""

    def __init__(
        self,
        model: str,
        sds: SDSConfig,
        device: torch.device,
        dtype: torch.dtype,
        seed: int,
        attention_slicing: bool = False,
        cpu_offload: bool = False,
    ):
        folder = resolve_model(model, COMPONENTS)
        # IF stage I needs only the text states: its pooled-text "addition" embedding is computed from them
        # inside the U-Net. Class labels (IF stage II's noise level) or SDXL's extra inputs are not provided.
        config = unet_config(folder, text_only=(None, "text"))
        if config["in_channels"] != 3 or config["out_channels"] not in (3, 6):
            raise ModelError(
                f"model {model!r}: a pixel prior takes and predicts RGB (in_channels 3; out_channels 3, or 6 "
                f"with a learned variance), but its U-Net maps {config['in_channels']} channels to "
                f"{config['out_channels']}"
            )
        self.offload = cpu_offload and device.type == "cuda"
        unet = UNet2DConditionModel.from_pretrained(folder.path, subfolder="unet", torch_dtype=dtype)
        unet = freeze(unet).to("cpu" if self.offload else device)
        if attention_slicing:
            unet.set_attention_slice("auto")
        alphas_cumprod, prediction_type = scheduler_alphas(folder)
        text_encoder = PromptEncoder(folder, device, dtype, self.offload)
        # IF predicts eps and, in channels 3..5, its variance interpolation (learned_range); SDS needs eps.
        super().__init__(text_encoder, unet, alphas_cumprod, prediction_type, 3, sds, device, dtype, seed)
        self.image_size = square_size(config["sample_size"], model)
        self.render_size = self.image_size  # renders are what a pixel prior denoises

    def __call__(
        self, images: Tensor, text: TextEmbeddings, step: int, views: ViewBatch | None = None
    ) -> GuidanceOutput:
        """`views` is unused: a text-to-image prior does not see the cameras."""
        leaf = images.detach().requires_grad_(True)
        with torch.enable_grad():
            size = self.image_size
            # Antialias when shrinking, so that a large render is averaged rather than point-sampled.
            resized = F.interpolate(
                leaf, size=(size, size), mode="bilinear", align_corners=False, antialias=leaf.shape[-1] > size
            )
            # float32 on the prior's device: SDS runs in full precision, the U-Net call casts to its dtype.
            pixels = (resized * 2.0 - 1.0).to(self.device, torch.float32)
            with on_device(self.unet, self.device, self.offload):
                pixel_grad, t = self.sds.gradient(pixels, self._predict_noise, text, step)
            image_grad = pull_back(pixels, leaf, pixel_grad).to(images.dtype)
        return GuidanceOutput(image_grad=image_grad, timesteps=t, grad_norm=float(image_grad.norm()))


def build(config: GuidanceConfig, context: GuidanceContext) -> PixelDiffusionGuidance:
    return build_backend(PixelDiffusionGuidance, config, context)
