"""Known objects as fields: signed distance functions turned into density, with a colour per part.

They let tests and the `target` guidance check the optimiser against a known answer: a coloured sphere, an
asymmetric mug whose handle is on its left (+Y) and whose front (+X) carries a coloured badge, so a
multi-faced (Janus) result is visible, and any scene of the procedural world (`SceneField`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from dreamfusion.fields.base import Field, FieldOutput, autograd_normals

if TYPE_CHECKING:  # the world imports the guidance package, which imports this module
    from dreamfusion.world import Scene

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


class SDFField(Field):
    """A known object as a field: density `sharpness` deeper than `softness` inside, a linear ramp up to it,
    zero outside, so no density leaks outside the shape and silhouettes have the true size. Subclasses say
    what the object is (`geometry`)."""

    def __init__(self, bound: float = 1.4, sharpness: float = 200.0, softness: float = 0.02):
        super().__init__()
        self.bound = bound
        self.sharpness = sharpness
        self.softness = softness

    def geometry(self, points: Tensor) -> ShapeGeometry:
        raise NotImplementedError

    def _density(self, sdf: Tensor) -> Tensor:
        return self.sharpness * (-sdf / self.softness).clamp(0.0, 1.0)

    def density(self, points: Tensor) -> Tensor:
        return self._density(self.geometry(points).sdf)

    def forward(self, points: Tensor, with_normals: bool = False) -> FieldOutput:
        geometry = self.geometry(points)
        density = self._density(geometry.sdf)
        normals = None
        if with_normals:
            with torch.no_grad():
                normals = autograd_normals(lambda x: -self.geometry(x).sdf, points)
                normals = F.normalize(normals, dim=-1)
        return FieldOutput(density=density, albedo=geometry.albedo, normals=normals)


class AnalyticField(SDFField):
    """One of the named test objects (SHAPES)."""

    def __init__(self, shape: str, bound: float = 1.4, sharpness: float = 200.0, softness: float = 0.02):
        if shape not in SHAPES:
            raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
        super().__init__(bound, sharpness, softness)
        self.shape = shape

    def geometry(self, points: Tensor) -> ShapeGeometry:
        return shape_geometry(self.shape, points)


class SceneField(SDFField):
    """A scene of the procedural world (dreamfusion.world) with its exact SDF and albedo: what a run of one of
    its captions should end up as."""

    def __init__(self, scene: Scene, bound: float = 1.4, sharpness: float = 200.0, softness: float = 0.02):
        super().__init__(bound, sharpness, softness)
        self.scene = scene

    def geometry(self, points: Tensor) -> ShapeGeometry:
        return ShapeGeometry(sdf=self.scene.sdf(points), albedo=self.scene.albedo(points))
