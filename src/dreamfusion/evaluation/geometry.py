"""How close a generated field's shape is to the true shape of its caption.

The procedural world (`dreamfusion.world`) gives every caption exact geometry in the NeRF's own frame (+Z up,
front faces +X, everything inside radius FIT_RADIUS = 0.8), so a run can be scored without a learned judge:

- `volumetric_iou`: the field's density, thresholded on a regular grid, against the scene's occupancy on the
  same grid;
- `textureless_turntable`: the field and the true scene from evenly spaced azimuths, white and lit from the
  camera (textureless shading, paper sec. 3.1), so that a person sees the shape without its colours.

`load_run_field` rebuilds the field of a run folder written by `dreamfusion generate`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from dreamfusion.fields.base import Field
from dreamfusion.fields.grid import CHUNK, density_grid, grid_points
from dreamfusion.render.background import SolidBackground
from dreamfusion.render.cameras import orbit_cameras
from dreamfusion.render.lights import LightConfig, headlights
from dreamfusion.render.sampling import SamplingConfig
from dreamfusion.render.shading import ShadingMode
from dreamfusion.render.views import render_views, to_uint8
from dreamfusion.run.config import Config, load_field, load_latest, read_run_config
from dreamfusion.world import Scene, render_scene
from dreamfusion.world.scenes import FIT_RADIUS

# The default grid reaches this far beyond FIT_RADIUS, so the scene's outermost cells are inside it.
SCENE_MARGIN = 0.05


def load_run_field(run_dir: Path | str) -> tuple[Field, Config]:
    """The field of a run at its latest checkpoint, on the CPU in eval mode, and the run's config.

    Missing config.yaml or checkpoint, or a checkpoint that does not fit the config, is a UserError.
    """
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    return load_field(config, load_latest(run_dir), str(run_dir)), config


def default_bound(field: Field) -> float:
    """Half-width of the evaluation grid: the field's bounding sphere (floaters anywhere the renderer can
    see count against the field) or the scene's FIT_RADIUS plus a margin, whichever is larger."""
    return max(float(field.bound), FIT_RADIUS + SCENE_MARGIN)


@torch.no_grad()
def scene_occupancy_grid(scene: Scene, resolution: int, bound: float, chunk: int = CHUNK) -> Tensor:
    """(R, R, R) bool: the cell centres of `grid_points(resolution, bound)` inside the scene."""
    points = grid_points(resolution, bound).reshape(-1, 3)
    inside = torch.cat([scene.occupancy(points[i : i + chunk]) for i in range(0, points.shape[0], chunk)])
    return inside.view(resolution, resolution, resolution)


def occupancy_threshold(cell_size: float) -> float:
    """The density above which a point counts as occupied on a grid of cubic cells `cell_size` wide.

    A ray crossing one cell of density sigma keeps exp(-sigma * cell) of its light (volume rendering, paper
    eq. 1), so the cell is at least half opaque where sigma * cell >= ln 2. Tying the threshold to the cell
    rather than to a fixed density makes the occupied set what a render at that scale would show as solid,
    and keeps it stable under a change of grid resolution for a sharp surface: a field whose density jumps
    from ~0 to far above ln 2 / cell at its surface (what a converged NeRF and `AnalyticField` do) gives the
    same occupied set at any resolution.
    """
    if cell_size <= 0:
        raise ValueError(f"cell_size must be > 0, got {cell_size}")
    return math.log(2.0) / cell_size


def grid_iou(occupied: Tensor, truth: Tensor) -> float:
    """Intersection over union of two boolean grids of the same cells (0 when both are empty)."""
    return int((occupied & truth).sum()) / max(int((occupied | truth).sum()), 1)


@dataclass(frozen=True)
class OccupancyComparison:
    iou: float  # |field AND scene| / |field OR scene|, in cells
    field_volume: float  # occupied volume of the field, world units^3
    scene_volume: float  # occupied volume of the true scene, world units^3
    resolution: int
    bound: float  # the grid spans [-bound, bound]^3
    threshold: float  # density at and above which a cell is occupied


def compare_occupancy(
    field: Field,
    scene: Scene,
    resolution: int = 128,
    bound: float | None = None,
    threshold: float | None = None,
) -> OccupancyComparison:
    """Occupancy of the field (density >= `threshold`, default `occupancy_threshold` of the grid's cell)
    against the scene's exact occupancy, on the same R^3 grid (default bound: `default_bound(field)`)."""
    bound = default_bound(field) if bound is None else float(bound)
    cell = 2.0 * bound / resolution
    threshold = occupancy_threshold(cell) if threshold is None else float(threshold)
    occupied = density_grid(field, resolution, bound) >= threshold
    truth = scene_occupancy_grid(scene, resolution, bound)
    return OccupancyComparison(
        iou=grid_iou(occupied, truth),
        field_volume=int(occupied.sum()) * cell**3,
        scene_volume=int(truth.sum()) * cell**3,
        resolution=resolution,
        bound=bound,
        threshold=threshold,
    )


def volumetric_iou(
    field: Field,
    scene: Scene,
    resolution: int = 128,
    bound: float | None = None,
    threshold: float | None = None,
) -> float:
    """Intersection over union of the field's occupied cells and the scene's (see `compare_occupancy`)."""
    return compare_occupancy(field, scene, resolution, bound, threshold).iou


def textureless_turntable(
    field: Field,
    scene: Scene | None = None,
    azimuths: int = 8,
    elevation_deg: float = 30.0,
    resolution: int = 64,
    sampling: SamplingConfig | None = None,
    light: LightConfig | None = None,
    upscale: int = 2,
) -> Image.Image:
    """One row of textureless renders of `field` from `azimuths` evenly spaced orbit cameras (azimuth 0, the
    front, first), on white; with `scene`, a second row of the true scene from the same cameras and light.

    The field row comes from the validation renderer (`render_views`, no occupancy grid, so nothing the
    field holds is skipped); the truth row from the world's sphere tracer (`render_scene`), shaded by the
    same lambertian model with a headlight.
    """
    cameras = orbit_cameras(azimuths, resolution, elevation_deg)
    light = light or LightConfig()
    renders = render_views(field, SolidBackground(), cameras, sampling or SamplingConfig(), light)
    rows = [renders.textureless]
    if scene is not None:
        truth = render_scene(
            scene,
            cameras,
            headlights(cameras.position),
            torch.full((azimuths,), int(ShadingMode.TEXTURELESS)),
            torch.ones(azimuths, resolution, resolution, 3),
            light,
        )
        rows.append(truth.image.clamp(0, 1))
    strip = torch.cat([torch.cat(list(row), dim=1) for row in rows], dim=0)  # (rows * H, V * W, 3)
    image = Image.fromarray(to_uint8(strip))
    if upscale > 1:
        image = image.resize((image.width * upscale, image.height * upscale), Image.NEAREST)
    return image


@torch.no_grad()
def mesh_occupancy_grid(vertices: Tensor, faces: Tensor, resolution: int, bound: float) -> Tensor:
    """(R, R, R) bool: the cell centres of `grid_points(resolution, bound)` inside a closed mesh.

    By parity along +Z: a centre is inside when the vertical line through it crosses the surface an odd
    number of times above it. Every face adds a crossing to each column whose (x, y) centre its projection
    covers (half-open edge tests, so a column through a shared edge counts it once), at the height of the
    face there; a crossing counts for every centre below it, which a cumulative sum along Z gives.
    """
    cell = 2.0 * bound / resolution
    # Vertices in cell units, so column (i, j) has its centre at (i + 0.5, j + 0.5).
    v = (vertices.double() + bound) / cell
    tri = v[faces.long()]  # (F, 3, 3)
    lo = torch.ceil(tri[..., :2].amin(1) - 0.5).clamp(0, resolution - 1).long()
    hi = torch.floor(tri[..., :2].amax(1) - 0.5).clamp(-1, resolution - 1).long()
    span = (hi - lo + 1).clamp_min(0)
    counts = span[:, 0] * span[:, 1]
    face = torch.repeat_interleave(torch.arange(len(faces)), counts)
    offset = torch.arange(face.numel()) - (counts.cumsum(0) - counts)[face]
    i = lo[face, 0] + offset % span[face, 0].clamp_min(1)
    j = lo[face, 1] + offset // span[face, 0].clamp_min(1)
    p = torch.stack([i + 0.5, j + 0.5], -1).double()
    a, b, c = tri[face, 0], tri[face, 1], tri[face, 2]

    def edge(u: Tensor, w: Tensor) -> Tensor:  # > 0 with p left of u -> w
        return (w[:, 0] - u[:, 0]) * (p[:, 1] - u[:, 1]) - (w[:, 1] - u[:, 1]) * (p[:, 0] - u[:, 0])

    def owns(u: Tensor, w: Tensor, e: Tensor) -> Tensor:  # the top-left rule, for either winding
        dx, dy = w[:, 0] - u[:, 0], w[:, 1] - u[:, 1]
        return (e > 0) | ((e == 0) & ((dy > 0) | ((dy == 0) & (dx < 0))))

    e0, e1, e2 = edge(b, c), edge(c, a), edge(a, b)
    area = e0 + e1 + e2  # twice the signed projected area
    sign = torch.sign(area)
    e0, e1, e2 = e0 * sign, e1 * sign, e2 * sign
    flip = sign < 0  # orient every triangle counter-clockwise so the rule picks one owner per edge
    ab, bc, ca = (a, b), (b, c), (c, a)
    bc = (torch.where(flip[:, None], c, b), torch.where(flip[:, None], b, c))
    ca = (torch.where(flip[:, None], a, c), torch.where(flip[:, None], c, a))
    ab = (torch.where(flip[:, None], b, a), torch.where(flip[:, None], a, b))
    inside = (area != 0) & owns(*bc, e0) & owns(*ca, e1) & owns(*ab, e2)
    z = (e0 * a[:, 2] + e1 * b[:, 2] + e2 * c[:, 2]) / (area * sign)  # the face's height in the column
    i, j, z = i[inside], j[inside], z[inside]
    # Centres k with k + 0.5 < z are below the crossing: k = 0 .. ceil(z - 0.5) - 1.
    top = torch.ceil(z - 0.5).clamp(0, resolution).long()
    marks = torch.zeros(resolution, resolution, resolution + 1, dtype=torch.int64)
    flat = marks.view(-1)
    base = (i * resolution + j) * (resolution + 1)
    flat.index_add_(0, base, torch.ones_like(base))
    flat.index_add_(0, base + top, -torch.ones_like(base))
    return (marks.cumsum(-1)[..., :resolution] % 2).bool()
