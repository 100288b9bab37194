import math

import torch

from dreamfusion.render.cameras import CameraConfig, orbit_cameras, sample_cameras, sample_elevations_deg
from dreamfusion.render.rays import camera_rays


def _centre_ray(cameras):
    rays = camera_rays(cameras)
    h, w = cameras.height // 2, cameras.width // 2
    # the 4 pixels around the centre average to the optical axis
    return rays.directions[:, h - 1 : h + 1, w - 1 : w + 1].mean((1, 2))


def test_orbit_cameras_look_at_origin():
    cams = orbit_cameras(8, 32, elevation_deg=30.0, distance=1.5)
    axis = torch.nn.functional.normalize(_centre_ray(cams), dim=-1)
    to_origin = torch.nn.functional.normalize(-cams.position, dim=-1)
    assert torch.allclose(axis, to_origin, atol=1e-5)
    assert torch.allclose(cams.position.norm(dim=-1), torch.full((8,), 1.5), atol=1e-5)


def test_azimuth_zero_sees_the_front():
    """Azimuth 0 is on +X, where the object's front faces; +Z is up in the image; +Y is to the right."""
    cams = orbit_cameras(1, 32, elevation_deg=0.0, distance=2.0)
    assert torch.allclose(cams.position[0], torch.tensor([2.0, 0.0, 0.0]), atol=1e-6)
    c2w = cams.c2w[0]
    assert torch.allclose(c2w[:3, 1], torch.tensor([0.0, 0.0, 1.0]), atol=1e-6)  # image up = world up
    assert torch.allclose(c2w[:3, 0], torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)  # image right = +Y
    side = orbit_cameras(4, 32, elevation_deg=0.0, distance=2.0).position[1]
    assert torch.allclose(side, torch.tensor([0.0, 2.0, 0.0]), atol=1e-5)  # azimuth 90 is on +Y


def test_overhead_camera_is_well_defined():
    cams = orbit_cameras(1, 16, elevation_deg=90.0)
    assert torch.isfinite(cams.c2w).all()
    assert torch.allclose(torch.linalg.det(cams.c2w[0, :3, :3]), torch.tensor(1.0), atol=1e-5)


def test_sampled_cameras_follow_the_paper_ranges():
    config = CameraConfig()
    g = torch.Generator().manual_seed(0)
    cams = sample_cameras(config, 2000, 64, g)
    assert cams.elevation_deg.min() >= -10 and cams.elevation_deg.max() <= 90
    assert cams.azimuth_deg.min() >= 0 and cams.azimuth_deg.max() < 360
    assert cams.distance.min() >= 1.0 and cams.distance.max() <= 1.5
    assert cams.focal_px.min() >= 0.7 * 64 and cams.focal_px.max() <= 1.35 * 64
    # jitter: positions within 0.1 per axis of the nominal sphere point
    dist = cams.position.norm(dim=-1)
    assert (dist - cams.distance).abs().max() <= math.sqrt(3) * 0.1 + 1e-5
    rot = cams.c2w[:, :3, :3]
    assert torch.allclose(rot.transpose(1, 2) @ rot, torch.eye(3).expand(2000, 3, 3), atol=1e-5)


def test_elevation_mixture_is_pole_biased():
    """Uniform-in-angle puts more mass near the pole than uniform-on-the-sphere does."""
    g = torch.Generator().manual_seed(1)
    n = 20000
    angular = sample_elevations_deg(n, CameraConfig(pole_biased_fraction=1.0), g)
    area = sample_elevations_deg(n, CameraConfig(pole_biased_fraction=0.0), g)
    mixed = sample_elevations_deg(n, CameraConfig(), g)
    share = lambda e: float((e > 60).float().mean())  # noqa: E731
    assert share(area) < share(mixed) < share(angular)
    assert abs(share(angular) - 30 / 100) < 0.02  # uniform in [-10, 90]
    sin_lo, sin_hi = math.sin(math.radians(-10)), 1.0
    assert abs(share(area) - (sin_hi - math.sin(math.radians(60))) / (sin_hi - sin_lo)) < 0.02


def test_sampling_is_reproducible_from_the_generator():
    a = sample_cameras(CameraConfig(), 4, 32, torch.Generator().manual_seed(5))
    b = sample_cameras(CameraConfig(), 4, 32, torch.Generator().manual_seed(5))
    assert torch.equal(a.c2w, b.c2w) and torch.equal(a.focal_px, b.focal_px)
