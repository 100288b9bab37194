"""UV unwrapping (xatlas), an albedo texture baked from the field, and vertex colours.

Baking: every texel whose centre falls inside a triangle of the UV atlas is mapped back to its 3D point on
the surface, and the field's albedo there is the texel's colour. Texels outside every chart are then filled
with the colour of the nearest covered texel (dilation), so that bilinear filtering and mipmaps, which read
across chart borders, never pull in the black of the empty atlas: no dark seams.

UV convention: v points up (OpenGL, what trimesh and the OBJ format use; the glTF writer flips it), so row 0
of the texture image is v = 1, and the centre of texel (row r, column c) of a T x T texture is
u = (c + 0.5) / T, v = 1 - (r + 0.5) / T.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from torch import Tensor

from dreamfusion.fields.base import Field
from dreamfusion.fields.mesh import unit_vertex_normals
from dreamfusion.render.raster import Fragments, rasterize

CHUNK = 65536  # field queries per call


@dataclass(frozen=True)
class TextureConfig:
    size: int = 1024  # texture width = height in texels; a power of two, so mipmaps work in every viewer
    padding: int = 2  # empty texels xatlas leaves between charts

    def __post_init__(self) -> None:
        if self.size < 16 or self.size & (self.size - 1):
            raise ValueError(f"texture size must be a power of two >= 16, got {self.size}")
        if self.padding < 0:
            raise ValueError(f"texture padding must be >= 0, got {self.padding}")


@dataclass(frozen=True)
class TexturedMesh:
    """A triangle mesh with its atlas. Vertices on UV seams are duplicated (one per chart); `weld` maps each
    to its vertex in the seam-free mesh, which is what formats without UVs (PLY) write."""

    vertices: np.ndarray  # (V, 3) float32, world units and axes (+Z up, front +X)
    faces: np.ndarray  # (F, 3) int64, counter-clockwise seen from outside
    normals: np.ndarray  # (V, 3) float32 unit outward vertex normals (shared across seams)
    uv: np.ndarray  # (V, 2) float32 in [0, 1], v up
    texture: np.ndarray  # (T, T, 3) uint8 baked albedo, row 0 at v = 1
    vertex_colors: np.ndarray  # (V, 3) uint8 albedo at each vertex
    weld: np.ndarray  # (V,) int64 index of each vertex in the seam-free mesh

    def welded(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Seam-free (vertices, faces, normals, vertex_colors): one vertex per point of the surface."""
        count = int(self.weld.max()) + 1
        first = np.full(count, -1, dtype=np.int64)
        order = np.arange(len(self.weld))[::-1]
        first[self.weld[order]] = order  # the lowest duplicate wins
        return (
            self.vertices[first],
            self.weld[self.faces],
            self.normals[first],
            self.vertex_colors[first],
        )


@dataclass(frozen=True)
class Atlas:
    """xatlas's charts: the mesh's vertices split at the seams, and their texture coordinates."""

    vmapping: np.ndarray  # (V',) int64 index of each atlas vertex in the unwrapped mesh's vertices
    faces: np.ndarray  # (F, 3) int64 into the atlas vertices, same triangles and order as the mesh's
    uv: np.ndarray  # (V', 2) float32 in [0, 1], v up


def unwrap(mesh: trimesh.Trimesh, config: TextureConfig = TextureConfig()) -> Atlas:
    """Charts and packs `mesh` with xatlas, for a `config.size` square texture."""
    import xatlas

    atlas = xatlas.Atlas()
    atlas.add_mesh(mesh.vertices.astype(np.float32), mesh.faces.astype(np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = config.size
    pack.padding = config.padding
    pack.bilinear = True  # room around each chart for the texels bilinear filtering reads
    atlas.generate(xatlas.ChartOptions(), pack)
    vmapping, faces, uv = atlas[0]
    return Atlas(vmapping.astype(np.int64), faces.astype(np.int64), uv.astype(np.float32))


@torch.no_grad()
def field_albedo(field: Field, points: np.ndarray) -> np.ndarray:
    """(N, 3) float32 albedo in [0, 1] of the field at world points (N, 3)."""
    device = next(field.parameters(), torch.empty(0)).device
    x = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32))
    out = [field(x[i : i + CHUNK].to(device)).albedo.float().cpu() for i in range(0, x.shape[0], CHUNK)]
    return torch.cat(out).clamp(0, 1).numpy() if out else np.zeros((0, 3), np.float32)


def texel_fragments(uv: np.ndarray, faces: np.ndarray, size: int) -> Fragments:
    """Rasterise the atlas: which face covers each texel centre, with barycentrics (see `rasterize`)."""
    xy = torch.from_numpy(uv).float() * size
    xy[:, 1] = size - xy[:, 1]  # v up -> image rows down
    return rasterize(xy, torch.from_numpy(faces), size, size)


def dilate(image: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """Every texel outside `covered` (H, W) takes the colour of the nearest covered texel."""
    from scipy.ndimage import distance_transform_edt

    if covered.all() or not covered.any():
        return image
    _, (rows, cols) = distance_transform_edt(~covered, return_indices=True)
    return image[rows, cols]


def to_uint8(colors: np.ndarray) -> np.ndarray:
    return (np.clip(colors, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def bake_albedo(
    field: Field, vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray, size: int
) -> np.ndarray:
    """(T, T, 3) uint8 albedo texture, dilated at the seams."""
    fragments = texel_fragments(uv, faces, size)
    covered = fragments.covered.numpy()
    face = fragments.face.numpy()[covered]
    weights = fragments.barycentric.numpy()[covered]
    points = (vertices[faces[face]] * weights[:, :, None]).sum(1)  # (N, 3) surface points of the texels
    texture = np.zeros((size, size, 3), np.float32)
    texture[covered] = field_albedo(field, points)
    return to_uint8(dilate(texture, covered))


def bake(field: Field, mesh: trimesh.Trimesh, atlas: Atlas, size: int) -> TexturedMesh:
    """The field's albedo baked into a `size` x `size` texture for `atlas`, and into vertex colours."""
    vertices = mesh.vertices[atlas.vmapping].astype(np.float32)
    normals = unit_vertex_normals(mesh)[atlas.vmapping]
    texture = bake_albedo(field, vertices, atlas.faces, atlas.uv, size)
    colors = to_uint8(field_albedo(field, mesh.vertices)[atlas.vmapping])
    return TexturedMesh(vertices, atlas.faces, normals, atlas.uv, texture, colors, atlas.vmapping)


def texture_mesh(
    field: Field, mesh: trimesh.Trimesh, config: TextureConfig = TextureConfig()
) -> TexturedMesh:
    """Unwrap `mesh` and bake the field's albedo into a texture and into vertex colours."""
    return bake(field, mesh, unwrap(mesh, config), config.size)


def sample_texture(texture: Tensor, uv: Tensor) -> Tensor:
    """Bilinear lookup: texture (T, T, 3) float in [0, 1], uv (N, 2) with v up -> (N, 3)."""
    grid = torch.stack([uv[:, 0] * 2 - 1, 1 - uv[:, 1] * 2], -1).view(1, -1, 1, 2).float()
    image = texture.permute(2, 0, 1)[None].float()
    out = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[0, :, :, 0].T
