"""Geometry evaluation against known answers: the IoU of two concentric spheres, the half-opacity threshold,
and a run folder read back into the very field its trainer optimised."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

import dreamfusion.api as api
from dreamfusion.commands import main
from dreamfusion.errors import UserError
from dreamfusion.evaluation.geometry import (
    compare_occupancy,
    default_bound,
    load_run_field,
    occupancy_threshold,
    textureless_turntable,
    volumetric_iou,
)
from dreamfusion.fields import build_field
from dreamfusion.fields.analytic import AnalyticField
from dreamfusion.fields.base import Field, FieldOutput
from dreamfusion.fields.grid import density_grid, grid_points
from dreamfusion.world import Scene, scene_from_caption

SHAPES_SPHERE_RADIUS = 0.5  # shapes.shape_geometry("sphere")
WORLD_SPHERE_RADIUS = 0.6  # world.objects.kind_geometry("sphere")


class ConstantField(Field):
    def __init__(self, sigma: float, bound: float = 1.0):
        super().__init__()
        self.sigma, self.bound = sigma, bound

    def density(self, points: Tensor) -> Tensor:
        return torch.full((points.shape[0],), self.sigma)


class SceneField(Field):
    """A field whose density is a sharp step at the scene's own surface: the best answer a NeRF can give."""

    def __init__(self, scene: Scene, sigma: float = 1e3):
        super().__init__()
        self.scene, self.sigma, self.bound = scene, sigma, 1.4

    def density(self, points: Tensor) -> Tensor:
        return self.sigma * self.scene.occupancy(points).float()

    def forward(self, points: Tensor, with_normals: bool = False) -> FieldOutput:
        raise NotImplementedError  # only densities are evaluated here


def test_threshold_is_half_opacity_over_one_cell():
    for cell in (0.01, 0.0219, 0.5):
        sigma = occupancy_threshold(cell)
        assert math.isclose(1 - math.exp(-sigma * cell), 0.5)
    with pytest.raises(ValueError):
        occupancy_threshold(0.0)


def test_grid_covers_the_cube_with_cell_centres():
    points = grid_points(4, 1.0)
    assert points.shape == (4, 4, 4, 3)
    assert torch.allclose(points[:, 0, 0, 0], torch.tensor([-0.75, -0.25, 0.25, 0.75]))
    assert torch.equal(points[1, 2, 3], torch.tensor([-0.25, 0.25, 0.75]))  # indexed [x, y, z]


def test_density_grid_is_zero_outside_the_bounding_sphere():
    grid = density_grid(ConstantField(3.0, bound=1.0), 16, 1.0)
    assert grid.shape == (16, 16, 16)
    inside = grid_points(16, 1.0).norm(dim=-1) <= 1.0
    assert torch.all(grid[inside] == 3.0) and torch.all(grid[~inside] == 0.0)


def test_constant_field_is_occupied_exactly_above_the_threshold():
    scene = scene_from_caption("a red cube")
    resolution, bound = 16, 1.0
    threshold = occupancy_threshold(2 * bound / resolution)
    above = compare_occupancy(ConstantField(threshold * 1.01), scene, resolution, bound)
    below = compare_occupancy(ConstantField(threshold * 0.99), scene, resolution, bound)
    assert above.threshold == below.threshold == threshold
    assert above.field_volume > 0.9 * 4 / 3 * math.pi and below.field_volume == 0.0 and below.iou == 0.0
    override = compare_occupancy(ConstantField(1.0), scene, resolution, bound, threshold=0.5)
    assert override.threshold == 0.5 and override.field_volume == above.field_volume


def test_default_bound_covers_field_and_scene():
    assert default_bound(AnalyticField("sphere")) == 1.4
    assert default_bound(ConstantField(1.0, bound=0.5)) > 0.8


@pytest.mark.parametrize("caption", ["a red sphere", "a gray torus", "a blue mug next to a green cone"])
def test_the_scene_itself_scores_one(caption):
    scene = scene_from_caption(caption)
    assert volumetric_iou(SceneField(scene), scene, resolution=64) >= 0.999


def test_concentric_spheres_score_the_cube_of_their_radius_ratio():
    """AnalyticField's sphere (r = 0.5) inside the world's (r = 0.6): IoU = (r_eff / 0.6)^3, where r_eff is
    where AnalyticField's density ramp (200 over 0.02 inside the surface) crosses ln 2 / cell."""
    field, scene = AnalyticField("sphere"), scene_from_caption("a red ball")
    resolution = 64
    comparison = compare_occupancy(field, scene, resolution)
    cell = 2 * comparison.bound / resolution
    r_eff = SHAPES_SPHERE_RADIUS - field.softness * occupancy_threshold(cell) / field.sharpness
    expected = (r_eff / WORLD_SPHERE_RADIUS) ** 3
    assert comparison.iou == pytest.approx(expected, abs=0.01)
    assert comparison.scene_volume == pytest.approx(4 / 3 * math.pi * WORLD_SPHERE_RADIUS**3, rel=0.02)
    assert comparison.iou < 0.6  # the radii differ: far from a match


def test_turntable_has_a_row_per_source_and_a_column_per_azimuth():
    field = AnalyticField("sphere")
    image = textureless_turntable(field, scene_from_caption("a red sphere"), azimuths=3, resolution=16)
    assert image.size == (3 * 16 * 2, 2 * 16 * 2)
    alone = textureless_turntable(field, azimuths=2, resolution=16, upscale=1)
    assert alone.size == (2 * 16, 16)
    pixels = np.asarray(alone)
    assert pixels.min() < 200 and pixels.max() == 255  # a shaded object on white


SMALL_RUN = [
    "--preset", "target",
    "--steps", "3",
    "--set", "train.resolution=16",
    "--set", "sampling.samples_per_ray=16",
    "--set", "sampling.occupancy_resolution=16",
    "--set", "train.validation_views=1",
]  # fmt: skip


def test_a_run_folder_loads_back_into_the_trainers_field(tmp_path, monkeypatch):
    trainers = []
    train_and_export = api._train_and_export

    def keep_trainer(trainer, *args):
        trainers.append(trainer)
        return train_and_export(trainer, *args)

    monkeypatch.setattr(api, "_train_and_export", keep_trainer)
    run_dir = tmp_path / "ball"
    assert main(["generate", "a red ball", "--out", str(run_dir), *SMALL_RUN]) == 0

    field, config = load_run_field(run_dir)
    trained = trainers[0].field
    assert config == trainers[0].config and not field.training
    points = grid_points(12, 1.4).reshape(-1, 3)
    with torch.no_grad():
        assert torch.equal(field.density(points), trained.density(points))
    assert torch.equal(density_grid(field, 12, 1.4), density_grid(trained, 12, 1.4))
    untrained = build_field(config.field, torch.Generator().manual_seed(config.train.seed))
    with torch.no_grad():
        assert not torch.equal(untrained.density(points), trained.density(points))  # the weights were read


def test_a_folder_without_a_checkpoint_is_a_user_error(tmp_path: Path):
    with pytest.raises(UserError, match="does not exist"):
        load_run_field(tmp_path / "missing")
    (tmp_path / "config.yaml").write_text("prompt:\n  text: a red ball\n")
    with pytest.raises(UserError, match="no checkpoint"):
        load_run_field(tmp_path)


class GreySceneField(SceneField):
    """SceneField with a grey albedo, so that a mesh's colour can be read."""

    def forward(self, points: Tensor, with_normals: bool = False) -> FieldOutput:
        return FieldOutput(self.density(points), torch.full((points.shape[0], 3), 0.5), None)


def test_eval_reports_the_iou_at_the_fixed_level_and_at_the_meshs_own_level():
    from dreamfusion.evaluation.runs import EvalConfig, ground_truth_metrics

    scene = scene_from_caption("a red sphere")
    config = EvalConfig(iou_resolution=64, surface_samples=500)
    sharp = ground_truth_metrics(GreySceneField(scene), scene, config)
    assert sharp["iou"] >= 0.99 and sharp["iou_mesh_level"] >= 0.99
    assert sharp["chamfer"] < 0.02
    # Density 4 is far below the fixed level (ln 2 / cell = 15.8 here), but 1.2 units of it make every line
    # through the sphere opaque: the mesh (level 2, the middle of the step) is the sphere, the fixed level
    # finds nothing.
    soft = ground_truth_metrics(GreySceneField(scene, sigma=4.0), scene, config)
    assert soft["iou"] == 0.0 and soft["iou_level"] == pytest.approx(occupancy_threshold(2 * 1.4 / 64))
    assert soft["iou_mesh_level"] >= 0.99 and soft["mesh_level"] == pytest.approx(2.0, rel=0.05)
    assert soft["chamfer"] < 0.02 and "mesh_level" in soft["surface_note"]
