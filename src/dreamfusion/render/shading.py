"""How each training image is shaded (paper sec. 3.1 and App. A.2).

Three modes per image: the albedo alone; lambertian shading of the albedo by a point light; and
"textureless" lambertian shading with the albedo replaced by white, which forces geometry to explain the
image. The first steps render albedo only; afterwards images are albedo 25 %, lambertian 37.5 %,
textureless 37.5 % (diffuse 75 % of the time, half of those textureless).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import torch
import torch.nn.functional as F
from torch import Tensor


class ShadingMode(IntEnum):
    ALBEDO = 0
    LAMBERTIAN = 1
    TEXTURELESS = 2


@dataclass(frozen=True)
class ShadingConfig:
    albedo_warmup_fraction: float = 1000 / 15000  # albedo only for the first 1,000 of 15,000 steps
    diffuse_probability: float = 0.75  # after warm-up, shade with the light this often ...
    textureless_probability: float = 0.5  # ... and make this share of the shaded images textureless

    def __post_init__(self) -> None:
        for name in ("albedo_warmup_fraction", "diffuse_probability", "textureless_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"shading.{name} must be in [0, 1]")


def choose_shading(
    config: ShadingConfig, step: int, total_steps: int, batch: int, generator: torch.Generator
) -> Tensor:
    """(B,) ShadingMode per image. Draws from `generator` every step, warm-up included, so the random
    stream does not depend on the schedule."""
    diffuse = torch.rand(batch, generator=generator) < config.diffuse_probability
    textureless = torch.rand(batch, generator=generator) < config.textureless_probability
    modes = torch.full((batch,), int(ShadingMode.ALBEDO), dtype=torch.long)
    modes[diffuse] = int(ShadingMode.LAMBERTIAN)
    modes[diffuse & textureless] = int(ShadingMode.TEXTURELESS)
    if step < config.albedo_warmup_fraction * total_steps:
        modes[:] = int(ShadingMode.ALBEDO)
    return modes


def shade(
    albedo: Tensor,
    normals: Tensor | None,
    points: Tensor,
    light_position: Tensor,
    mode: Tensor,
    ambient: float,
    diffuse: float,
) -> Tensor:
    """Per-sample colour. albedo, normals, points: (N, 3); light_position: (N, 3); mode: (N,) ShadingMode.

    colour = albedo * (ambient + diffuse * max(0, n . l)), l the unit vector to the light (sec. 3.1).
    """
    if normals is None:
        if bool((mode != ShadingMode.ALBEDO).any()):
            raise ValueError("lambertian and textureless shading need normals")
        return albedo
    to_light = F.normalize(light_position - points, dim=-1)
    lambert = ambient + diffuse * (normals * to_light).sum(-1, keepdim=True).clamp_min(0.0)
    base = torch.where((mode == ShadingMode.TEXTURELESS)[:, None], torch.ones_like(albedo), albedo)
    return torch.where((mode == ShadingMode.ALBEDO)[:, None], albedo, base * lambert)
