import pytest
import torch

from dreamfusion.render.cameras import orbit_cameras
from dreamfusion.render.rays import camera_rays
from dreamfusion.render.sampling import OccupancyGrid, SamplingConfig, stratified_samples


def test_samples_lie_inside_the_sphere_and_cover_the_chord():
    cams = orbit_cameras(2, 16, distance=3.0)
    samples = stratified_samples(camera_rays(cams), 1.4, SamplingConfig(samples_per_ray=32), None)
    hit = samples.deltas[:, 0] > 0
    assert hit.any() and (~hit).any()  # corner rays of a distant camera miss the sphere
    assert samples.points[hit].norm(dim=-1).max() <= 1.4 + 1e-5
    assert torch.all(samples.distances[hit][:, 1:] > samples.distances[hit][:, :-1])


def test_occupancy_grid_marks_a_blob_and_skips_empty_space():
    grid = OccupancyGrid(16, 1.4)

    def density(p):
        return torch.where(p.norm(dim=-1) < 0.3, torch.tensor(100.0), torch.tensor(0.0))

    grid.update(density, step_size=0.05, decay=0.95, threshold=0.01)
    assert 0 < grid.occupied_fraction < 0.1
    inside = grid.lookup(torch.tensor([[0.0, 0.0, 0.0], [0.2, 0.0, 0.0]]))
    outside = grid.lookup(torch.tensor([[1.2, 1.2, 1.2], [-1.0, 0.0, 0.5], [5.0, 0.0, 0.0]]))
    assert inside.all() and not outside.any()
    # the running maximum decays, so a cell can become empty again
    for _ in range(200):
        grid.update(lambda p: torch.zeros(p.shape[0]), step_size=0.05, decay=0.95, threshold=0.01)
    assert grid.occupied_fraction == 0.0


def test_a_grid_of_the_field_skips_only_space_no_render_can_see():
    from dreamfusion.fields import FieldConfig, build_field
    from dreamfusion.render.background import SolidBackground
    from dreamfusion.render.lights import LightConfig
    from dreamfusion.render.views import render_views

    field = build_field(FieldConfig(kind="sdf", blob_radius=0.5), torch.Generator().manual_seed(0))
    grid = OccupancyGrid.of_field(field, resolution=32)
    assert 0 < grid.occupied_fraction < 0.3
    cameras = orbit_cameras(2, 24, 30.0)
    sampling = SamplingConfig(samples_per_ray=256)
    with torch.no_grad():
        full = render_views(field, SolidBackground(), cameras, sampling, LightConfig())
        skipped = render_views(field, SolidBackground(), cameras, sampling, LightConfig(), grid)
    assert full.opacity.max() > 0.9  # the sphere is seen
    for name in ("shaded", "textureless"):
        assert (getattr(full, name) - getattr(skipped, name)).abs().max() < 1e-3


def _sphere_field_and_grid():
    from dreamfusion.fields import FieldConfig, build_field

    field = build_field(FieldConfig(kind="sdf", blob_radius=0.5), torch.Generator().manual_seed(0))
    return field, OccupancyGrid.of_field(field, resolution=32)


def test_occupied_placement_puts_every_sample_in_the_rays_occupied_cells():
    from dreamfusion.render.sampling import occupied_samples

    _, grid = _sphere_field_and_grid()
    rays = camera_rays(orbit_cameras(2, 24, 60.0))
    config = SamplingConfig(samples_per_ray=32)
    samples = occupied_samples(rays, 1.4, config, grid, torch.Generator().manual_seed(0))
    uniform = stratified_samples(rays, 1.4, config, None)
    hit = samples.deltas[:, 0] > 0
    assert hit.any() and (~hit).any()  # at 60 degrees some rays pass beside the sphere's cells
    assert torch.all(samples.distances[hit][:, 1:] >= samples.distances[hit][:, :-1])
    # all but the rays' ends (looked up 4 times a cell) fall in occupied cells, at a finer step than uniform
    assert grid.lookup(samples.points[hit].reshape(-1, 3)).float().mean() > 0.98
    assert samples.deltas[hit].mean() < 0.6 * uniform.deltas[hit].mean()
    # a ray that misses every occupied cell draws nothing
    assert not grid.lookup(uniform.points[~hit].reshape(-1, 3)).any()


def test_occupied_placement_converges_with_fewer_samples():
    from dreamfusion.render.background import SolidBackground
    from dreamfusion.render.lights import LightConfig
    from dreamfusion.render.views import render_views

    field, grid = _sphere_field_and_grid()
    cameras = orbit_cameras(2, 24, 30.0)
    light = LightConfig()
    with torch.no_grad():
        truth = render_views(field, SolidBackground(), cameras, SamplingConfig(samples_per_ray=1024), light)
        errors = {}
        for placement in ("uniform", "occupied"):
            sampling = SamplingConfig(samples_per_ray=32, placement=placement)
            views = render_views(field, SolidBackground(), cameras, sampling, light, grid)
            errors[placement] = float((views.textureless - truth.textureless).abs().mean())
    assert errors["occupied"] < 0.6 * errors["uniform"]


def test_an_unknown_placement_is_refused():
    with pytest.raises(ValueError, match="placement"):
        SamplingConfig(placement="importance")
    with pytest.raises(ValueError, match="occupancy grid"):
        SamplingConfig(placement="occupied", occupancy_resolution=0)
