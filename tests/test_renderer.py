import math

import torch

from dreamfusion.fields.analytic import AnalyticField
from dreamfusion.render.cameras import orbit_cameras
from dreamfusion.render.renderer import RenderSettings, render
from dreamfusion.render.sampling import OccupancyGrid, SamplingConfig
from dreamfusion.render.shading import ShadingMode


def _render(field, cams, occupancy=None, mode=ShadingMode.ALBEDO, with_normals=False, samples=128):
    return render(
        field,
        cams,
        RenderSettings(SamplingConfig(samples_per_ray=samples), 0.1, 0.9, with_normals),
        background=lambda d: torch.zeros_like(d),
        lights=cams.position,
        modes=torch.full((cams.batch_size,), int(mode)),
        occupancy=occupancy,
    )


def test_sphere_silhouette_matches_the_camera_geometry():
    """A sphere of radius r at distance D projects to a disc of radius f r / sqrt(D^2 - r^2) pixels."""
    cams = orbit_cameras(1, 64, elevation_deg=20.0, distance=1.5, focal_multiplier=0.85)
    out = _render(AnalyticField("sphere"), cams)
    radius_px = 0.85 * 64 * 0.5 / math.sqrt(1.5**2 - 0.5**2)
    area = float((out.opacity > 0.5).sum())
    assert abs(area - math.pi * radius_px**2) / (math.pi * radius_px**2) < 0.03
    centre = out.opacity[0, 30:34, 30:34]
    assert centre.min() > 0.99 and float(out.opacity[0, 0, 0]) < 1e-3


def test_occupancy_skipping_does_not_change_the_image():
    field = AnalyticField("mug")
    cams = orbit_cameras(2, 32)
    grid = OccupancyGrid(32, field.bound)
    grid.update(field.density, step_size=2 * 1.4 / 128, decay=0.95, threshold=0.01)
    assert grid.occupied_fraction < 0.3
    full, skipped = _render(field, cams), _render(field, cams, occupancy=grid)
    assert torch.allclose(full.image, skipped.image, atol=2e-3)


def test_normals_face_the_camera_and_textureless_is_grey():
    cams = orbit_cameras(1, 32, elevation_deg=0.0, distance=1.5)
    out = _render(AnalyticField("sphere"), cams, mode=ShadingMode.TEXTURELESS, with_normals=True)
    centre_normal = out.normals[0, 15:17, 15:17].mean((0, 1))
    assert torch.allclose(centre_normal, torch.tensor([1.0, 0.0, 0.0]), atol=0.05)  # camera on +X
    centre = out.image[0, 16, 16]
    assert torch.allclose(centre, centre.mean().expand(3), atol=1e-5) and centre.mean() > 0.9
    assert abs(float(out.depth[0, 16, 16]) - 1.0) < 0.03  # the surface is 1.5 - 0.5 from the camera


class UpNormals(AnalyticField):
    """A sphere whose shading normals all point up (+Z), recording the points it was asked about."""

    def __init__(self):
        super().__init__("sphere")
        self.asked = 0

    def shading_normals(self, points):
        self.asked += points.shape[0]
        return torch.tensor([0.0, 0.0, 1.0]).expand(points.shape[0], 3)


def test_shading_normals_replace_the_forward_normals_only_where_samples_carry_weight():
    cams = orbit_cameras(1, 32, elevation_deg=0.0, distance=1.5)
    field = UpNormals()
    out = _render(field, cams, mode=ShadingMode.TEXTURELESS, with_normals=True)
    plain = _render(AnalyticField("sphere"), cams, mode=ShadingMode.TEXTURELESS, with_normals=True)
    hit = out.opacity > 0.5
    up = torch.tensor([0.0, 0.0, 1.0])
    assert torch.allclose(out.normals[hit], up.expand(int(hit.sum()), 3), atol=1e-2)
    assert not torch.allclose(plain.normals[hit], up.expand(int(hit.sum()), 3), atol=0.1)
    # asked only about the samples that carry weight: a few per ray that hits, not all 128
    weighty = int((plain.weights >= 1e-3).sum())
    assert field.asked == weighty < 0.1 * plain.weights.numel()
    torch.testing.assert_close(out.opacity, plain.opacity)
