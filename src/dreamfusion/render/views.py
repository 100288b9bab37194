"""Deterministic renders of the scene from orbit cameras, as a PNG grid a person can look at.

Rows: shaded (lambertian, light at the camera), albedo, textureless, normals. Columns: azimuths.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from dreamfusion.fields.base import Field
from dreamfusion.files import atomic_path
from dreamfusion.render.background import Background
from dreamfusion.render.cameras import Cameras
from dreamfusion.render.lights import LightConfig, headlights
from dreamfusion.render.renderer import RenderSettings, render
from dreamfusion.render.sampling import OccupancyGrid, SamplingConfig
from dreamfusion.render.shading import ShadingMode

ROWS = ("shaded", "albedo", "textureless", "normals")


@dataclass(frozen=True)
class ViewRenders:
    shaded: Tensor  # (V, H, W, 3) in [0, 1]
    albedo: Tensor
    textureless: Tensor
    normals: Tensor  # normals mapped to colours, (n + 1) / 2, white where transparent
    opacity: Tensor  # (V, H, W)
    depth: Tensor  # (V, H, W)


@torch.no_grad()
def render_views(
    field: Field,
    background: Background,
    cameras: Cameras,
    sampling: SamplingConfig,
    light: LightConfig,
    occupancy: OccupancyGrid | None = None,
) -> ViewRenders:
    """Render every view in the three shading modes (one view at a time to bound memory)."""
    results: dict[str, list[Tensor]] = {
        k: [] for k in ("shaded", "albedo", "textureless", "normals", "opacity", "depth")
    }
    settings = RenderSettings.of(sampling, light, with_normals=True)
    for v in range(cameras.batch_size):
        view = Cameras(
            cameras.c2w[v : v + 1],
            cameras.focal_px[v : v + 1],
            cameras.width,
            cameras.height,
            cameras.elevation_deg[v : v + 1],
            cameras.azimuth_deg[v : v + 1],
            cameras.distance[v : v + 1],
        )
        lights = headlights(view.position)
        for name, mode in (
            ("shaded", ShadingMode.LAMBERTIAN),
            ("albedo", ShadingMode.ALBEDO),
            ("textureless", ShadingMode.TEXTURELESS),
        ):
            out = render(
                field,
                view,
                settings,
                background=lambda d: background(d, None),
                lights=lights,
                modes=torch.tensor([int(mode)]),
                occupancy=occupancy,
            )
            results[name].append(out.image[0].clamp(0, 1))
            if name == "shaded":
                n = out.normals[0] if out.normals is not None else torch.zeros_like(out.image[0])
                alpha = out.opacity[0, ..., None]
                results["normals"].append(((n + 1) / 2 * alpha + (1 - alpha)).clamp(0, 1))
                results["opacity"].append(out.opacity[0])
                results["depth"].append(out.depth[0])
    return ViewRenders(**{k: torch.stack(v).cpu() for k, v in results.items()})


def to_uint8(image: Tensor) -> np.ndarray:
    return (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()


def grid_image(renders: ViewRenders, upscale: int = 2) -> Image.Image:
    """One PNG: a row per shading kind, a column per view."""
    rows = [torch.cat(list(getattr(renders, name)), dim=1) for name in ROWS]  # each (H, V*W, 3)
    grid = Image.fromarray(to_uint8(torch.cat(rows, dim=0)))
    if upscale > 1:
        grid = grid.resize((grid.width * upscale, grid.height * upscale), Image.NEAREST)
    return grid


def save_png_atomic(image: Image.Image, path: Path) -> None:
    with atomic_path(path) as temp:
        image.save(temp, format="PNG")
