"""Random point lights around the camera (App. A.2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class LightConfig:
    """The light's direction is the camera's, perturbed by N(0, I); its distance is U(0.8, 1.5) (App. A.2)."""

    position_std: float = 1.0
    distance_range: tuple[float, float] = (0.8, 1.5)
    ambient: float = 0.1  # shading = albedo * (ambient + diffuse * max(0, n . l))  (sec. 3.1)
    diffuse: float = 0.9

    def __post_init__(self) -> None:
        if min(self.ambient, self.diffuse, self.position_std) < 0:
            raise ValueError("ambient, diffuse and position_std must be >= 0")
        if not 0 < self.distance_range[0] <= self.distance_range[1]:
            raise ValueError(f"distance_range must satisfy 0 < lo <= hi, got {self.distance_range}")


def sample_point_lights(camera_positions: Tensor, config: LightConfig, generator: torch.Generator) -> Tensor:
    """(B, 3) light positions. `camera_positions` is (B, 3) on the CPU, like the generator."""
    batch = camera_positions.shape[0]
    direction = F.normalize(
        camera_positions + torch.randn(batch, 3, generator=generator) * config.position_std, dim=-1
    )
    lo, hi = config.distance_range
    distance = lo + (hi - lo) * torch.rand(batch, 1, generator=generator)
    return direction * distance


def headlights(camera_positions: Tensor) -> Tensor:
    """A light at each camera: the deterministic choice for validation and video renders."""
    return camera_positions.clone()
