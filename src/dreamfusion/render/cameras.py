"""Random training cameras (App. A.2) and orbit cameras for validation and video.

Convention, used everywhere in the project:
- world +Z is up; the object's front faces +X;
- azimuth 0 deg is the camera on the +X axis looking at the origin (it sees the front), azimuth grows
  counter-clockwise seen from above (90 deg is on +Y); elevation is the angle above the XY plane;
- cameras use the OpenGL axes: a camera looks down its own -Z, +Y is up in the image, +X to the right.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class CameraConfig:
    """Defaults from App. A.2 of the paper."""

    elevation_range_deg: tuple[float, float] = (-10.0, 90.0)
    # Half the elevations are uniform in angle (biased toward the pole), half uniform on the sphere's area.
    pole_biased_fraction: float = 0.5
    azimuth_range_deg: tuple[float, float] = (0.0, 360.0)
    distance_range: tuple[float, float] = (1.0, 1.5)
    focal_multiplier_range: tuple[float, float] = (0.7, 1.35)  # focal length = U(0.7, 1.35) x render width
    position_jitter: float = 0.1  # camera position += U(-0.1, 0.1)^3
    look_at_std: float = 0.2  # look-at point ~ N(0, 0.2 I)
    up_std: float = 0.02  # up vector += N(0, 0.02 I)

    def __post_init__(self) -> None:
        lo, hi = self.elevation_range_deg
        if not -90.0 <= lo <= hi <= 90.0:
            raise ValueError(f"elevation_range_deg must lie in [-90, 90] with lo <= hi, got {lo}, {hi}")
        if not 0.0 <= self.pole_biased_fraction <= 1.0:
            raise ValueError("pole_biased_fraction must be in [0, 1]")
        if min(self.distance_range) <= 0 or min(self.focal_multiplier_range) <= 0:
            raise ValueError("camera distances and focal multipliers must be positive")


@dataclass(frozen=True)
class Cameras:
    """A batch of B pinhole cameras sharing one image size."""

    c2w: Tensor  # (B, 4, 4) camera-to-world, OpenGL camera axes
    focal_px: Tensor  # (B,) focal length in pixels
    width: int
    height: int
    elevation_deg: Tensor  # (B,) nominal elevation (before jitter): what the view word is chosen from
    azimuth_deg: Tensor  # (B,) nominal azimuth in [0, 360)
    distance: Tensor  # (B,) nominal distance to the origin

    @property
    def batch_size(self) -> int:
        return int(self.c2w.shape[0])

    @property
    def position(self) -> Tensor:  # (B, 3)
        return self.c2w[:, :3, 3]

    def rows(self, lo: int, hi: int) -> Cameras:
        """Cameras lo..hi-1 of the batch."""
        return Cameras(
            self.c2w[lo:hi],
            self.focal_px[lo:hi],
            self.width,
            self.height,
            self.elevation_deg[lo:hi],
            self.azimuth_deg[lo:hi],
            self.distance[lo:hi],
        )

    def to(self, device: torch.device) -> Cameras:
        return Cameras(
            self.c2w.to(device),
            self.focal_px.to(device),
            self.width,
            self.height,
            self.elevation_deg.to(device),
            self.azimuth_deg.to(device),
            self.distance.to(device),
        )


def spherical_to_position(elevation_deg: Tensor, azimuth_deg: Tensor, distance: Tensor) -> Tensor:
    """(B, 3) camera centres in the project's convention (azimuth 0 on +X, +Z up)."""
    el, az = torch.deg2rad(elevation_deg), torch.deg2rad(azimuth_deg)
    return torch.stack([el.cos() * az.cos(), el.cos() * az.sin(), el.sin()], -1) * distance[:, None]


def look_at(position: Tensor, target: Tensor, up: Tensor) -> Tensor:
    """(B, 4, 4) camera-to-world matrices for cameras at `position` looking at `target`."""
    forward = F.normalize(target - position, dim=-1)
    right = torch.cross(forward, up, dim=-1)
    # Looking straight down the up vector leaves `right` undefined: fall back to +Y as the image's right.
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-6
    right = torch.where(degenerate, torch.tensor([0.0, 1.0, 0.0], device=position.device), right)
    right = F.normalize(right, dim=-1)
    true_up = torch.cross(right, forward, dim=-1)
    c2w = torch.eye(4, device=position.device).repeat(position.shape[0], 1, 1)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, true_up, -forward, position
    return c2w


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator)


def sample_elevations_deg(n: int, config: CameraConfig, generator: torch.Generator) -> Tensor:
    """Mixture of uniform-in-angle (pole-biased) and uniform-on-the-sphere elevations (App. A.2)."""
    lo, hi = config.elevation_range_deg
    angular = _uniform(n, lo, hi, generator)
    sin_lo, sin_hi = math.sin(math.radians(lo)), math.sin(math.radians(hi))
    area = torch.rad2deg(torch.asin(_uniform(n, sin_lo, sin_hi, generator).clamp(-1, 1)))
    pick_angular = torch.rand(n, generator=generator) < config.pole_biased_fraction
    return torch.where(pick_angular, angular, area)


def sample_cameras(config: CameraConfig, batch: int, resolution: int, generator: torch.Generator) -> Cameras:
    """B random training cameras. Randomness comes only from `generator` (a CPU generator)."""
    elevation = sample_elevations_deg(batch, config, generator)
    azimuth = _uniform(batch, *config.azimuth_range_deg, generator) % 360.0
    distance = _uniform(batch, *config.distance_range, generator)
    focal = _uniform(batch, *config.focal_multiplier_range, generator) * resolution
    jitter = (torch.rand(batch, 3, generator=generator) * 2 - 1) * config.position_jitter
    position = spherical_to_position(elevation, azimuth, distance) + jitter
    target = torch.randn(batch, 3, generator=generator) * config.look_at_std
    up = torch.tensor([0.0, 0.0, 1.0]) + torch.randn(batch, 3, generator=generator) * config.up_std
    return Cameras(look_at(position, target, up), focal, resolution, resolution, elevation, azimuth, distance)


def orbit_cameras(
    num_views: int,
    resolution: int,
    elevation_deg: float = 30.0,
    distance: float = 1.5,
    focal_multiplier: float = 0.85,
    start_azimuth_deg: float = 0.0,
) -> Cameras:
    """Evenly spaced cameras around the object, looking at the origin, no jitter (validation, video, eval)."""
    azimuth = (start_azimuth_deg + torch.arange(num_views) * (360.0 / num_views)) % 360.0
    elevation = torch.full((num_views,), float(elevation_deg))
    dist = torch.full((num_views,), float(distance))
    position = spherical_to_position(elevation, azimuth, dist)
    up = torch.tensor([0.0, 0.0, 1.0]).expand(num_views, 3)
    c2w = look_at(position, torch.zeros_like(position), up)
    focal = torch.full((num_views,), focal_multiplier * resolution)
    return Cameras(c2w, focal, resolution, resolution, elevation, azimuth, dist)
