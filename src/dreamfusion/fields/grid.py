"""A field sampled on a cubic grid: what export (marching cubes) and evaluation (IoU) both start from."""

from __future__ import annotations

import torch
from torch import Tensor

from dreamfusion.fields.base import Field

# Points per field or SDF call: bounds memory at 128^3 = 2.1M grid points.
CHUNK = 65536


def grid_points(resolution: int, bound: float) -> Tensor:
    """(R, R, R, 3) centres of the R^3 cubic cells that tile [-bound, bound]^3, indexed [x, y, z]."""
    if resolution < 1 or bound <= 0:
        raise ValueError(f"need resolution >= 1 and bound > 0, got {resolution}, {bound}")
    cell = 2.0 * bound / resolution
    axis = -bound + (torch.arange(resolution, dtype=torch.float32) + 0.5) * cell
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)


@torch.no_grad()
def density_grid(field: Field, resolution: int, bound: float, chunk: int = CHUNK) -> Tensor:
    """(R, R, R) density at the cell centres of `grid_points(resolution, bound)`, on the CPU.

    Density is what the renderer sees: zero outside the field's bounding sphere, where no ray is sampled.
    """
    device = next(field.parameters(), torch.empty(0)).device
    points = grid_points(resolution, bound).reshape(-1, 3)
    density = torch.zeros(points.shape[0])
    inside = (points.norm(dim=-1) <= field.bound).nonzero().squeeze(1)
    for start in range(0, inside.numel(), chunk):
        rows = inside[start : start + chunk]
        density[rows] = field.density(points[rows].to(device)).float().cpu()
    return density.view(resolution, resolution, resolution)
