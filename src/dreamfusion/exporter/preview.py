"""Renders of the exported textured mesh, shaded exactly as the field is (`shading.shade`): albedo times
ambient + diffuse max(0, n . l), with a headlight at the camera, over white.

They are what the turntable video shows and what the fidelity check compares with the field's own renders
(`validation.render_views`), so the two share the cameras (`cameras.orbit_cameras`), the pixel convention
(`rays.camera_rays`) and the `ViewRenders` container. Anti-aliasing: each pixel is the mean of a
`supersample` x `supersample` block of rasterised samples, so opacity is the covered fraction, as a
volume render's opacity is at a soft edge.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dreamfusion.exporter.texture import TexturedMesh, sample_texture
from dreamfusion.render.cameras import Cameras
from dreamfusion.render.lights import LightConfig
from dreamfusion.render.raster import project, rasterize
from dreamfusion.render.views import ViewRenders


def _downsample(image: Tensor, factor: int) -> Tensor:
    """(H * f, W * f, C) -> (H, W, C) by averaging f x f blocks: a sum of f^2 strided slices, several times
    faster on channels-last images than a pooling op or a mean over two axes."""
    total = sum(image[i::factor, j::factor] for i in range(factor) for j in range(factor))
    return total / factor**2


@torch.no_grad()
def render_mesh(
    mesh: TexturedMesh, cameras: Cameras, light: LightConfig | None = None, supersample: int = 2
) -> ViewRenders:
    """Render every view of `cameras` (their width and height are the output size); `light` defaults to
    `LightConfig()`, the validation renders' ambient and diffuse shares."""
    light = light or LightConfig()
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    vertices = torch.from_numpy(mesh.vertices).float()
    faces = torch.from_numpy(mesh.faces)
    normals = torch.from_numpy(mesh.normals).float()
    uv = torch.from_numpy(mesh.uv).float()
    texture = torch.from_numpy(mesh.texture).float() / 255.0
    big = Cameras(
        cameras.c2w,
        cameras.focal_px * supersample,
        cameras.width * supersample,
        cameras.height * supersample,
        cameras.elevation_deg,
        cameras.azimuth_deg,
        cameras.distance,
    )
    layers = []  # per view: (H, W, 14) shaded, albedo, textureless, normals (3 each), alpha, depth
    for view in range(cameras.batch_size):
        xy, z = project(vertices, big, view)
        fragments = rasterize(xy, faces, big.height, big.width, depth=z, cull_back_faces=True)
        covered = fragments.covered
        face = fragments.face[covered]
        weights = fragments.barycentric[covered][:, :, None]  # (N, 3, 1)
        corners = faces[face]  # (N, 3)
        point = (vertices[corners] * weights).sum(1)
        normal = F.normalize((normals[corners] * weights).sum(1), dim=-1)
        albedo = sample_texture(texture, (uv[corners] * weights).sum(1))
        camera = big.position[view].float()
        to_light = F.normalize(camera - point, dim=-1)  # headlights(): the light is at the camera
        lambert = light.ambient + light.diffuse * (normal * to_light).sum(-1, keepdim=True).clamp_min(0.0)
        distance = (point - camera).norm(dim=-1, keepdim=True)
        # White where nothing is drawn (alpha and depth 0), so that averaging a block composites over white.
        image = torch.ones(big.height, big.width, 14)
        image[..., 12:] = 0.0
        image[covered] = torch.cat(
            [
                albedo * lambert,
                albedo,
                lambert.expand(-1, 3),
                (normal + 1) / 2,
                torch.ones_like(distance),
                distance,
            ],
            -1,
        )
        layers.append(_downsample(image, supersample))
    stacked = torch.stack(layers)  # (V, H, W, 14)
    alpha = stacked[..., 12]
    depth = stacked[..., 13] / alpha.clamp_min(1e-6)  # mean distance over the covered samples
    colours = stacked[..., :12].clamp(0, 1)
    return ViewRenders(
        shaded=colours[..., 0:3],
        albedo=colours[..., 3:6],
        textureless=colours[..., 6:9],
        normals=colours[..., 9:12],
        opacity=alpha,
        depth=depth,
    )
