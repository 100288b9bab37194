"""Surface metrics against closed forms: an icosphere on the world's sphere, one 10 % larger, points that must
lie on the true surface, and colour differences that are zero or scikit-image's own."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh
from skimage.color import deltaE_ciede2000, rgb2lab

from dreamfusion.evaluation.surface import (
    albedo_delta_e,
    chamfer_to_scene,
    distance_to_mesh,
    sample_scene_surface,
)
from dreamfusion.world import scene_from_caption

RADIUS = 0.6  # world.objects.kind_geometry("sphere")
SPHERE = scene_from_caption("a red sphere")


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_surface_points_lie_on_the_surface_and_cover_it():
    points = sample_scene_surface(SPHERE, 4000, generator())
    assert points.shape == (4000, 3)
    assert torch.allclose(points.norm(dim=-1), torch.full((4000,), RADIUS), atol=1e-4)
    # Even by area: each octant of the sphere holds an eighth of the points.
    octant = (points > 0).long() @ torch.tensor([1, 2, 4])
    assert torch.bincount(octant, minlength=8).min() > 4000 / 8 * 0.85
    assert torch.equal(points, sample_scene_surface(SPHERE, 4000, generator()))  # the seed decides
    pair = scene_from_caption("a blue chair next to a green mug")
    assert pair.sdf(sample_scene_surface(pair, 500, generator())).abs().max() < 1e-4


def test_distance_to_mesh_is_exact_for_a_sphere():
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=1.0)
    directions = np.random.default_rng(0).normal(size=(300, 3))
    points = directions / np.linalg.norm(directions, axis=1, keepdims=True) * 1.3
    distance = distance_to_mesh(mesh, points)
    # Facets sit inside the unit sphere by at most their sagitta (< 0.01 at 3 subdivisions).
    assert np.all(distance >= 0.3 - 1e-9) and np.all(distance < 0.31)


def test_chamfer_of_the_true_sphere_is_almost_zero():
    mesh = trimesh.creation.icosphere(subdivisions=4, radius=RADIUS)
    result = chamfer_to_scene(mesh, SPHERE, 3000, generator())
    assert result.chamfer < 0.01 * RADIUS
    assert result.mesh_to_scene < 0.01 * RADIUS and result.scene_to_mesh < 0.01 * RADIUS
    assert result.mesh_samples == result.scene_samples == 3000


def test_chamfer_of_a_sphere_ten_percent_larger_is_a_tenth_of_the_radius():
    mesh = trimesh.creation.icosphere(subdivisions=4, radius=1.1 * RADIUS)
    result = chamfer_to_scene(mesh, SPHERE, 3000, generator())
    for distance in (result.mesh_to_scene, result.scene_to_mesh, result.chamfer):
        assert distance == pytest.approx(0.1 * RADIUS, rel=0.02)


def test_delta_e_is_zero_for_equal_colours_and_skimage_s_for_red_against_blue():
    points = sample_scene_surface(SPHERE, 200, generator())
    assert albedo_delta_e(points, SPHERE.albedo(points), SPHERE) == pytest.approx(0.0, abs=1e-9)
    car = scene_from_caption("a blue car")  # several parts, several colours
    on_car = sample_scene_surface(car, 200, generator())
    assert albedo_delta_e(on_car, car.albedo(on_car), car) == pytest.approx(0.0, abs=1e-9)

    # Pure red predicted on the world's blue sphere: the pair's CIEDE2000 as scikit-image computes it.
    blue_sphere = scene_from_caption("a blue sphere")
    red, blue = np.array([[1.0, 0.0, 0.0]]), blue_sphere.albedo(points[:1]).double().numpy()
    expected = float(deltaE_ciede2000(rgb2lab(red), rgb2lab(blue))[0])
    assert expected > 30  # red and blue are far apart
    predicted = torch.tensor([1.0, 0.0, 0.0]).expand(200, 3)
    assert albedo_delta_e(points, predicted, blue_sphere) == pytest.approx(expected, rel=1e-6)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError):
        albedo_delta_e(torch.zeros(0, 3), torch.zeros(0, 3), SPHERE)
    with pytest.raises(ValueError):
        albedo_delta_e(torch.zeros(4, 3), torch.zeros(3, 3), SPHERE)
    with pytest.raises(ValueError):
        chamfer_to_scene(trimesh.Trimesh(), SPHERE, 10, generator())
