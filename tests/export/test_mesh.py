"""Mesh extraction against known answers: the half-opacity level of a density ramp (closed form), the cap
for a step, no surface in an empty or hazy field, a closed outward sphere of the right radius, floaters
removed and a face budget kept."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh
from torch import Tensor

from dreamfusion.errors import UserError
from dreamfusion.fields import FieldConfig, build_field
from dreamfusion.fields.analytic import AnalyticField
from dreamfusion.fields.base import Field
from dreamfusion.fields.grid import grid_points
from dreamfusion.fields.mesh import (
    MeshConfig,
    clean_mesh,
    extract_mesh,
    face_budget,
    grid_resolution,
    half_opacity_threshold,
    marching_cubes,
    unit_vertex_normals,
)
from dreamfusion.fields.triplane import TriplaneConfig

LN2 = math.log(2.0)
BOUND = 1.4


def fuzzy_ball(resolution: int, amplitude: float, sigma: float) -> Tensor:
    """Density amplitude * exp(-r^2 / (2 sigma^2)) at the cell centres of the grid."""
    r2 = grid_points(resolution, BOUND).square().sum(-1)
    return amplitude * torch.exp(-r2 / (2 * sigma**2))


def test_a_fuzzy_balls_surface_is_where_rays_become_half_opaque():
    # A line at distance b from the centre has peak A exp(-b^2 / 2s^2) and optical depth that peak times
    # s sqrt(2 pi): it is half opaque exactly when its peak is >= ln2 / (s sqrt(2 pi)), whatever A.
    cell = 2 * BOUND / 64
    for amplitude, sigma in ((40.0, 0.2), (400.0, 0.2), (40.0, 0.3)):
        expected = LN2 / (sigma * math.sqrt(2 * math.pi))
        level = half_opacity_threshold(fuzzy_ball(64, amplitude, sigma), cell)
        # Lines come in groups of equal distance to the centre; any level between the peaks of the groups
        # either side of the answer is as good, and the midpoint is taken: a few % at 64^3.
        assert level == pytest.approx(expected, rel=0.06), (amplitude, sigma)


def test_a_step_gets_its_surface_mid_step():
    points = grid_points(64, BOUND)
    for density in (20.0, 500.0):
        grid = density * (points.norm(dim=-1) < 0.5).float()
        assert half_opacity_threshold(grid, 2 * BOUND / 64) == pytest.approx(density / 2)


@pytest.mark.parametrize("density", [0.0, 0.05])
def test_an_empty_or_hazy_field_has_no_surface(density: float):
    # 0.05 per unit over at most 2.8 units of ray: optical depth 0.14, never half opaque.
    grid = torch.full((32, 32, 32), density)
    with pytest.raises(UserError, match="no surface") as info:
        half_opacity_threshold(grid, 2 * BOUND / 32)
    assert "\n" not in str(info.value)


def test_a_threshold_above_every_density_is_a_user_error():
    grid = torch.zeros(16, 16, 16)
    grid[8, 8, 8] = 3.0
    with pytest.raises(UserError, match="densest point reaches 3"):
        marching_cubes(grid, 5.0, BOUND)


def test_the_sphere_is_closed_outward_and_of_the_right_radius():
    extracted = extract_mesh(AnalyticField("sphere"), MeshConfig(resolution=64, max_faces=0))  # undecimated
    mesh = extracted.mesh
    assert extracted.auto_threshold and 0 < extracted.threshold < 200
    assert mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0
    # Every face normal points away from the centre.
    assert (np.einsum("ij,ij->i", mesh.face_normals, mesh.triangles_center) > 0).all()
    # Vertices are snapped onto the field's iso surface, which is a sphere inside the density ramp (radius
    # 0.48 to 0.5): at the level's radius, to within a bisection step, wherever the grid's samples fell.
    radius = np.linalg.norm(mesh.vertices, axis=1)
    expected = 0.5 - 0.02 * extracted.threshold / 200
    assert np.abs(radius - expected).max() < 2 * BOUND / 64 / 2**8 + 1e-4


class TwoSpheres(Field):
    """A sphere of radius 0.5 and a floater of radius 0.06 above it (1.4 % of its area)."""

    bound = BOUND

    def density(self, points: Tensor) -> Tensor:
        big = points.norm(dim=-1) < 0.5
        small = (points - points.new_tensor([0.0, 0.0, 0.9])).norm(dim=-1) < 0.06
        return 500.0 * (big | small).float()


def test_floaters_are_removed_and_can_be_kept():
    field = TwoSpheres()
    kept = extract_mesh(field, MeshConfig(resolution=64, min_component_fraction=0.0))
    cleaned = extract_mesh(field, MeshConfig(resolution=64))
    assert len(kept.mesh.split(only_watertight=False)) == 2 and kept.removed_components == 0
    assert len(cleaned.mesh.split(only_watertight=False)) == 1 and cleaned.removed_components == 1
    assert cleaned.mesh.vertices[:, 2].max() < 0.6  # the floater at z = 0.9 is gone


def test_vertex_normals_are_unit_even_where_faces_cancel():
    # Two triangles on the same three vertices, facing opposite ways: their area-weighted normals cancel.
    sheet = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], [[0, 1, 2], [0, 2, 1], [0, 1, 3]])
    assert np.linalg.norm(sheet.vertex_normals, axis=1).min() < 0.5
    assert np.allclose(np.linalg.norm(unit_vertex_normals(sheet), axis=1), 1.0)


def test_decimation_keeps_the_face_budget_and_the_shape():
    full = extract_mesh(AnalyticField("sphere"), MeshConfig(resolution=64))
    mesh, removed, before = clean_mesh(full.mesh, MeshConfig(resolution=64, max_faces=1000), 64)
    assert len(mesh.faces) <= 1000 < before == len(full.mesh.faces) and removed == 0
    assert mesh.volume == pytest.approx(full.mesh.volume, rel=0.03)
    assert (np.einsum("ij,ij->i", mesh.face_normals, mesh.triangles_center) > 0).mean() > 0.99


def test_grid_resolution_follows_the_field_unless_given():
    """Twice the finest features per axis, within [64, 256]; an analytic shape has no grid and gets 256."""
    auto = MeshConfig()
    assert (
        grid_resolution(
            build_field(FieldConfig(kind="triplane", triplane=TriplaneConfig(resolution=64))), auto
        )
        == 128
    )
    assert (
        grid_resolution(
            build_field(FieldConfig(kind="triplane", triplane=TriplaneConfig(resolution=16))), auto
        )
        == 64
    )
    assert grid_resolution(build_field(FieldConfig(kind="hashgrid")), auto) == 256
    assert grid_resolution(AnalyticField("sphere"), auto) == 256
    assert grid_resolution(AnalyticField("sphere"), MeshConfig(resolution=96)) == 96


def test_face_budget_follows_the_grid_unless_given():
    auto = MeshConfig()
    assert face_budget(auto, 256) == 40_000 and face_budget(auto, 128) == 10_000
    assert face_budget(MeshConfig(max_faces=500), 128) == 500
    assert face_budget(MeshConfig(max_faces=0), 128) is None  # 0 keeps every triangle
    with pytest.raises(ValueError, match="max_faces"):
        MeshConfig(max_faces=3)
