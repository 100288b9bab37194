"""The sphere tracer against known answers: a sphere's projected disc and depth, the shading model of
shading.shade, view words that match the camera, and fronts that differ from backs."""

import math

import pytest
import torch
import torch.nn.functional as F

from dreamfusion.prompts import PromptConfig, view_word
from dreamfusion.render.cameras import Cameras, orbit_cameras
from dreamfusion.render.lights import headlights
from dreamfusion.render.rays import camera_rays
from dreamfusion.render.shading import ShadingMode
from dreamfusion.world.captions import is_held_out
from dreamfusion.world.objects import COLOURS, KIND_NAMES, kind
from dreamfusion.world.render import (
    TracerConfig,
    WorldBatchConfig,
    render_scene,
    sample_backgrounds,
    sample_training_batch,
    view_captions,
)
from dreamfusion.world.scenes import Scene, WorldObject, parse_caption, scene_from_caption, scene_id

RED_SPHERE = Scene(WorldObject("sphere", "red"))  # radius 0.6 at the origin


def _render(scene, cameras: Cameras, mode: ShadingMode, background: float = 1.0, lights=None):
    batch = cameras.batch_size
    return render_scene(
        scene,
        cameras,
        headlights(cameras.position) if lights is None else lights,
        torch.full((batch,), int(mode)),
        torch.full((batch, cameras.height, cameras.width, 3), background),
    )


@pytest.mark.parametrize("distance, focal_multiplier", [(1.5, 0.5), (1.0, 0.35), (1.2, 0.6)])
def test_a_sphere_projects_to_a_disc_of_radius_f_r_over_sqrt_d2_minus_r2(distance, focal_multiplier):
    resolution, radius = 128, 0.6
    cameras = orbit_cameras(
        1, resolution, elevation_deg=0.0, distance=distance, focal_multiplier=focal_multiplier
    )
    out = _render(RED_SPHERE, cameras, ShadingMode.ALBEDO)
    focal_px = focal_multiplier * resolution
    expected = focal_px * radius / math.sqrt(distance**2 - radius**2)
    measured = math.sqrt(float(out.mask.sum()) / math.pi)
    assert abs(measured - expected) < 0.3, (measured, expected)
    centre = resolution // 2
    assert abs(float(out.depth[0, centre, centre]) - (distance - radius)) < 2e-3
    rays = camera_rays(cameras)
    points = (rays.origins + out.depth[..., None] * rays.directions)[out.mask]
    # Hits lie on the surface, up to the tolerance given to rays that graze it for all their steps.
    assert float((points.norm(dim=-1) - radius).abs().max()) < TracerConfig().graze_epsilon + 1e-3
    assert torch.allclose(out.normals[out.mask], F.normalize(points, dim=-1), atol=1e-3)
    assert float(out.depth[0][~out.mask[0]].abs().max()) == 0.0


def test_shading_follows_the_lambertian_model_of_the_nerf_renders():
    cameras = orbit_cameras(3, 32, elevation_deg=20.0, distance=1.4, start_azimuth_deg=30.0)
    lights = torch.tensor([[1.0, 0.5, 1.0], [0.0, -1.2, 0.3], [0.5, 0.5, -1.0]])
    modes = torch.tensor([ShadingMode.ALBEDO, ShadingMode.LAMBERTIAN, ShadingMode.TEXTURELESS])
    backgrounds = sample_backgrounds(3, 32, 32, torch.Generator().manual_seed(0))
    out = render_scene(RED_SPHERE, cameras, lights, modes, backgrounds)
    mask = out.mask
    assert torch.equal(out.image[~mask], backgrounds[~mask])
    red = torch.tensor(COLOURS["red"])
    assert torch.allclose(out.image[0][mask[0]], red.expand(int(mask[0].sum()), 3))
    rays = camera_rays(cameras)
    points = rays.origins + out.depth[..., None] * rays.directions
    to_light = F.normalize(lights[:, None, None, :] - points, dim=-1)
    lambert = 0.1 + 0.9 * (out.normals * to_light).sum(-1, keepdim=True).clamp_min(0.0)
    assert torch.allclose(out.image[1][mask[1]], (red * lambert[1])[mask[1]], atol=1e-5)
    assert torch.allclose(out.image[2][mask[2]], lambert[2].expand(-1, -1, 3)[mask[2]], atol=1e-5)


@pytest.mark.parametrize(
    "elevation, azimuth, word",
    [
        (30.0, 0.0, "front"),
        (30.0, 90.0, "side"),
        (30.0, 180.0, "back"),
        (30.0, 270.0, "side"),
        (70.0, 180.0, "overhead"),
    ],
)
def test_the_view_word_matches_the_camera(elevation, azimuth, word):
    cameras = orbit_cameras(1, 16, elevation_deg=elevation, start_azimuth_deg=azimuth)
    assert view_captions(["a red mug"], cameras) == (f"a red mug, {word} view",)
    assert view_captions(["a red mug"], cameras, PromptConfig(view_dependent=False)) == ("a red mug",)


@pytest.mark.parametrize("name", KIND_NAMES)
def test_the_front_view_differs_from_the_back_view_exactly_for_kinds_with_a_front(name):
    scene = Scene(WorldObject(name, "white"))
    front = orbit_cameras(1, 48, elevation_deg=20.0, start_azimuth_deg=0.0)
    back = orbit_cameras(1, 48, elevation_deg=20.0, start_azimuth_deg=180.0)
    front_image = _render(scene, front, ShadingMode.TEXTURELESS, 0.0).image
    back_image = _render(scene, back, ShadingMode.TEXTURELESS, 0.0).image
    difference = float((front_image - back_image).abs().mean())
    if kind(name).has_front:
        assert difference > 0.01
    else:
        assert difference < 0.002


def test_a_batch_of_different_scenes_renders_as_each_scene_alone():
    scenes = [
        scene_from_caption("a red mug on top of a blue car"),
        scene_from_caption("a green house"),
        scene_from_caption("a white arrow next to a gray torus"),
    ]
    cameras = orbit_cameras(3, 24, elevation_deg=25.0, distance=1.3, start_azimuth_deg=10.0)
    together = _render(scenes, cameras, ShadingMode.LAMBERTIAN)
    for i, scene in enumerate(scenes):
        alone = orbit_cameras(1, 24, elevation_deg=25.0, distance=1.3, start_azimuth_deg=10.0 + 120.0 * i)
        single = _render(scene, alone, ShadingMode.LAMBERTIAN)
        assert torch.equal(single.mask[0], together.mask[i])
        assert torch.allclose(single.image[0], together.image[i], atol=1e-5)


def test_training_batches_carry_their_view_words_and_are_reproducible():
    batch = sample_training_batch(16, 32, torch.Generator().manual_seed(5))
    assert batch.images.shape == (16, 32, 32, 3) and batch.mask.shape == (16, 32, 32)
    assert float(batch.images.min()) >= 0.0 and float(batch.images.max()) <= 1.0
    assert bool(batch.mask.any(dim=(1, 2)).all()), "every image shows its object"
    for i, caption in enumerate(batch.captions):
        parsed = parse_caption(caption)
        assert parsed.scene == batch.scenes[i] and not is_held_out(parsed.scene)
        elevation, azimuth = float(batch.cameras.elevation_deg[i]), float(batch.cameras.azimuth_deg[i])
        assert parsed.view == view_word(elevation, azimuth, PromptConfig())
        assert int(batch.scene_ids[i]) == scene_id(batch.scenes[i])
    again = sample_training_batch(16, 32, torch.Generator().manual_seed(5))
    assert torch.equal(again.images, batch.images) and again.captions == batch.captions


def test_supersampling_softens_edges_without_changing_the_batch():
    plain = sample_training_batch(8, 16, torch.Generator().manual_seed(6))
    smooth = sample_training_batch(8, 16, torch.Generator().manual_seed(6), WorldBatchConfig(supersample=3))
    assert smooth.captions == plain.captions and torch.equal(smooth.modes, plain.modes)
    assert smooth.images.shape == plain.images.shape
    assert float((smooth.images - plain.images).abs().mean()) < 0.05
    assert float((smooth.mask != plain.mask).float().mean()) < 0.05
