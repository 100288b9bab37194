"""What the two diffusers backends share once their weights are loaded: the text encoder, the frozen U-Net
called on both classifier-free-guidance halves, and the seeded SDS sampler."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeVar

import torch
from diffusers import UNet2DConditionModel
from torch import Tensor

from dreamfusion.guidance.base import NoisePrediction, ScoreDistillation, SDSConfig, TextEmbeddings
from dreamfusion.guidance.components import epsilon_from_output, per_image
from dreamfusion.guidance.hub import quiet_diffusers_and_transformers
from dreamfusion.guidance.text_encoder import PromptEncoder

if TYPE_CHECKING:
    from dreamfusion.distributed import Shard
    from dreamfusion.guidance import GuidanceConfig, GuidanceContext

Backend = TypeVar("Backend", bound="FrozenPrior")


class FrozenPrior:
    """Base of the Stable Diffusion and pixel-space backends, which add how renders become U-Net input."""

    warnings: tuple[str, ...] = ()

    def __init__(
        self,
        text: PromptEncoder,
        unet: UNet2DConditionModel,
        alphas_cumprod: Tensor,
        prediction_type: str,
        eps_channels: int,
        sds: SDSConfig,
        device: torch.device,
        dtype: torch.dtype,
        seed: int,
    ):
        self.text = text
        self.unet = unet
        self.alphas_cumprod = alphas_cumprod.to(device)
        self.prediction_type = prediction_type
        self.eps_channels = eps_channels  # IF's U-Net also outputs its variance in further channels
        self.device = device
        self.dtype = dtype
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        self.sds = ScoreDistillation(sds, self.alphas_cumprod, self.generator)

    def cache_key(self) -> str:
        return self.text.key

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        return self.text(texts)

    def rng_state(self) -> Tensor:
        return self.generator.get_state()

    def set_rng_state(self, state: Tensor) -> None:
        self.generator.set_state(state.cpu())

    def use_shard(self, shard: Shard) -> None:
        self.sds.shard = shard

    def _predict_noise(self, z_t: Tensor, t: Tensor, text: TextEmbeddings) -> NoisePrediction:
        batch = z_t.shape[0]
        parts = [per_image(text.cond, batch), per_image(text.uncond, batch)]
        k = 0 if text.negatives is None else text.negatives.shape[1]
        if text.negatives is not None:  # Perp-Neg: K more prompts per image, image-major
            parts.append(text.negatives.flatten(0, 1))
        states = torch.cat(parts)
        z_all = torch.cat([z_t, z_t, z_t.repeat_interleave(k, 0)])
        t_all = torch.cat([t, t, t.repeat_interleave(k, 0)])
        # Every CFG half (and Perp-Neg's negatives) in one U-Net call, then split back by name.
        output = self.unet(
            z_all.to(self.dtype), t_all, encoder_hidden_states=states.to(self.device, self.dtype)
        ).sample.float()
        output = output[:, : self.eps_channels]
        eps = epsilon_from_output(output, z_all, self.alphas_cumprod[t_all], self.prediction_type)
        cond, uncond, negatives = eps[:batch], eps[batch : 2 * batch], eps[2 * batch :]
        if text.negatives is None:
            return NoisePrediction(cond=cond, uncond=uncond)
        return NoisePrediction(
            cond=cond,
            uncond=uncond,
            negatives=negatives.view(batch, k, *negatives.shape[1:]),
            negative_weights=text.negative_weights,
        )


def build_backend(backend: type[Backend], config: GuidanceConfig, context: GuidanceContext) -> Backend:
    """`build` of the two diffusers kinds: the configured (or default) model with the memory options."""
    quiet_diffusers_and_transformers()
    model = config.model_id()
    if model is None:
        raise ValueError(f"guidance kind {config.kind!r} needs a model and has no default")
    options = config.diffusers
    return backend(
        model,
        config.sds,
        context.device,
        context.dtype,
        context.seed,
        options.attention_slicing,
        options.cpu_offload,
    )
