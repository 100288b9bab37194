"""Renders of the world by sphere tracing its exact SDFs, independent of the NeRF renderer.

Images come from the paper's camera distribution (cameras.sample_cameras), lit by its random point lights
(lights.py), and shaded by the same lambertian model as the NeRF's renders (shading.shade: albedo,
lambertian, or textureless). Backgrounds are random solid colours or vertical gradients.

Speed on a CPU: rays start where they enter their objects' bounding boxes (rays that miss every box are
background at once), all rays of the batch march together for at most a fixed number of steps, and a ray
leaves the working set as soon as it hits or leaves the boxes. Images of different scenes are traced
together: at each step every object kind is evaluated once, on the rays whose scene holds that kind.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from dreamfusion.prompts import PromptConfig, view_word, with_view
from dreamfusion.render.background import random_colours
from dreamfusion.render.cameras import CameraConfig, Cameras, sample_cameras
from dreamfusion.render.lights import LightConfig, sample_point_lights
from dreamfusion.render.rays import camera_rays
from dreamfusion.render.shading import shade
from dreamfusion.world.captions import sample_training_captions
from dreamfusion.world.objects import KIND_NAMES, colour_rgb, kind, kind_geometry, part_albedo
from dreamfusion.world.scenes import Scene, scene_id


@dataclass(frozen=True)
class TracerConfig:
    max_steps: int = 64
    # A ray has hit once the SDF is below this (world units). A pixel of a 64 px render spans about
    # 0.02 at the cameras' distances, so this is far below what an image can show.
    hit_epsilon: float = 1e-3
    # Rays still marching after max_steps graze the surface; within this distance they count as hits.
    graze_epsilon: float = 5e-3
    box_margin: float = 0.01  # rays search only inside their objects' bounding boxes, grown by this
    normal_step: float = 1e-3  # finite-difference step of the SDF's gradient (the normal)


DEFAULT_TRACER = TracerConfig()
DEFAULT_LIGHT = LightConfig()
DEFAULT_PROMPT = PromptConfig()


@dataclass(frozen=True)
class WorldRender:
    image: Tensor  # (B, H, W, 3) shaded object over the background
    mask: Tensor  # (B, H, W) bool: the ray hit the object
    depth: Tensor  # (B, H, W) distance along the ray to the surface; 0 where mask is False
    normals: Tensor  # (B, H, W, 3) unit outward normals; 0 where mask is False
    albedo: Tensor  # (B, H, W, 3) albedo of the surface hit; 0 where mask is False


class _SceneBatch:
    """Per image, up to two placed objects (slots); evaluates all images' SDFs grouped by object kind."""

    def __init__(self, scenes: Sequence[Scene], device: torch.device):
        batch = len(scenes)
        self.kind_ids = torch.full((batch, 2), -1, dtype=torch.long)
        self.scale = torch.ones(batch, 2)
        self.offset = torch.zeros(batch, 2, 3)
        self.colour = torch.zeros(batch, 2, 3)
        self.lower = torch.zeros(batch, 2, 3)  # world-space bounding boxes
        self.upper = torch.zeros(batch, 2, 3)
        for b, scene in enumerate(scenes):
            for slot, placement in enumerate(scene.placements):
                k = kind(placement.object.kind)
                offset = torch.tensor(placement.offset)
                self.kind_ids[b, slot] = KIND_NAMES.index(k.name)
                self.scale[b, slot] = placement.scale
                self.offset[b, slot] = offset
                self.colour[b, slot] = torch.tensor(colour_rgb(placement.object.colour))
                self.lower[b, slot] = offset + placement.scale * torch.tensor(k.lower)
                self.upper[b, slot] = offset + placement.scale * torch.tensor(k.upper)
        self.slot_kinds = [sorted(set(self.kind_ids[:, s].tolist()) - {-1}) for s in range(2)]
        for name in ("kind_ids", "scale", "offset", "colour", "lower", "upper"):
            setattr(self, name, getattr(self, name).to(device))

    def ray_interval(self, origins: Tensor, directions: Tensor, image: Tensor, margin: float):
        """Where rays (N, 3) enter and leave the union of their image's bounding boxes (grown by `margin`),
        and whether they meet any: the stretch of each ray that sphere tracing has to search."""
        safe = torch.where(directions.abs() < 1e-9, torch.full_like(directions, 1e-9), directions)
        near = torch.full((origins.shape[0],), float("inf"), device=origins.device)
        far = torch.zeros(origins.shape[0], device=origins.device)
        for slot in range(2):
            t0 = (self.lower[image, slot] - margin - origins) / safe
            t1 = (self.upper[image, slot] + margin - origins) / safe
            enter = torch.minimum(t0, t1).max(-1).values.clamp_min(0.0)
            leave = torch.maximum(t0, t1).min(-1).values
            meets = (leave > enter) & (self.kind_ids[image, slot] >= 0)
            near = torch.where(meets, torch.minimum(near, enter), near)
            far = torch.where(meets, torch.maximum(far, leave), far)
        return near, far, far > near

    def sdf(self, points: Tensor, image: Tensor, with_parts: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """points (N, 3), image (N,) -> sdf (N,), nearest slot (N,), its part (N,) (zeros unless asked)."""
        n, device = points.shape[0], points.device
        best = torch.full((n,), float("inf"), device=device)
        best_slot = torch.zeros(n, dtype=torch.long, device=device)
        best_part = torch.zeros(n, dtype=torch.long, device=device)
        for slot in range(2):
            kinds = self.kind_ids[image, slot]
            scale = self.scale[image, slot]
            local = (points - self.offset[image, slot]) / scale[:, None]
            dist = torch.full((n,), float("inf"), device=device)
            part = torch.zeros(n, dtype=torch.long, device=device)
            for k in self.slot_kinds[slot]:
                rows = (kinds == k).nonzero().squeeze(1)
                if rows.numel() == 0:
                    continue
                everything = rows.numel() == n
                sample = kind_geometry(KIND_NAMES[k], local if everything else local[rows], with_parts)
                if everything:
                    dist = sample.sdf
                    part = sample.part if with_parts else part
                else:
                    dist[rows] = sample.sdf
                    if with_parts:
                        part[rows] = sample.part
            dist = dist * scale
            closer = dist < best
            best = torch.where(closer, dist, best)
            best_slot = torch.where(closer, slot, best_slot)
            best_part = torch.where(closer, part, best_part)
        return best, best_slot, best_part


def render_scene(
    scenes: Scene | Sequence[Scene],
    cameras: Cameras,
    lights: Tensor,
    modes: Tensor,
    backgrounds: Tensor,
    light_config: LightConfig = DEFAULT_LIGHT,
    tracer: TracerConfig = DEFAULT_TRACER,
) -> WorldRender:
    """Render one scene from every camera, or scene b from camera b.

    lights: (B, 3) point-light positions; modes: (B,) ShadingMode; backgrounds: (B, H, W, 3); all on the
    cameras' device.
    """
    batch, height, width = cameras.batch_size, cameras.height, cameras.width
    scene_list = [scenes] * batch if isinstance(scenes, Scene) else list(scenes)
    if len(scene_list) != batch:
        raise ValueError(f"{len(scene_list)} scenes for {batch} cameras")
    if backgrounds.shape != (batch, height, width, 3):
        raise ValueError(f"backgrounds must be {(batch, height, width, 3)}, got {tuple(backgrounds.shape)}")
    device = cameras.c2w.device
    world = _SceneBatch(scene_list, device)
    rays = camera_rays(cameras)
    origins, directions = rays.origins.reshape(-1, 3), rays.directions.reshape(-1, 3)
    image_index = torch.arange(batch, device=device).repeat_interleave(height * width)

    ray, t = _sphere_trace(world, origins, directions, image_index, tracer)
    points = origins[ray] + t[:, None] * directions[ray]
    img = image_index[ray]
    normals = _normals(world, points, img, tracer.normal_step)
    _, slot, part = world.sdf(points, img, with_parts=True)
    albedo = part_albedo(part, world.colour[img, slot])
    colour = shade(
        albedo, normals, points, lights[img], modes[img], light_config.ambient, light_config.diffuse
    )

    def scatter(values: Tensor, base: Tensor) -> Tensor:
        flat = base.reshape(batch * height * width, *base.shape[3:]).clone()
        flat[ray] = values
        return flat.view(base.shape)

    zeros3 = torch.zeros(batch, height, width, 3, device=device)
    return WorldRender(
        image=scatter(colour, backgrounds),
        mask=scatter(torch.ones_like(t, dtype=torch.bool), zeros3[..., 0].bool()),
        depth=scatter(t, zeros3[..., 0]),
        normals=scatter(normals, zeros3),
        albedo=scatter(albedo, zeros3),
    )


def _sphere_trace(
    world: _SceneBatch, origins: Tensor, directions: Tensor, image_index: Tensor, tracer: TracerConfig
) -> tuple[Tensor, Tensor]:
    """Indices of the rays that hit, and their distances to the surface. Steps by the SDF, which never
    exceeds the true distance, so no step crosses a surface."""
    near, far, inside = world.ray_interval(origins, directions, image_index, tracer.box_margin)
    ray = inside.nonzero().squeeze(1)
    o, d, t, t_max, img = origins[ray], directions[ray], near[ray], far[ray], image_index[ray]
    hit_rays, hit_t = [], []
    dist = torch.full_like(t, float("inf"))
    for _ in range(tracer.max_steps):
        if ray.numel() == 0:
            break
        dist, _, _ = world.sdf(o + t[:, None] * d, img)
        done = dist < tracer.hit_epsilon
        hit_rays.append(ray[done])
        hit_t.append(t[done])
        t = t + dist
        keep = ~done & (t < t_max)
        ray, o, d, t, t_max, img, dist = (
            ray[keep],
            o[keep],
            d[keep],
            t[keep],
            t_max[keep],
            img[keep],
            dist[keep],
        )
    grazing = dist < tracer.graze_epsilon
    hit_rays.append(ray[grazing])
    hit_t.append(t[grazing])
    return torch.cat(hit_rays), torch.cat(hit_t)


def _normals(world: _SceneBatch, points: Tensor, image: Tensor, step: float) -> Tensor:
    """Outward unit normals: the SDF's gradient by finite differences at the four corners of a tetrahedron
    (four evaluations instead of central differences' six, same second-order accuracy)."""
    corners = points.new_tensor([[1.0, -1.0, -1.0], [-1.0, -1.0, 1.0], [-1.0, 1.0, -1.0], [1.0, 1.0, 1.0]])
    probes = (points[:, None, :] + corners * step).reshape(-1, 3)
    dist, _, _ = world.sdf(probes, image.repeat_interleave(4))
    return F.normalize(dist.view(-1, 4) @ corners, dim=-1)


def sample_backgrounds(
    batch: int,
    height: int,
    width: int,
    generator: torch.Generator,
    gradient_fraction: float = 0.5,
    colourfulness: float = 1.0,
) -> Tensor:
    """(B, H, W, 3): random solid colours, or vertical gradients between two random colours; the colours
    as the NeRF's solid backgrounds draw them (background.random_colours)."""
    top = random_colours(batch, generator, colourfulness)
    bottom = random_colours(batch, generator, colourfulness)
    gradient = torch.rand(batch, generator=generator) < gradient_fraction
    bottom = torch.where(gradient[:, None], bottom, top)
    rows = ((torch.arange(height) + 0.5) / height).view(1, height, 1, 1)
    column = torch.lerp(top.view(batch, 1, 1, 3), bottom.view(batch, 1, 1, 3), rows)  # (B, H, 1, 3)
    return column.expand(batch, height, width, 3).contiguous()


def view_captions(
    texts: Sequence[str], cameras: Cameras, prompt: PromptConfig = DEFAULT_PROMPT
) -> tuple[str, ...]:
    """Each caption with the view word of its camera, exactly as view-dependent prompting does (sec. 3.2)."""
    if not prompt.view_dependent:
        return tuple(texts)
    return tuple(
        with_view(text, view_word(float(e), float(a), prompt))
        for text, e, a in zip(texts, cameras.elevation_deg, cameras.azimuth_deg, strict=True)
    )


@dataclass(frozen=True)
class WorldBatchConfig:
    composition_probability: float = 0.5  # share of two-object scenes
    # ALBEDO, LAMBERTIAN, TEXTURELESS: the paper's mix after its albedo warm-up (App. A.2; shading.py), so the
    # prior learns from the same kinds of image that SDS will show it.
    shading_probabilities: tuple[float, float, float] = (0.25, 0.375, 0.375)
    gradient_background_fraction: float = 0.5
    background_colourfulness: float = 1.0  # 1: any colour; less: nearer a light grey (background.py)
    # Rays per pixel along each axis, averaged: soft edges like the NeRF's volume renders, at
    # supersample^2 times the cost. 1 traces one ray through each pixel centre.
    supersample: int = 1
    camera: CameraConfig = field(default_factory=CameraConfig)
    light: LightConfig = field(default_factory=LightConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    tracer: TracerConfig = field(default_factory=TracerConfig)

    def __post_init__(self) -> None:
        if not 0.0 <= self.composition_probability <= 1.0:
            raise ValueError("composition_probability must be in [0, 1]")
        if len(self.shading_probabilities) != 3 or min(self.shading_probabilities) < 0:
            raise ValueError(
                "shading_probabilities are three non-negative weights: albedo, lambertian, textureless"
            )
        if sum(self.shading_probabilities) <= 0:
            raise ValueError("shading_probabilities must not all be zero")
        if not 0.0 <= self.background_colourfulness <= 1.0:
            raise ValueError("background_colourfulness must be in [0, 1]")
        if self.supersample < 1:
            raise ValueError("supersample must be at least 1")


# The built-in preset gives the NeRF's solid backgrounds the same colourfulness.
PRIOR_BACKGROUND_COLOURFULNESS = 0.25


def prior_world() -> WorldBatchConfig:
    """The renders the built-in prior learns from (prior.train), and the world classifier's and the judge's
    too (evaluation).

    - Albedo and lambertian only. A textureless render (white albedo, sec. 3.1) shows none of its caption's
      colour, so training on them would teach that "a red mug" may look white or black, against the colour
      accuracy the prior must reach (issue #3).
    - Muted backgrounds (a quarter colour, the rest light grey). With backgrounds of any colour, the first
      run's prior learned the images but barely the captions: after 2,500 steps, the right caption lowered
      its denoising loss by 1 % against a wrong one, so colour and kind were left to chance. The builtin
      preset gives the NeRF's solid backgrounds the same colourfulness."""
    return WorldBatchConfig(
        shading_probabilities=(0.5, 0.5, 0.0), background_colourfulness=PRIOR_BACKGROUND_COLOURFULNESS
    )


@dataclass(frozen=True)
class TrainingBatch:
    images: Tensor  # (B, H, W, 3) in [0, 1], channels last like the renderer's output
    captions: tuple[str, ...]  # with view words: "a photo of a red mug, front view"
    scene_ids: Tensor  # (B,) long, scenes.scene_id
    scenes: tuple[Scene, ...]
    modes: Tensor  # (B,) ShadingMode
    cameras: Cameras
    mask: Tensor  # (B, H, W) bool; with supersampling, where at least half of a pixel's rays hit


def sample_training_batch(
    n: int, resolution: int, generator: torch.Generator, config: WorldBatchConfig = WorldBatchConfig()
) -> TrainingBatch:
    """n random training images of non-held-out scenes with their captions. Draws from `generator` in a
    fixed order (captions, cameras, lights, shading modes, backgrounds), so a seed reproduces a batch."""
    pairs = sample_training_captions(n, generator, config.composition_probability)
    cameras = sample_cameras(config.camera, n, resolution, generator)
    lights = sample_point_lights(cameras.position, config.light, generator)
    probabilities = torch.tensor(config.shading_probabilities)
    modes = torch.multinomial(probabilities, n, replacement=True, generator=generator)
    ss = config.supersample
    fine = resolution * ss
    backgrounds = sample_backgrounds(
        n, fine, fine, generator, config.gradient_background_fraction, config.background_colourfulness
    )
    scenes = tuple(p.scene for p in pairs)
    fine_cameras = dataclasses.replace(cameras, focal_px=cameras.focal_px * ss, width=fine, height=fine)
    render = render_scene(scenes, fine_cameras, lights, modes, backgrounds, config.light, config.tracer)
    images = F.avg_pool2d(render.image.permute(0, 3, 1, 2), ss).permute(0, 2, 3, 1)
    coverage = F.avg_pool2d(render.mask[:, None].float(), ss)[:, 0]
    return TrainingBatch(
        images=images,
        captions=view_captions([p.text for p in pairs], cameras, config.prompt),
        scene_ids=torch.tensor([scene_id(s) for s in scenes], dtype=torch.long),
        scenes=scenes,
        modes=modes,
        cameras=cameras,
        mask=coverage >= 0.5,
    )
