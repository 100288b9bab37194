"""How close an exported mesh and its colours are to the true surface of its caption's scene.

- `chamfer_to_scene`: symmetric Chamfer distance between a mesh and the scene's surface, in world units;
- `albedo_delta_e`: mean CIEDE2000 colour difference between predicted and true albedo at surface points;
- `sample_scene_surface`: points on the true surface, spread evenly by area, where both are measured.

Frame: the mesh must be in the scene's (and the field's) world frame, +Z up, front +X, world units, as
`dreamfusion.fields.mesh.extract_mesh` returns it. The exported files (model.glb/.obj/.ply) are in glTF's
frame, (x, y, z)_file = (y, z, x)_world (`export.formats.to_file_axes`, recorded as "axes" in export.json):
a mesh read back from them needs (x, y, z)_world = (z, x, y)_file first.

The world's SDFs are exact for its primitives and conservative (never above the true distance) where
they are cut or intersected (world/objects.py); on and near the surface, where these metrics evaluate them,
that difference is second order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import trimesh
from scipy.spatial import cKDTree
from skimage.color import deltaE_ciede2000, rgb2lab
from torch import Tensor

from dreamfusion.fields.grid import CHUNK
from dreamfusion.world import Scene
from dreamfusion.world.scenes import FIT_RADIUS

# Candidate points are kept within this distance of the surface before projection: thin enough that a
# uniform sample of the shell is an even sample of the surface by area, thick enough to accept ~1 % of the
# candidates of the scene's bounding cube.
SURFACE_BAND = 0.01
PROJECTION_STEPS = 4  # Newton steps p <- p - sdf(p) grad sdf(p); one suffices where the SDF is exact
ON_SURFACE = 1e-4  # |sdf| below which a projected point counts as on the surface, world units
# Triangles of this many nearest face centres bound a point's distance to a mesh before the exact search.
NEAREST_CANDIDATES = 4


@dataclass(frozen=True)
class ChamferResult:
    mesh_to_scene: float  # mean |sdf| at points on the mesh: accuracy (floaters, bulges), world units
    scene_to_mesh: float  # mean distance from points on the true surface to the mesh: completeness
    chamfer: float  # mean of the two directions
    mesh_samples: int
    scene_samples: int


def sample_scene_surface(scene: Scene, count: int, generator: torch.Generator) -> Tensor:
    """(count, 3) points on the scene's surface, about uniform by area.

    Uniform points of the cube around the scene's sphere (FIT_RADIUS) are kept if they lie within
    SURFACE_BAND of the surface, which makes them uniform in a thin shell and hence, once moved onto the
    surface along the SDF's gradient, about uniform on it. Where the SDF is conservative the shell is a
    little thicker and those regions a little over-sampled.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    reach = FIT_RADIUS + SURFACE_BAND
    kept: list[Tensor] = []
    found, rounds = 0, 0
    while found < count:
        rounds += 1
        if rounds > 20 and found == 0:  # the world's objects accept ~1 % of candidates, so ~13k per round
            raise ValueError("no surface point among 20 rounds of candidates: does the scene have a surface?")
        candidates = (torch.rand(CHUNK, 3, generator=generator) * 2 - 1) * reach
        with torch.no_grad():
            near = candidates[scene.sdf(candidates).abs() < SURFACE_BAND]
        points = _project(scene, near)
        kept.append(points)
        found += points.shape[0]
    return torch.cat(kept)[:count]


def _project(scene: Scene, points: Tensor) -> Tensor:
    """Points moved onto the zero level set by Newton steps on the SDF, those that got there."""
    for _ in range(PROJECTION_STEPS):
        points = points.detach().requires_grad_(True)
        distance = scene.sdf(points)
        (gradient,) = torch.autograd.grad(distance.sum(), points)
        # The gradient of an SDF is the unit normal; normalising keeps a conservative SDF's step direction.
        gradient = gradient / gradient.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        points = points - distance[:, None] * gradient
    points = points.detach()
    with torch.no_grad():
        return points[scene.sdf(points).abs() < ON_SURFACE]


def distance_to_mesh(mesh: trimesh.Trimesh, points: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """(N,) exact distance from each point (N, 3) to the mesh's surface (trimesh's own closest_point needs
    the rtree package, which the project does not depend on).

    The triangles of the K nearest face centres give an upper bound u on a point's distance; a triangle
    whose centre is further than u + its reach (largest centre-to-corner distance) cannot be closer, so
    only the triangles with centres within u + the largest reach are measured exactly. On a well-shaped
    mesh that is a small patch around the nearest point; on one with long slivers a larger one, still exact.
    """
    centres = mesh.triangles_center
    reach = np.linalg.norm(mesh.triangles - centres[:, None], axis=-1).max(axis=1)  # (F,)
    tree = cKDTree(centres)
    k = min(NEAREST_CANDIDATES, len(centres))
    distances = []
    for part in np.array_split(points, max(1, -(-len(points) // chunk))):
        _, nearest = tree.query(part, k=k)
        upper = _point_triangle_distance(mesh, part, nearest.reshape(len(part), k)).min(axis=1)
        balls = tree.query_ball_point(part, upper + reach.max(), return_sorted=False)
        owner = np.repeat(np.arange(len(part)), [len(b) for b in balls])
        faces = np.concatenate([np.asarray(b, dtype=np.int64) for b in balls])
        # Triangles that cannot beat the bound are skipped: |p - centre| - reach >= upper.
        keep = np.linalg.norm(part[owner] - centres[faces], axis=-1) - reach[faces] < upper[owner]
        owner, faces = owner[keep], faces[keep]
        exact = _point_triangle_distance(mesh, part[owner], faces[:, None])[:, 0]
        np.minimum.at(upper, owner, exact)
        distances.append(upper)
    return np.concatenate(distances)


def _point_triangle_distance(mesh: trimesh.Trimesh, points: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(N, K) distance from each point (N, 3) to each of its K triangles (faces: (N, K) indices)."""
    repeated = np.repeat(points, faces.shape[1], axis=0)
    closest = trimesh.triangles.closest_point(mesh.triangles[faces.reshape(-1)], repeated)
    return np.linalg.norm(closest - repeated, axis=-1).reshape(faces.shape)


def chamfer_to_scene(
    mesh: trimesh.Trimesh, scene: Scene, samples: int, generator: torch.Generator
) -> ChamferResult:
    """Symmetric Chamfer distance between `mesh` (world frame, see the module docstring) and the scene's
    surface, from `samples` points on each: the mean of mean |sdf| at area-weighted points of the mesh and
    mean distance to the mesh from even points of the true surface (`sample_scene_surface`)."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if len(mesh.faces) == 0:
        raise ValueError("the mesh has no faces")
    on_mesh, _ = trimesh.sample.sample_surface(mesh, samples, seed=_seed(generator))
    with torch.no_grad():
        accuracy = scene.sdf(torch.as_tensor(on_mesh, dtype=torch.float32)).abs().mean()
    on_scene = sample_scene_surface(scene, samples, generator).double().numpy()
    completeness = distance_to_mesh(mesh, on_scene).mean()
    return ChamferResult(
        mesh_to_scene=float(accuracy),
        scene_to_mesh=float(completeness),
        chamfer=0.5 * (float(accuracy) + float(completeness)),
        mesh_samples=samples,
        scene_samples=samples,
    )


def albedo_delta_e(points: Tensor, predicted_rgb: Tensor, scene: Scene) -> float:
    """Mean CIEDE2000 difference between `predicted_rgb` (N, 3) in [0, 1] and the scene's albedo at `points`
    (N, 3), on and near the surface (e.g. from `sample_scene_surface`).

    Both are read as sRGB-encoded: nothing in the pipeline applies a transfer curve, so albedo values are
    the pixel values of the renders the prior and CLIP judge, and sRGB is how those pixels are displayed.
    Values are clipped to [0, 1] first. Around 1 is a just noticeable difference, above ~10 another colour.
    """
    if points.ndim != 2 or points.shape[-1] != 3 or predicted_rgb.shape != points.shape:
        raise ValueError(
            f"need (N, 3) points and colours, got {tuple(points.shape)}, {tuple(predicted_rgb.shape)}"
        )
    if points.shape[0] == 0:
        raise ValueError("no points to compare")
    with torch.no_grad():
        truth = scene.albedo(points.detach().float().cpu())
    lab = [rgb2lab(rgb.detach().double().cpu().clamp(0, 1).numpy()) for rgb in (predicted_rgb, truth)]
    return float(deltaE_ciede2000(lab[0], lab[1]).mean())


def _seed(generator: torch.Generator) -> int:
    """A numpy seed drawn from the torch generator, so trimesh's sampling follows the run's seed too."""
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
