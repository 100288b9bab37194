"""Renders of the exported textured mesh, shaded exactly as the field is (`shading.shade`): albedo times
ambient + diffuse max(0, n . l), with a headlight at the camera, over white.

They are what the turntable video shows and what the fidelity check compares with the field's own renders
(`validation.render_views`), so the two share the cameras (`cameras.orbit_cameras`), the pixel convention
(`rays.camera_rays`) and the `ViewRenders` container. Anti-aliasing: each pixel is the mean of a
`supersample` x `supersample` block of rasterised samples, so opacity is the covered fraction, as a
volume render's opacity is at a soft edge. The rasterising and shading are the mesh stage's
(`refine.render.mesh_views`), with the mesh's own normals and its texture sampled at interpolated UVs.
"""

from __future__ import annotations

import torch

from dreamfusion.exporter.texture import TexturedMesh, sample_texture
from dreamfusion.refine.render import mesh_views
from dreamfusion.render.cameras import Cameras
from dreamfusion.render.lights import LightConfig
from dreamfusion.render.views import ViewRenders


@torch.no_grad()
def render_mesh(
    mesh: TexturedMesh, cameras: Cameras, light: LightConfig | None = None, supersample: int = 2
) -> ViewRenders:
    """Render every view of `cameras` (their width and height are the output size); `light` defaults to
    `LightConfig()`, the validation renders' ambient and diffuse shares."""
    texture = torch.from_numpy(mesh.texture).float() / 255.0
    return mesh_views(
        torch.from_numpy(mesh.vertices).float(),
        torch.from_numpy(mesh.faces),
        lambda uv: sample_texture(texture, uv),
        cameras,
        light or LightConfig(),
        supersample,
        normals=torch.from_numpy(mesh.normals).float(),
        albedo_input=torch.from_numpy(mesh.uv).float(),
    )
