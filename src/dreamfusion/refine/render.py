"""Differentiable renders of a triangle mesh on the CPU, shaded like the field's (`shading.shade`).

Which triangle covers a pixel comes from the project's rasteriser (`render.raster`), without gradients;
everything after that is ordinary autograd: the covering triangle's barycentric weights at the pixel centre
are computed again from the projected vertex positions, so the surface point, its interpolated vertex
normal and therefore the shading are differentiable in the vertices (nvdiffrast's split into a
non-differentiable rasterisation and a differentiable interpolation). Each image is rendered `supersample`
times larger and averaged down, so edges are soft as in a volume render.

What this does not give is a gradient for the silhouette: moving an edge across a pixel changes which
triangle covers it, which is not differentiable here (nvdiffrast adds an antialiasing pass for that). The
mesh stage therefore refines shape through shading, which is what textureless renders show, and keeps the
outline the NeRF stage found.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from dreamfusion.render.cameras import Cameras
from dreamfusion.render.lights import LightConfig
from dreamfusion.render.raster import project, rasterize
from dreamfusion.render.rays import camera_rays
from dreamfusion.render.shading import shade
from dreamfusion.render.views import ViewRenders


@dataclass(frozen=True)
class MeshRender:
    image: Tensor  # (B, H, W, 3) shaded colour over the background
    opacity: Tensor  # (B, H, W) covered share of each pixel's samples
    background: Tensor  # (B, H, W, 3)


def vertex_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """(V, 3) unit normals: the area-weighted sum of the adjacent faces' normals (counter-clockwise seen
    from outside is outward), differentiable in `vertices`."""
    corners = vertices[faces]  # (F, 3, 3)
    face_normal = torch.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0], dim=-1)
    summed = torch.zeros_like(vertices).index_add(0, faces.reshape(-1), face_normal.repeat_interleave(3, 0))
    return F.normalize(summed, dim=-1, eps=1e-12)


def _pixel_weights(xy: Tensor, depth: Tensor, corners: Tensor, pixels: Tensor, width: int) -> Tensor:
    """(N, 3) perspective-correct barycentric weights of pixel centres `pixels` (flat indices) in the
    triangles `corners` (N, 3 vertex indices), differentiable in the projected positions xy (V, 2) and
    depth (V,)."""
    px = (pixels % width).to(xy.dtype) + 0.5
    py = (pixels // width).to(xy.dtype) + 0.5
    p0, p1, p2 = xy[corners[:, 0]], xy[corners[:, 1]], xy[corners[:, 2]]
    area = (p1[:, 0] - p0[:, 0]) * (p2[:, 1] - p0[:, 1]) - (p2[:, 0] - p0[:, 0]) * (p1[:, 1] - p0[:, 1])
    w0 = ((p1[:, 0] - px) * (p2[:, 1] - py) - (p2[:, 0] - px) * (p1[:, 1] - py)) / area
    w1 = ((p2[:, 0] - px) * (p0[:, 1] - py) - (p0[:, 0] - px) * (p2[:, 1] - py)) / area
    screen = torch.stack([w0, w1, 1.0 - w0 - w1], -1)
    weighted = screen / depth[corners]  # perspective correction: interpolate w / z, then normalise
    return weighted / weighted.sum(-1, keepdim=True)


def _scaled(cameras: Cameras, s: int) -> Cameras:
    return Cameras(
        cameras.c2w,
        cameras.focal_px * s,
        cameras.width * s,
        cameras.height * s,
        cameras.elevation_deg,
        cameras.azimuth_deg,
        cameras.distance,
    )


@dataclass(frozen=True)
class _Hits:
    """The covered pixels of one view: flat indices (N,), their triangles' vertex indices (N, 3) and
    barycentric weights (N, 3, 1), and the surface points and unit normals there (N, 3)."""

    pixels: Tensor
    corners: Tensor
    weights: Tensor
    point: Tensor
    normal: Tensor

    def interpolate(self, per_vertex: Tensor) -> Tensor:
        return (per_vertex[self.corners] * self.weights).sum(1)


def _surface(vertices: Tensor, faces: Tensor, normals: Tensor, cameras: Cameras, view: int) -> _Hits:
    with torch.no_grad():  # the rasteriser works on the CPU, whatever device the mesh is on
        xy, z = project(vertices.detach().cpu(), cameras.to(torch.device("cpu")), view)
        fragments = rasterize(xy, faces.cpu(), cameras.height, cameras.width, depth=z, cull_back_faces=True)
    face = fragments.face.reshape(-1)
    pixels = (face >= 0).nonzero().squeeze(1)
    corners = faces[face[pixels].to(faces.device)]  # (N, 3)
    pixels = pixels.to(vertices.device)
    xy, z = project(vertices, cameras, view)  # again, with gradients
    weights = _pixel_weights(xy, z, corners, pixels, cameras.width)[:, :, None]  # (N, 3, 1)
    point = (vertices[corners] * weights).sum(1)
    normal = F.normalize((normals[corners] * weights).sum(1), dim=-1, eps=1e-12)
    return _Hits(pixels, corners, weights, point, normal)


def _downsample(pixels: Tensor, values: Tensor, cameras: Cameras, s: int) -> Tensor:
    """(H / s, W / s, C + 1): the mean of each s x s block of the covered pixels' values (C channels,
    0 where uncovered), then the covered share, the opacity. A sum of s^2 strided slices: several times
    faster on channels-last images than a mean over two axes."""
    n = cameras.height * cameras.width
    layer = torch.zeros(n, values.shape[1] + 1, dtype=values.dtype, device=values.device)
    layer = layer.index_copy(0, pixels, torch.cat([values, torch.ones_like(values[:, :1])], 1))
    layer = layer.view(cameras.height, cameras.width, -1)
    return sum(layer[i::s, j::s] for i in range(s) for j in range(s)) / s**2


def render_mesh(
    vertices: Tensor,
    faces: Tensor,
    cameras: Cameras,
    albedo: Callable[[Tensor], Tensor],
    background: Callable[[Tensor], Tensor],
    lights: Tensor,
    modes: Tensor,
    ambient: float,
    diffuse: float,
    supersample: int = 2,
) -> MeshRender:
    """Render B images of the mesh (vertices (V, 3), faces (F, 3) wound counter-clockwise from outside).

    albedo maps surface points (N, 3) to colours (N, 3) (the field's albedo); background maps ray directions
    (B, H, W, 3) to colours, at the output size; lights (B, 3) positions; modes (B,) ShadingMode.
    """
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    s = supersample
    big = _scaled(cameras, s)
    normals = vertex_normals(vertices, faces)
    backdrop = background(camera_rays(cameras).directions)  # (B, H, W, 3)
    images, coverage = [], []
    for view in range(cameras.batch_size):
        hits = _surface(vertices, faces, normals, big, view)
        mode = modes[view].expand(hits.pixels.numel())
        light = lights[view].expand(hits.pixels.numel(), 3)
        colour = shade(albedo(hits.point), hits.normal, hits.point, light, mode, ambient, diffuse)
        stacked = _downsample(hits.pixels, colour, big, s)
        images.append(stacked[..., :3])
        coverage.append(stacked[..., 3])
    opacity = torch.stack(coverage)
    image = torch.stack(images) + (1.0 - opacity)[..., None] * backdrop
    return MeshRender(image=image, opacity=opacity, background=backdrop)


@torch.no_grad()
def mesh_views(
    vertices: Tensor,
    faces: Tensor,
    albedo: Callable[[Tensor], Tensor],
    cameras: Cameras,
    light: LightConfig,
    supersample: int = 2,
    normals: Tensor | None = None,
    albedo_input: Tensor | None = None,
) -> ViewRenders:
    """What `views.render_views` gives for a field, for the mesh: shaded (light at the camera), albedo,
    textureless and normal renders over white, with opacity and depth (distance from the camera).

    `albedo` maps each pixel's surface point (N, 3) to its colour, or with `albedo_input` (V, C) that
    per-vertex attribute interpolated there (a textured mesh's texture coordinates). `normals` (V, 3) are
    the vertex normals to interpolate (default: `vertex_normals`)."""
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    big = _scaled(cameras, supersample)
    normals = vertex_normals(vertices, faces) if normals is None else normals
    layers = []
    for view in range(cameras.batch_size):
        hits = _surface(vertices, faces, normals, big, view)
        point, normal = hits.point, hits.normal
        camera = big.position[view].float()
        to_light = F.normalize(camera - point, dim=-1)  # headlights(): the light is at the camera
        lambert = light.ambient + light.diffuse * (normal * to_light).sum(-1, keepdim=True).clamp_min(0.0)
        colour = albedo(point if albedo_input is None else hits.interpolate(albedo_input))
        distance = (point - camera).norm(dim=-1, keepdim=True)
        values = torch.cat([colour * lambert, colour, lambert.expand(-1, 3), (normal + 1) / 2, distance], 1)
        layers.append(_downsample(hits.pixels, values, big, supersample))
    stacked = torch.stack(layers)  # (V, H, W, 14): 13 premultiplied channels, then opacity
    alpha = stacked[..., 13]
    white = (1.0 - alpha)[..., None]
    rgb = (stacked[..., :12] + white.expand(-1, -1, -1, 12)).clamp(0, 1)
    return ViewRenders(
        shaded=rgb[..., 0:3],
        albedo=rgb[..., 3:6],
        textureless=rgb[..., 6:9],
        normals=rgb[..., 9:12],
        opacity=alpha,
        depth=stacked[..., 12] / alpha.clamp_min(1e-6),
    )
