"""A closed, outward-facing triangle mesh from the field's density: sample the density on a grid, pick the
iso level from the field itself, march the cubes, snap the vertices onto the field's surface, drop floaters,
decimate to a face budget.

The iso level (`half_opacity_threshold`)
----------------------------------------
What a user sees of a NeRF is where its rays become opaque, so the exported surface should cover what the
renders cover: the rays that the field makes at least half opaque, transmittance exp(-integral of density)
<= 0.5 (volume rendering, paper eq. 1). The density grid gives such rays for free: every line of cells along
X, Y or Z is one. A line is half opaque when the sum of density x cell length along it reaches ln 2, and the
iso surface at level L crosses a line exactly when the line's largest density is >= L. So L is the level
that makes the two sets of lines agree best: it maximises the intersection over union of {lines with peak
>= L} and {half-opaque lines}, over all 3 R^2 lines; of the interval of levels that give the same set of
lines, its midpoint.

The level is then a property of the field, not of the grid or a constant: it follows the optical depth, so a
soft, low-density object gets a low level and a dense one a high level. A fuzzy ball of density
A exp(-r^2 / 2 s^2) gets L = ln 2 / (s sqrt(2 pi)) whatever A, and a step to a constant density c gets
c / 2, the middle of the step (tests/export/test_mesh.py). Rays that graze a soft surface cross more of it,
which is why renders show a soft object larger than its dense core; a level chosen by silhouettes keeps
the mesh as large as the renders (a level chosen where rays hitting the surface head-on become half
opaque covered 16 % fewer pixels than the renders of a trained run). A field in which no line becomes
half opaque has no surface: a `UserError`, and nothing is written. `--threshold` overrides the level.

Vertices (`snap_to_surface`)
----------------------------
Marching cubes places each vertex by linear interpolation between the two grid samples of its edge, which
is exact only where the density is linear over a cell; for a sharp surface and a low level it puts the
surface up to a cell too far out. Each vertex is therefore moved along its edge onto the field's own iso
surface by bisection on the field (8 halvings: 1/256 of a cell).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import trimesh
from torch import Tensor

from dreamfusion.errors import ExportError
from dreamfusion.fields.base import Field
from dreamfusion.fields.grid import density_grid

HALF_OPACITY_DEPTH = math.log(2.0)  # optical depth at which transmittance is 0.5
REFINE_STEPS = 8  # bisections per vertex in snap_to_surface: within 1/256 of a cell of the iso surface
CHUNK = 65536  # field queries per call


@dataclass(frozen=True)
class MeshConfig:
    # Grid cells per axis over [-bound, bound]^3 (bound: the field's sphere, 1.4); None follows the field
    # (`grid_resolution`).
    resolution: int | None = None
    threshold: float | None = None  # iso density; None: `half_opacity_threshold` of the field
    # Connected pieces with less surface area than this share of the largest piece's are floaters.
    min_component_fraction: float = 0.02
    # Decimate (quadric error) to at most this many triangles; 0 keeps all; None: `face_budget`, which
    # follows the grid (40k at 256^3). 40k triangles draw in real time in any browser or engine, and keep
    # xatlas's unwrap of a noisy NeRF surface to tens of seconds on two cores (it grows faster than linearly
    # with the triangles: benchmarks/bench_export.py).
    max_faces: int | None = None

    def __post_init__(self) -> None:
        # 512^3 grid points take 1.6 GB as float32 coordinates; 1024^3 would not fit a 24 GB machine.
        if self.resolution is not None and not 16 <= self.resolution <= 512:
            raise ValueError(f"resolution must be in [16, 512], got {self.resolution}")
        if self.threshold is not None and not self.threshold > 0:
            raise ValueError(f"threshold must be > 0, got {self.threshold}")
        if not 0.0 <= self.min_component_fraction <= 1.0:
            raise ValueError(f"min_component_fraction must be in [0, 1], got {self.min_component_fraction}")
        if self.max_faces is not None and self.max_faces != 0 and self.max_faces < 4:
            raise ValueError(f"max_faces must be 0 (keep all) or >= 4, got {self.max_faces}")


@dataclass(frozen=True)
class ExtractedMesh:
    mesh: trimesh.Trimesh  # world units and axes (+Z up, front +X), outward winding
    threshold: float  # the iso density used
    auto_threshold: bool  # True: chosen by half_opacity_threshold; False: given by the user
    resolution: int
    removed_components: int  # floaters dropped
    faces_before_decimation: int


@torch.no_grad()
def half_opacity_threshold(grid: Tensor, cell: float) -> float:
    """The iso density whose surface covers the lines of the grid that the field makes half opaque (see the
    module's docstring). grid: (R, R, R) density at cell centres, `cell` world units apart.

    A field in which no line becomes half opaque is a UserError: it has no surface to export.
    """
    peaks = torch.cat([grid.amax(axis).flatten() for axis in range(3)]).double()
    depth = [grid.sum(axis, dtype=torch.float64) * cell for axis in range(3)]  # optical depth of each line
    opaque = torch.cat([(d >= HALF_OPACITY_DEPTH).flatten() for d in depth])
    if not bool(opaque.any()):
        raise ExportError(
            "the scene has no surface: no ray through it becomes even half opaque (the field is empty or "
            "transparent everywhere), so there is no mesh to export"
        )
    # Levels in decreasing order: just below the k-th largest peak, the surface crosses the k + 1 lines
    # with the largest peaks. Only levels between two distinct peak values are candidates.
    crossed = peaks > 0
    peaks, order = peaks[crossed].sort(descending=True)
    inside = opaque[crossed][order]  # whether the k-th line is half opaque
    intersection = inside.double().cumsum(0)
    union = torch.arange(1, peaks.numel() + 1, dtype=torch.float64) + int(opaque.sum()) - intersection
    iou = intersection / union
    distinct = torch.ones_like(inside)
    distinct[:-1] = peaks[:-1] > peaks[1:]
    k = int(torch.where(distinct, iou, -1.0).argmax())
    below = float(peaks[k + 1]) if k + 1 < peaks.numel() else 0.0
    return 0.5 * (float(peaks[k]) + below)


@torch.no_grad()
def _field_density(field: Field, points: np.ndarray) -> np.ndarray:
    """Density at world points (N, 3) as the renderer sees it: zero outside the bounding sphere."""
    device = next(field.parameters(), torch.empty(0)).device
    x = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32))
    out = torch.cat(
        [field.density(x[i : i + CHUNK].to(device)).float().cpu() for i in range(0, len(x), CHUNK)]
    )
    return np.where(np.linalg.norm(points, axis=1) <= field.bound, out.numpy(), 0.0)


def snap_to_surface(
    field: Field,
    vertices: np.ndarray,
    volume: np.ndarray,
    threshold: float,
    to_world,
    steps: int = REFINE_STEPS,
) -> np.ndarray:
    """Move each marching-cubes vertex along its grid edge onto the field's own iso surface.

    Marching cubes places a vertex by linear interpolation between the two samples of its edge. A field
    that is not linear over a cell (a step, a thin shell) then gets its surface biased by up to a cell,
    towards the sample whose density is further from the level. Bisection on the field itself, between the
    edge's inside and outside ends, removes that: `steps` halvings put the vertex within 2^-steps of a cell
    of where the field crosses the level. vertices: (V, 3) in the padded grid's index space, as
    marching cubes returns them; volume: that padded grid; to_world maps index space to world points.
    """
    fractional = np.abs(vertices - np.round(vertices)) > 1e-6
    # Vertices strictly inside one edge: all of them, in practice (Lewiner's cases add no inner vertex here).
    rows = np.nonzero(fractional.sum(1) == 1)[0]
    axis = fractional[rows].argmax(1)
    lo = np.round(vertices[rows]).astype(np.int64)
    lo[np.arange(len(rows)), axis] = np.floor(vertices[rows, axis]).astype(np.int64)
    hi = lo.copy()
    hi[np.arange(len(rows)), axis] += 1
    lo_inside = volume[tuple(lo.T)] >= threshold
    inside = to_world(np.where(lo_inside[:, None], lo, hi).astype(np.float64))
    outside = to_world(np.where(lo_inside[:, None], hi, lo).astype(np.float64))
    for _ in range(steps):
        middle = 0.5 * (inside + outside)
        is_inside = (_field_density(field, middle) >= threshold)[:, None]
        inside = np.where(is_inside, middle, inside)
        outside = np.where(is_inside, outside, middle)
    world = to_world(vertices.astype(np.float64))
    world[rows] = 0.5 * (inside + outside)
    return world


def marching_cubes(
    grid: Tensor, threshold: float, bound: float, field: Field | None = None
) -> trimesh.Trimesh:
    """The iso surface {density = threshold} of a grid of cell centres tiling [-bound, bound]^3
    (`grid.grid_points`), closed (the grid is padded with empty cells) and outward-facing.
    With `field`, the vertices are moved onto the field's own iso surface (`snap_to_surface`)."""
    from skimage.measure import marching_cubes as skimage_marching_cubes

    resolution = grid.shape[0]
    cell = 2.0 * bound / resolution
    volume = np.pad(grid.float().numpy(), 1)
    peak = float(volume.max())
    if not peak > threshold:
        raise ExportError(
            f"the scene has no surface at density {threshold:g}: its densest point reaches {peak:g} "
            "(lower --threshold, or leave it out to choose one from the field)"
        )
    vertices, faces, _, _ = skimage_marching_cubes(volume, level=threshold)

    def to_world(index: np.ndarray) -> np.ndarray:
        # Padded index i is cell i - 1, whose centre is at -bound + (i - 0.5) cell.
        return index * cell - (bound + 0.5 * cell)

    if field is None:
        vertices = to_world(vertices.astype(np.float64))
    else:
        vertices = snap_to_surface(field, vertices, volume, threshold, to_world)
    return _tidy(trimesh.Trimesh(vertices, faces, process=True))


def remove_floaters(mesh: trimesh.Trimesh, min_fraction: float) -> tuple[trimesh.Trimesh, int]:
    """Drop connected pieces whose surface area is below `min_fraction` of the largest piece's.
    Returns the kept mesh and how many pieces were dropped."""
    pieces = mesh.split(only_watertight=False)
    if len(pieces) <= 1:
        return mesh, 0
    areas = np.array([piece.area for piece in pieces])
    keep = [piece for piece, area in zip(pieces, areas, strict=True) if area >= min_fraction * areas.max()]
    return trimesh.util.concatenate(keep), len(pieces) - len(keep)


def decimate(mesh: trimesh.Trimesh, max_faces: int) -> trimesh.Trimesh:
    """Quadric-error simplification (Garland and Heckbert 1997, via fast-simplification) to at most
    `max_faces` triangles; the mesh is returned unchanged if it already fits."""
    import fast_simplification

    if len(mesh.faces) <= max_faces:
        return mesh
    reduction = 1.0 - max_faces / len(mesh.faces)
    vertices, faces = fast_simplification.simplify(
        mesh.vertices.astype(np.float32), mesh.faces.astype(np.int32), target_reduction=reduction
    )
    return _tidy(trimesh.Trimesh(vertices, faces, process=True))


def _tidy(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """Without degenerate triangles, without coincident ones, and wound outwards.

    Collapsing edges can fold a thin part flat into two triangles on the same three vertices, facing
    opposite ways: a fin of no volume whose edges are shared by four triangles and whose vertex normals
    cancel to zero (which the glTF validator rejects). Both copies go; the surface around them stays closed.
    """
    mesh.update_faces(mesh.nondegenerate_faces())
    _, index, counts = np.unique(np.sort(mesh.faces, axis=1), axis=0, return_inverse=True, return_counts=True)
    mesh.update_faces(counts[index.reshape(-1)] == 1)
    mesh.remove_unreferenced_vertices()
    trimesh.repair.fix_normals(mesh, multibody=True)
    return mesh


def unit_vertex_normals(mesh: trimesh.Trimesh) -> np.ndarray:
    """(V, 3) float32 outward unit normals: the area-weighted mean of the faces around each vertex, or,
    where those cancel (a vertex on a crease folded back on itself), the plain mean of their unit normals,
    or else the direction from the mesh's centre. Never zero: glTF requires unit normals."""
    normals = np.array(mesh.vertex_normals, dtype=np.float64)  # a copy: trimesh's cache is read-only
    bad = np.linalg.norm(normals, axis=1) < 0.5  # trimesh returns unit vectors, or zero where they cancel
    if bad.any():
        plain = np.zeros_like(normals)
        np.add.at(plain, mesh.faces.reshape(-1), np.repeat(mesh.face_normals, 3, axis=0))
        radial = mesh.vertices - mesh.vertices.mean(0)
        fallback = np.where(np.linalg.norm(plain, axis=1, keepdims=True) > 1e-6, plain, radial)
        fallback /= np.maximum(np.linalg.norm(fallback, axis=1, keepdims=True), 1e-12)
        normals[bad] = fallback[bad]
        normals[np.linalg.norm(normals, axis=1) < 0.5] = (0.0, 0.0, 1.0)
    return normals.astype(np.float32)


FACES_AT_256 = 40_000


def face_budget(config: MeshConfig, resolution: int) -> int | None:
    """The configured face budget (0: none), else one that follows the grid: 40k triangles at 256^3, scaled
    with the surface's cell count, (resolution / 256)^2, so 10k at the triplane's 128^3. A grid that
    coarse carries no more shape than that, and xatlas unwrapped a built-in-prior cube of 29.5k triangles
    in 4.2 s, most of a default run's export."""
    if config.max_faces is not None:
        return config.max_faces or None
    return max(1000, round(FACES_AT_256 * (resolution / 256) ** 2))


def clean_mesh(
    mesh: trimesh.Trimesh, config: MeshConfig, resolution: int
) -> tuple[trimesh.Trimesh, int, int]:
    """Floaters removed, then decimated to the face budget of a `resolution`^3 grid. Returns the mesh, the
    number of pieces removed and the face count before decimation. No face left is a UserError."""
    mesh, removed = remove_floaters(mesh, config.min_component_fraction)
    before = len(mesh.faces)
    budget = face_budget(config, resolution)
    if budget is not None:
        mesh = decimate(mesh, budget)
    if len(mesh.faces) == 0:
        raise ExportError("the scene has no surface: marching cubes found no triangle to export")
    return mesh, removed, before


def surface_threshold(grid: Tensor, cell: float, config: MeshConfig) -> tuple[float, bool]:
    """The user's threshold if given, else the field's half-opacity level; and whether it was automatic."""
    if config.threshold is not None:
        return config.threshold, False
    return half_opacity_threshold(grid, cell), True


def grid_resolution(field: Field, config: MeshConfig) -> int:
    """The marching-cubes grid: the configured one, else twice the field's finest features per axis (a grid
    finer than that adds triangles, not shape), between 64 and 256. A 64^2-texel triplane gets 128^3: on a
    built-in-prior run that matched the 256^3 mesh's silhouettes (IoU 0.959 vs 0.953 against the field from
    8 views) with a quarter of the triangles, in 3 s instead of 15 (benchmarks/bench_export.py)."""
    if config.resolution is not None:
        return config.resolution
    detail = field.detail_resolution()
    return 256 if detail is None else min(256, max(64, 2 * detail))


def extract_mesh(field: Field, config: MeshConfig = MeshConfig()) -> ExtractedMesh:
    """Density grid -> iso level -> marching cubes -> floaters and decimation, in world units and axes."""
    bound = float(field.bound)
    resolution = grid_resolution(field, config)
    cell = 2.0 * bound / resolution
    grid = density_grid(field, resolution, bound)
    threshold, auto = surface_threshold(grid, cell, config)
    mesh = marching_cubes(grid, threshold, bound, field)
    mesh, removed, before = clean_mesh(mesh, config, resolution)
    return ExtractedMesh(mesh, threshold, auto, resolution, removed, before)
