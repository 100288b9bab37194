"""Score distillation from a latent diffusion prior (Stable Diffusion 1.x / 2.x, or any folder in its layout).

The paper used Imagen, a pixel-space model; the open re-implementations use Stable Diffusion instead, which
denoises VAE latents. Following them, the render is upsampled to the VAE's resolution (512 for SD 1.5 and
2.1-base), encoded with gradient, and SDS (paper eq. 3) is applied to the latents. The latent gradient is then
pulled back through the encoder, so the trainer still receives d(loss)/d(image) in pixel space.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
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

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
# Renders are drawn at 64x64 and upsampled to the VAE's input size (512 for SD 2.1 base), as in
# stable-dreamfusion; train.resolution overrides it.
RENDER_SIZE = 64

if TYPE_CHECKING:
    from dreamfusion.guidance import GuidanceConfig, GuidanceContext


class StableDiffusionGuidance(FrozenPrior):
    """SDS with a latent UNet2DConditionModel, an AutoencoderKL and a CLIP-family text encoder."""

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
        # SD 1.x / 2.x condition on the text states alone (SDXL's pooled text and size ids are not provided);
        # a U-Net that also pools those states into its timestep embedding (addition_embed_type "text", as IF
        # and the built-in latent prior do) needs nothing more.
        config = unet_config(folder, text_only=(None, "text"))
        found = folder.component_class("vae")
        if found != "AutoencoderKL":
            raise ModelError(f"model {model!r}: vae is a {found}, this backend needs an AutoencoderKL")
        # Offloading only pays where the accelerator's memory is the limit; on the CPU it would only copy.
        self.offload = cpu_offload and device.type == "cuda"
        home = torch.device("cpu") if self.offload else device
        unet = UNet2DConditionModel.from_pretrained(folder.path, subfolder="unet", torch_dtype=dtype)
        vae = AutoencoderKL.from_pretrained(folder.path, subfolder="vae", torch_dtype=dtype)
        self.unet = freeze(unet).to(home)
        self.vae: AutoencoderKL = freeze(vae).to(home)
        if config["in_channels"] != self.vae.config.latent_channels:
            raise ModelError(
                f"model {model!r}: the U-Net takes {config['in_channels']} channels, the VAE makes "
                f"{self.vae.config.latent_channels}"
            )
        if attention_slicing:
            # Computes attention a head-slice at a time: less peak memory at 512 px, a little slower.
            self.unet.set_attention_slice("auto")
        alphas_cumprod, prediction_type = scheduler_alphas(folder)
        text_encoder = PromptEncoder(folder, device, dtype, self.offload)
        latent_channels = int(config["in_channels"])
        super().__init__(
            text_encoder,
            self.unet,
            alphas_cumprod,
            prediction_type,
            latent_channels,
            sds,
            device,
            dtype,
            seed,
        )
        vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.image_size = square_size(config["sample_size"], model) * vae_scale
        self.render_size = RENDER_SIZE

    def __call__(
        self, images: Tensor, text: TextEmbeddings, step: int, views: ViewBatch | None = None
    ) -> GuidanceOutput:
        """`views` is unused: a text-to-image prior does not see the cameras."""
        # A leaf of our own: the encoder's graph stays separate from the renderer's and is freed on return.
        leaf = images.detach().requires_grad_(True)
        # With offloading the VAE stays on the device until the pull-back is done: moving a module swaps its
        # parameters' storage in place, under the autograd graph that still refers to them.
        with torch.enable_grad(), on_device(self.vae, self.device, self.offload):
            latents = self._encode(leaf)
            with on_device(self.unet, self.device, self.offload):
                latent_grad, t = self.sds.gradient(latents, self._predict_noise, text, step)
            image_grad = pull_back(latents, leaf, latent_grad).to(images.dtype)
        return GuidanceOutput(image_grad=image_grad, timesteps=t, grad_norm=float(image_grad.norm()))

    def _encode(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, 4, h, w) float32 latents, differentiable.

        The posterior mean rather than a sample: the sampling noise would only add variance to the gradient
        (the VAE's posterior is nearly deterministic anyway)."""
        size = self.image_size
        resized = F.interpolate(
            images, size=(size, size), mode="bilinear", align_corners=False, antialias=images.shape[-1] > size
        )
        pixels = (resized * 2.0 - 1.0).to(self.device, self.dtype)
        mean = self.vae.encode(pixels).latent_dist.mean
        shift = self.vae.config.shift_factor or 0.0
        # SDS runs in float32 (alphabar_t near 1 loses its digits in fp16); the U-Net gets its own dtype.
        return ((mean - shift) * self.vae.config.scaling_factor).float()


def build(config: GuidanceConfig, context: GuidanceContext) -> StableDiffusionGuidance:
    return build_backend(StableDiffusionGuidance, config, context)
