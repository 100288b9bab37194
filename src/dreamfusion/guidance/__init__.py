"""Guidance backends, chosen by `GuidanceConfig.kind` in one place (`build_guidance`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from dreamfusion.device import prior_dtype
from dreamfusion.fields.analytic import SHAPES
from dreamfusion.guidance.base import Guidance, SDSConfig
from dreamfusion.render.lights import LightConfig
from dreamfusion.render.sampling import SamplingConfig

# guidance.target_shape: a named test object, or "prompt": the procedural world's scene of the run's prompt.
TARGET_PROMPT = "prompt"
TARGETS = (*SHAPES, TARGET_PROMPT)

# What `--guidance KIND` loads when no `--model` is given.
DEFAULT_MODELS = {
    "pixel": "DeepFloyd/IF-I-XL-v1.0",  # pixel-space, 64x64: the closest open model to the paper's Imagen
    "stable-diffusion": "stabilityai/stable-diffusion-2-1-base",  # what stable-dreamfusion defaults to
}
# "builtin" is the prior that ships in the package (prior/builtin.py), no download, loaded by the backend of
# its folder layout: stable-diffusion for the latent prior, pixel for the older pixel-space one.
KINDS = ("builtin", "pixel", "stable-diffusion", "target")


@dataclass(frozen=True)
class GuidanceConfig:
    kind: str = "pixel"
    model: str | None = None  # hub id or local folder; None takes DEFAULT_MODELS[kind]
    sds: SDSConfig = field(default_factory=SDSConfig)
    precision: str = "auto"  # "auto" = fp16 on CUDA, fp32 on CPU (device.py)
    attention_slicing: bool = False  # lower peak memory on small GPUs, slower
    cpu_offload: bool = False  # keep the prior's modules on the CPU between uses (CUDA only)
    # For kind "target": the known object to reconstruct, a name of shapes.SHAPES or "prompt" (the world's
    # exact scene for the prompt, so a run shows what the optimiser makes of a perfect teacher).
    target_shape: str = "sphere"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"guidance.kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.sds.guidance_scale < 0:
            raise ValueError("guidance.sds.guidance_scale must be >= 0")
        if self.target_shape not in TARGETS:
            raise ValueError(f"target_shape must be one of {', '.join(TARGETS)}, got {self.target_shape!r}")
        if self.kind == "builtin" and self.model is not None:
            raise ValueError(
                "guidance.model names a prior to load, but the builtin kind has its own weights: "
                "use --guidance pixel (or stable-diffusion) with --model"
            )
        if self.precision not in ("auto", "fp32", "fp16", "bf16"):
            raise ValueError(f"precision must be auto, fp32, fp16 or bf16, got {self.precision!r}")

    def model_id(self) -> str | None:
        return self.model or DEFAULT_MODELS.get(self.kind)


def build_guidance(
    config: GuidanceConfig,
    device: torch.device,
    seed: int,
    sampling: SamplingConfig,
    light: LightConfig,
    resolution: int | None,
    cache: Path | None = None,
    prompt: str | None = None,
) -> Guidance:
    """Build the guidance named by `config.kind`. Loading a diffusion prior can raise UserError (missing
    weights, bad folder) with a one-line message. The target guidance renders with the run's sampling and
    light settings at the run's resolution (64 when unset); its "prompt" target is the world scene of
    `prompt` (a CaptionError, one line, when the prompt is not a world caption). The builtin prior's folder
    (weights checked against their sha256, tokenizer built once) is assembled under `cache`, default the
    dreamfusion cache."""
    dtype = prior_dtype(device, config.precision)
    match config.kind:
        case "builtin":
            from dreamfusion.files import dreamfusion_cache
            from dreamfusion.guidance.pixel_diffusion import PixelDiffusionGuidance
            from dreamfusion.guidance.stable_diffusion import StableDiffusionGuidance
            from dreamfusion.prior.builtin import builtin_prior_folder, is_latent

            folder = builtin_prior_folder(cache or dreamfusion_cache())
            # The folder's layout names its backend: Stable Diffusion's for a latent prior, IF's for pixels.
            backend = StableDiffusionGuidance if is_latent(folder) else PixelDiffusionGuidance
            return backend(str(folder), config.sds, device, dtype, seed)
        case "stable-diffusion":
            from dreamfusion.guidance.stable_diffusion import StableDiffusionGuidance

            return StableDiffusionGuidance(
                config.model_id(),
                config.sds,
                device,
                dtype,
                seed,
                config.attention_slicing,
                config.cpu_offload,
            )
        case "pixel":
            from dreamfusion.guidance.pixel_diffusion import PixelDiffusionGuidance

            return PixelDiffusionGuidance(
                config.model_id(),
                config.sds,
                device,
                dtype,
                seed,
                config.attention_slicing,
                config.cpu_offload,
            )
        case "target":
            from dreamfusion.fields.analytic import AnalyticField, SceneField
            from dreamfusion.guidance.target import TargetGuidance
            from dreamfusion.render.renderer import RenderSettings
            from dreamfusion.world import scene_from_caption

            if config.target_shape == TARGET_PROMPT:
                scene = scene_from_caption(prompt or "")
                target, name = SceneField(scene), scene.caption()
            else:
                target, name = AnalyticField(config.target_shape), config.target_shape
            size = resolution or 64
            return TargetGuidance(target, name, RenderSettings.of(sampling, light), size)
        case _:
            raise ValueError(f"unknown guidance kind {config.kind!r}")
