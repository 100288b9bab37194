"""Camera rays -> field samples -> shaded, composited images (paper sec. 3.1)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from dreamfusion.fields.base import Field
from dreamfusion.render.cameras import Cameras
from dreamfusion.render.lights import LightConfig
from dreamfusion.render.rays import camera_rays
from dreamfusion.render.sampling import OccupancyGrid, SamplingConfig, occupied_samples, stratified_samples
from dreamfusion.render.shading import shade
from dreamfusion.render.volume_rendering import composite, compositing_weights

if TYPE_CHECKING:
    from dreamfusion.distributed import Shard


@dataclass(frozen=True)
class RenderOutput:
    image: Tensor  # (B, H, W, 3) shaded colour over the background
    opacity: Tensor  # (B, H, W) accumulated alpha
    depth: Tensor  # (B, H, W) expected distance along the ray, normalised by opacity
    normals: Tensor | None  # (B, H, W, 3) composited world-space normals (None when not computed)
    weights: Tensor  # (B, H, W, S) compositing weights per sample (for the regularisers)
    distances: Tensor  # (B, H, W, S) distance of each sample from the camera
    deltas: Tensor  # (B, H, W, S) length of ray each sample stands for
    sample_normals: Tensor | None  # (B, H, W, S, 3) per-sample normals (zero where skipped)
    directions: Tensor  # (B, H, W, 3) unit ray directions
    background: Tensor  # (B, H, W, 3) the background behind the object
    eikonal: Tensor | None = None  # () mean of the field's eikonal term over the evaluated samples, if any


@dataclass(frozen=True)
class RenderSettings:
    """How images are drawn, apart from what is drawn: the samples along each ray, the light's strength, and
    whether normals are computed (needed by lit and textureless shading and by the orientation loss)."""

    sampling: SamplingConfig = SamplingConfig()
    ambient: float = LightConfig.ambient
    diffuse: float = LightConfig.diffuse
    with_normals: bool = False

    @classmethod
    def of(cls, sampling: SamplingConfig, light: LightConfig, with_normals: bool = False) -> RenderSettings:
        return cls(sampling, light.ambient, light.diffuse, with_normals)


def render(
    field: Field,
    cameras: Cameras,
    settings: RenderSettings,
    *,
    background: Callable[[Tensor], Tensor],
    lights: Tensor,
    modes: Tensor,
    occupancy: OccupancyGrid | None = None,
    generator: torch.Generator | None = None,
    shard: Shard | None = None,
) -> RenderOutput:
    """Render B images. background maps ray directions (B, H, W, 3) to colours (B, H, W, 3);
    lights: (B, 3) positions; modes: (B,) ShadingMode.

    Samples in cells the occupancy grid marks empty are never evaluated: they have zero density. With
    `sampling.placement=occupied` (and a grid) the samples are placed in the occupied cells only.
    `generator` jitters the samples (training); None renders deterministically (validation, video).
    `shard`: these B images are one process's share of a larger batch (dreamfusion.distributed).
    """
    b, h, w = cameras.batch_size, cameras.height, cameras.width
    device = cameras.c2w.device
    rays = camera_rays(cameras)
    background_image = background(rays.directions)
    if settings.sampling.placement == "occupied" and occupancy is not None:
        samples = occupied_samples(rays, field.bound, settings.sampling, occupancy, generator, shard)
    else:
        samples = stratified_samples(rays, field.bound, settings.sampling, generator, shard)
    r, s = samples.deltas.shape
    flat_points = samples.points.reshape(-1, 3)
    active = samples.deltas.reshape(-1) > 0
    if occupancy is not None:
        active = active & occupancy.lookup(flat_points)
    idx = active.nonzero().squeeze(-1)
    out = field(flat_points[idx], with_normals=settings.with_normals)
    density = flat_points.new_zeros(r * s).index_put((idx,), out.density).view(r, s)
    weights = compositing_weights(density, samples.deltas)
    normals = out.normals
    if normals is not None:
        normals = _shading_normals(field, flat_points[idx], normals, weights.detach().reshape(-1)[idx])

    image_of_sample = idx // (h * w * s)
    colour = shade(
        out.albedo,
        normals,
        flat_points[idx],
        lights.to(device)[image_of_sample],
        modes.to(device)[image_of_sample],
        settings.ambient,
        settings.diffuse,
    )
    colours = flat_points.new_zeros(r * s, 3).index_put((idx,), colour).view(r, s, 3)
    opacity = weights.sum(-1)
    rgb = composite(weights, colours) + (1.0 - opacity)[:, None] * background_image.reshape(-1, 3)
    depth = (weights * samples.distances).sum(-1) / opacity.clamp_min(1e-6)

    sample_normals = None
    if normals is not None:
        sample_normals = flat_points.new_zeros(r * s, 3).index_put((idx,), normals).view(r, s, 3)
        normals = F.normalize(composite(weights, sample_normals), dim=-1, eps=1e-6)
        sample_normals = sample_normals.view(b, h, w, s, 3)
        normals = normals.view(b, h, w, 3)
    return RenderOutput(
        image=rgb.view(b, h, w, 3),
        opacity=opacity.view(b, h, w),
        depth=depth.view(b, h, w),
        normals=normals,
        weights=weights.view(b, h, w, s),
        distances=samples.distances.view(b, h, w, s),
        deltas=samples.deltas.view(b, h, w, s),
        sample_normals=sample_normals,
        directions=rays.directions,
        background=background_image,
        eikonal=None if out.eikonal is None or out.eikonal.numel() == 0 else out.eikonal.mean(),
    )


# Samples of less weight than this keep the normals of the field's forward pass: together they move a pixel
# by at most about samples x 1e-3.
SHADING_NORMAL_WEIGHT = 1e-3


def _shading_normals(field: Field, points: Tensor, normals: Tensor, weights: Tensor) -> Tensor:
    """`normals` (N, 3), with the field's own shading normals (`Field.shading_normals`) at the samples whose
    compositing weight (N,) is at least SHADING_NORMAL_WEIGHT, when the field has them."""
    heavy = (weights >= SHADING_NORMAL_WEIGHT).nonzero().squeeze(-1)
    smooth = field.shading_normals(points[heavy])
    return normals if smooth is None else normals.index_put((heavy,), smooth.to(normals.dtype))
