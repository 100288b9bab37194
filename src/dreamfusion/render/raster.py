"""A small triangle rasteriser in PyTorch, for baking a texture (triangles drawn in UV space), rendering the
exported mesh from cameras (the turntable video and the fidelity check) and the mesh stage's differentiable
renders (`refine.render`, which recomputes its barycentrics with autograd).

Every triangle is expanded into the pixel centres of its bounding box, each candidate is tested with edge
functions, and the winner per pixel is found with one `scatter_reduce(amin)` on a key that packs depth and
face index into an int64: the nearest face wins, ties go to the lowest index, and chunks of faces merge
exactly, so the result does not depend on the chunk size. No OpenGL, no extension to compile.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dreamfusion.render.cameras import Cameras

NO_FACE = torch.iinfo(torch.int64).max
# Candidates (face, pixel) tested at once: about 150 bytes each, so a few hundred MB at most.
MAX_CANDIDATES = 1 << 21
# A pixel centre on an edge shared by two triangles belongs to both: no cracks between them.
EDGE_EPS = 1e-7


@dataclass(frozen=True)
class Fragments:
    face: Tensor  # (H, W) int64 index of the triangle seen at the pixel centre, -1 where there is none
    barycentric: Tensor  # (H, W, 3) weights of that triangle's vertices (perspective-correct), 0 where none
    depth: Tensor  # (H, W) distance along the view axis, inf where no triangle (0 in UV space)

    @property
    def covered(self) -> Tensor:  # (H, W) bool
        return self.face >= 0


def _edge_weights(corners: Tensor, px: Tensor, py: Tensor) -> Tensor:
    """(N, 3) screen-space barycentric weights of points (px, py) in triangles whose corners are the columns
    of `corners` (6, N): x0, y0, x1, y1, x2, y2."""
    x0, y0, x1, y1, x2, y2 = corners
    area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
    w0 = ((x1 - px) * (y2 - py) - (x2 - px) * (y1 - py)) / area
    w1 = ((x2 - px) * (y0 - py) - (x0 - px) * (y2 - py)) / area
    return torch.stack([w0, w1, 1.0 - w0 - w1], -1)


def _perspective(weights: Tensor, inv_depth: Tensor) -> tuple[Tensor, Tensor]:
    """Perspective-correct weights and depth from screen-space weights (N, 3) and the vertices' 1 / depth
    (3, N)."""
    inv_depth = inv_depth.T
    inv = (weights * inv_depth).sum(-1)
    return weights * inv_depth / inv[:, None], 1.0 / inv


def rasterize(
    xy: Tensor,
    faces: Tensor,
    height: int,
    width: int,
    depth: Tensor | None = None,
    cull_back_faces: bool = False,
    max_candidates: int = MAX_CANDIDATES,
) -> Fragments:
    """Which triangle covers each pixel centre, and where.

    xy: (V, 2) vertex positions in pixels, x to the right and y down; the centre of pixel (row r, column c)
    is (c + 0.5, r + 0.5). faces: (F, 3) vertex indices, either winding. depth: (V,) positive distance along
    the view axis; the nearest triangle wins and barycentrics are perspective-correct. Without it (UV space)
    the lowest-index triangle wins where triangles overlap. cull_back_faces: skip triangles that turn their
    back to the viewer, assuming a closed mesh wound counter-clockwise seen from outside (half the work).

    Positions are float32: every edge function is a product of differences within one triangle's bounding
    box, so its rounding error is far below a pixel even on 4096-pixel images.
    """
    faces = faces.long()
    tri = xy.float()[faces]  # (F, 3, 2)
    lo = torch.ceil(tri.amin(1) - 0.5)
    hi = torch.floor(tri.amax(1) - 0.5)
    lo = torch.stack([lo[:, 0].clamp(min=0), lo[:, 1].clamp(min=0)], 1)
    hi = torch.stack([hi[:, 0].clamp(max=width - 1), hi[:, 1].clamp(max=height - 1)], 1)
    span = (hi - lo + 1).clamp_min(0)  # (F, 2) columns and rows of the bounding box
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    area = e1[:, 0] * e2[:, 1] - e2[:, 0] * e1[:, 1]
    # A face counter-clockwise seen from outside is counter-clockwise in the image too, but with y pointing
    # down there its signed area comes out negative.
    usable = (area < -1e-9) if cull_back_faces else (area.abs() > 1e-9)
    # Per face, one column: corners (6), bounding-box origin (2) and width (1), then 1 / depth of the
    # corners (3). Gathered per candidate into rows that are contiguous, which elementwise ops want.
    columns = [tri.reshape(-1, 6), lo, span[:, :1]]
    if depth is not None:
        columns.append(1.0 / depth.float()[faces])
        usable &= (depth[faces] > 0).all(1)
    table = torch.cat(columns, 1).T.contiguous()  # (9 or 12, F)
    counts = (span[:, 0] * span[:, 1]).long()
    ids = (usable & (counts > 0)).nonzero().squeeze(1)  # faces that can cover a pixel
    counts = counts[ids]

    keys = torch.full((height * width,), NO_FACE, dtype=torch.int64)
    ends = counts.cumsum(0)
    start = 0
    while start < ids.numel():
        # The next run of faces whose candidates fit the budget (at least one face, however large).
        base = int(ends[start - 1]) if start else 0
        stop = max(int(torch.searchsorted(ends, base + max_candidates, right=True)), start + 1)
        n = counts[start:stop]
        local = torch.repeat_interleave(torch.arange(stop - start), n)  # candidate -> face of the chunk
        offset = torch.arange(local.numel()) - (ends[start:stop] - base - n)[local]
        face = ids[start:stop][local]
        row = table.index_select(1, face)
        cols = row[8].long()
        px = row[6].long() + offset % cols
        py = row[7].long() + offset // cols
        weights = _edge_weights(row[:6], px + 0.5, py + 0.5)
        inside = (weights >= -EDGE_EPS).all(1)
        if depth is None:
            key = face
        else:
            _, z = _perspective(weights, row[9:12])
            # Positive float32 bit patterns sort like the floats: depth in the high word, face in the low.
            key = (z.clamp_min(0).view(torch.int32).long() << 32) | face
        keys.scatter_reduce_(0, py * width + px, torch.where(inside, key, NO_FACE), "amin")
        start = stop

    pixels = (keys != NO_FACE).nonzero().squeeze(1)
    face_of_pixel = torch.full((height * width,), -1, dtype=torch.int64)
    barycentric = torch.zeros(height * width, 3)
    depth_of_pixel = torch.full((height * width,), torch.inf if depth is not None else 0.0)
    if pixels.numel():
        f = keys[pixels] & 0xFFFFFFFF
        face_of_pixel[pixels] = f
        row = table.index_select(1, f)
        weights = _edge_weights(row[:6], (pixels % width) + 0.5, (pixels // width) + 0.5)
        if depth is not None:
            weights, z = _perspective(weights, row[9:12])
            depth_of_pixel[pixels] = z
        weights = weights.clamp(0, 1)
        barycentric[pixels] = weights / weights.sum(1, keepdim=True).clamp_min(1e-12)
    return Fragments(
        face=face_of_pixel.view(height, width),
        barycentric=barycentric.view(height, width, 3),
        depth=depth_of_pixel.view(height, width),
    )


def project(points: Tensor, cameras: Cameras, view: int) -> tuple[Tensor, Tensor]:
    """World points (V, 3) -> pixel positions (V, 2) in `rasterize`'s convention and depth along the view
    axis (V,), for camera `view`. The inverse of `rays.camera_rays`: a point on the ray through a pixel's
    centre lands on that centre."""
    c2w = cameras.c2w[view].float()
    local = (points.float() - c2w[:3, 3]) @ c2w[:3, :3]  # camera axes: x right, y up, looking down -z
    depth = -local[:, 2]
    f = float(cameras.focal_px[view])
    safe = depth.clamp_min(1e-9)
    x = f * local[:, 0] / safe + cameras.width / 2
    y = -f * local[:, 1] / safe + cameras.height / 2
    return torch.stack([x, y], -1), depth
