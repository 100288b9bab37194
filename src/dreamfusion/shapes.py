"""Known objects as fields: signed distance functions turned into density, with a colour per part.

They let tests and the `target` guidance check the optimiser against a known answer: a coloured sphere, and
an asymmetric mug whose handle is on its left (+Y) and whose front (+X) carries a coloured badge, so a
multi-faced (Janus) result is visible.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from dreamfusion.field import Field, FieldOutput, autograd_normals

SHAPES = ("sphere", "mug")


def sdf_sphere(p: Tensor, centre: tuple[float, float, float], radius: float) -> Tensor:
    return (p - p.new_tensor(centre)).norm(dim=-1) - radius


def sdf_capped_cylinder(p: Tensor, radius: float, half_height: float) -> Tensor:
    """Vertical (Z) cylinder centred at the origin."""
    d = torch.stack([p[:, :2].norm(dim=-1) - radius, p[:, 2].abs() - half_height], -1)
    return d.max(-1).values.clamp(max=0.0) + d.clamp_min(0.0).norm(dim=-1)


def sdf_torus_xz(p: Tensor, centre: tuple[float, float, float], major: float, minor: float) -> Tensor:
    """Torus in the plane spanned by Y and Z (its axis along X), like a mug handle seen from the front."""
    q = p - p.new_tensor(centre)
    ring = torch.stack([q[:, [1, 2]].norm(dim=-1) - major, q[:, 0]], -1)
    return ring.norm(dim=-1) - minor


@dataclass(frozen=True)
class ShapeGeometry:
    sdf: Tensor  # (N,) signed distance, negative inside
    albedo: Tensor  # (N, 3)


def shape_geometry(name: str, points: Tensor) -> ShapeGeometry:
    match name:
        case "sphere":
            sdf = sdf_sphere(points, (0.0, 0.0, 0.0), 0.5)
            albedo = points.new_tensor([0.85, 0.15, 0.1]).expand(points.shape[0], 3)
        case "mug":
            body = sdf_capped_cylinder(points, 0.35, 0.35)
            handle = sdf_torus_xz(points, (0.0, 0.42, 0.0), 0.18, 0.05)
            badge = sdf_sphere(points, (0.33, 0.0, 0.05), 0.12)
            sdf = torch.minimum(torch.minimum(body, handle), badge)
            blue = points.new_tensor([0.15, 0.3, 0.85])
            yellow = points.new_tensor([0.95, 0.8, 0.1])
            albedo = torch.where((badge <= torch.minimum(body, handle))[:, None], yellow, blue)
        case _:
            raise ValueError(f"unknown shape {name!r}; known: {', '.join(SHAPES)}")
    return ShapeGeometry(sdf=sdf, albedo=albedo)


class AnalyticField(Field):
    """Density `sharpness` deeper than `softness` inside, a linear ramp up to it, zero outside: no density
    leaks outside the shape, so silhouettes have the true size."""

    def __init__(self, shape: str, bound: float = 1.4, sharpness: float = 200.0, softness: float = 0.02):
        super().__init__()
        if shape not in SHAPES:
            raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
        self.shape = shape
        self.bound = bound
        self.sharpness = sharpness
        self.softness = softness

    def _density(self, sdf: Tensor) -> Tensor:
        return self.sharpness * (-sdf / self.softness).clamp(0.0, 1.0)

    def density(self, points: Tensor) -> Tensor:
        return self._density(shape_geometry(self.shape, points).sdf)

    def forward(self, points: Tensor, with_normals: bool = False) -> FieldOutput:
        geometry = shape_geometry(self.shape, points)
        density = self._density(geometry.sdf)
        normals = None
        if with_normals:
            with torch.no_grad():
                normals = autograd_normals(lambda x: -shape_geometry(self.shape, x).sdf, points)
                normals = F.normalize(normals, dim=-1)
        return FieldOutput(density=density, albedo=geometry.albedo, normals=normals)
