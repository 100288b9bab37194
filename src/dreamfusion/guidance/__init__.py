"""Guidance backends, one table: `BACKENDS` maps each `guidance.kind` to the module that builds it.

A backend is one module with a `build(config, context)` function returning a `Guidance` (base.py). Adding
one is that file plus its line in `BACKENDS`; the trainer and the commands only ever call `build_guidance`
and read the guidance's `render_size`. Settings only one backend reads sit in that backend's own section
(`guidance.target.*`, `guidance.diffusers.*`); kind-specific warnings are the built guidance's `warnings`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dreamfusion.device import prior_dtype
from dreamfusion.guidance.base import DiffusersConfig, Guidance, SDSConfig
from dreamfusion.guidance.target import TargetConfig
from dreamfusion.render.lights import LightConfig
from dreamfusion.render.sampling import SamplingConfig


@dataclass(frozen=True)
class Backend:
    """One guidance kind. Its module is imported only when a run uses it, so a run pays only for the
    libraries of its own backend (diffusers and transformers are slow to import)."""

    module: str  # holds `build(config: GuidanceConfig, context: GuidanceContext) -> Guidance`
    default_model: str | None = None  # what `--guidance KIND` loads without `--model`
    takes_model: bool = True  # False: `guidance.model` is refused (the kind brings or needs no weights)
    preset: str = "paper"  # the preset a run of this kind starts from unless `--preset` names another
    about: str = ""  # one line for `dreamfusion generate --help`


BACKENDS: dict[str, Backend] = {
    "builtin": Backend(
        "dreamfusion.guidance.builtin",
        takes_model=False,
        preset="builtin",
        about="inside the package (verified by sha256)",
    ),
    # pixel-space, 64x64: the closest open model to the paper's Imagen
    "pixel": Backend("dreamfusion.guidance.pixel_diffusion", default_model="DeepFloyd/IF-I-XL-v1.0"),
    # what stable-dreamfusion defaults to
    "stable-diffusion": Backend(
        "dreamfusion.guidance.stable_diffusion", default_model="stabilityai/stable-diffusion-2-1-base"
    ),
    "target": Backend("dreamfusion.guidance.target", about="no model: a known object"),
}


@dataclass(frozen=True)
class GuidanceConfig:
    kind: str = "pixel"  # a key of BACKENDS
    model: str | None = None  # hub id or local folder; None takes the backend's default_model
    sds: SDSConfig = field(default_factory=SDSConfig)
    precision: str = "auto"  # "auto" = fp16 on CUDA, fp32 on CPU (device.py)
    # The sections of backends with settings of their own.
    diffusers: DiffusersConfig = field(default_factory=DiffusersConfig)  # pixel and stable-diffusion
    target: TargetConfig = field(default_factory=TargetConfig)

    def __post_init__(self) -> None:
        if self.kind not in BACKENDS:
            raise ValueError(f"guidance.kind must be one of {', '.join(BACKENDS)}, got {self.kind!r}")
        if self.sds.guidance_scale < 0:
            raise ValueError("guidance.sds.guidance_scale must be >= 0")
        if self.model is not None and not BACKENDS[self.kind].takes_model:
            raise ValueError(
                f"guidance.model names a prior to load, but the {self.kind} kind loads none: "
                "use --guidance pixel (or stable-diffusion) with --model"
            )
        if self.precision not in ("auto", "fp32", "fp16", "bf16"):
            raise ValueError(f"precision must be auto, fp32, fp16 or bf16, got {self.precision!r}")

    def model_id(self) -> str | None:
        return self.model or BACKENDS[self.kind].default_model


@dataclass(frozen=True)
class GuidanceContext:
    """What a backend may need from the run besides its own config section."""

    device: torch.device
    dtype: torch.dtype  # the prior's, from guidance.precision and the device
    seed: int
    sampling: SamplingConfig  # the run's, for a backend that renders (target)
    light: LightConfig
    resolution: int | None  # train.resolution; None lets the backend choose its render_size
    cache: Path | None  # where the builtin prior's folder is assembled; None: the dreamfusion cache
    prompt: str | None


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
    weights, bad folder) with a one-line message, as can a target guidance asked for the world scene of a
    prompt that is not a world caption."""
    context = GuidanceContext(
        device, prior_dtype(device, config.precision), seed, sampling, light, resolution, cache, prompt
    )
    return importlib.import_module(BACKENDS[config.kind].module).build(config, context)
