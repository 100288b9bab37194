"""Fidelity: renders of the exported textured mesh against renders of the field it came from, from 8 azimuths.

The field is rendered by the project's volume renderer (`validation.render_views`), the mesh by the export's
rasteriser (`preview.render_mesh`) with the same cameras, light and shading. Their silhouettes (opacity >=
0.5) must agree with IoU >= 0.9 in every view. The mean colour error is taken over the pixels both cover
fully: at the anti-aliased edges colour mixes with the background, which the IoU already judges.
"""

from __future__ import annotations

import torch

from dreamfusion.exporter.preview import render_mesh
from dreamfusion.exporter.texture import TextureConfig, texture_mesh
from dreamfusion.fields.analytic import AnalyticField
from dreamfusion.fields.mesh import MeshConfig, extract_mesh
from dreamfusion.render.background import SolidBackground
from dreamfusion.render.cameras import orbit_cameras
from dreamfusion.render.lights import LightConfig
from dreamfusion.render.sampling import SamplingConfig
from dreamfusion.render.views import ViewRenders, render_views


def compare(mesh_renders: ViewRenders, field_renders: ViewRenders) -> tuple[torch.Tensor, float, float]:
    """Per-view silhouette IoU, and the mean absolute albedo and shaded colour errors (0-1 scale)."""
    a, b = mesh_renders.opacity >= 0.5, field_renders.opacity >= 0.5
    iou = (a & b).flatten(1).sum(1) / (a | b).flatten(1).sum(1).clamp_min(1)
    both = (mesh_renders.opacity > 0.99) & (field_renders.opacity > 0.99)
    albedo = (mesh_renders.albedo - field_renders.albedo).abs()[both].mean()
    shaded = (mesh_renders.shaded - field_renders.shaded).abs()[both].mean()
    return iou, float(albedo), float(shaded)


def test_the_textured_mesh_of_the_mug_renders_like_the_field(record_property):
    field = AnalyticField("mug")  # thin handle, a coloured badge, a rim: harder than the sphere
    mesh = extract_mesh(field, MeshConfig(resolution=96)).mesh
    textured = texture_mesh(field, mesh, TextureConfig(size=256))
    cameras = orbit_cameras(8, 48)
    field_renders = render_views(
        field,
        SolidBackground(),
        cameras,
        SamplingConfig(samples_per_ray=96, occupancy_resolution=0),
        LightConfig(),
    )
    iou, albedo_error, shaded_error = compare(render_mesh(textured, cameras), field_renders)
    record_property("silhouette_iou", [round(float(x), 4) for x in iou])
    record_property("mean_albedo_error", albedo_error)
    record_property("mean_shaded_error", shaded_error)
    print(f"mug: IoU min {iou.min():.3f} mean {iou.mean():.3f}, colour error {albedo_error:.4f} (albedo) "
          f"{shaded_error:.4f} (shaded)")  # fmt: skip
    assert iou.min() >= 0.9
    assert albedo_error < 0.02 and shaded_error < 0.03
