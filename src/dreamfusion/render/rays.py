"""Cameras to rays, and where rays enter and leave the bounding sphere."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from dreamfusion.render.cameras import Cameras


@dataclass(frozen=True)
class Rays:
    origins: Tensor  # (B, H, W, 3)
    directions: Tensor  # (B, H, W, 3), unit length


def camera_rays(cameras: Cameras) -> Rays:
    """One ray through the centre of every pixel. Pixel (0, 0) is the top-left corner of the image."""
    device = cameras.c2w.device
    h, w = cameras.height, cameras.width
    rows = torch.arange(h, device=device, dtype=torch.float32) + 0.5
    cols = torch.arange(w, device=device, dtype=torch.float32) + 0.5
    v, u = torch.meshgrid(rows, cols, indexing="ij")  # (H, W)
    f = cameras.focal_px.view(-1, 1, 1)
    # OpenGL camera: looks down -Z, image up is +Y.
    x = (u - w / 2) / f  # (B, H, W)
    y = -(v - h / 2) / f
    dirs_cam = torch.stack([x, y, -torch.ones_like(x)], -1)  # (B, H, W, 3)
    rotation = cameras.c2w[:, :3, :3]
    dirs_world = torch.einsum("bij,bhwj->bhwi", rotation, dirs_cam)
    origins = cameras.position.view(-1, 1, 1, 3).expand_as(dirs_world)
    return Rays(origins=origins, directions=F.normalize(dirs_world, dim=-1))


def sphere_intersection(origins: Tensor, directions: Tensor, radius: float) -> tuple[Tensor, Tensor, Tensor]:
    """Entry and exit distances of rays with the sphere |x| = radius, and whether they hit it.

    origins, directions: (..., 3), directions unit length. A camera inside the sphere (the paper's cameras
    are 1 to 1.5 from the origin, inside its radius-1.4 sphere) enters at distance 0.
    """
    b = (origins * directions).sum(-1)
    c = (origins * origins).sum(-1) - radius**2
    disc = b * b - c
    hit = disc > 0
    root = disc.clamp_min(0).sqrt()
    near = (-b - root).clamp_min(0.0)
    far = -b + root
    hit = hit & (far > near)
    return near, far, hit
