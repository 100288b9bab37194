"""The optional second stage (Magic3D's coarse-to-fine idea, Lin et al. 2023): after the NeRF steps, the
field's surface is extracted as a mesh (`fields.mesh.extract_mesh`, the mesh export would write) and its
vertices are optimised with the same guidance, rendered by the differentiable rasteriser (`render`).

What is optimised is an offset per vertex; the field is frozen and still gives the colour (its albedo at the
surface point). A uniform Laplacian term on the vertices keeps the surface smooth, which is the point: the
textureless renders of a mesh have no low-density haze for the prior to paint normals into. The run's asset
is then this mesh: export writes it and eval scores it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import trimesh
from torch import Tensor, nn


@dataclass(frozen=True)
class RefineConfig:
    """`refine`: the mesh stage. Off (0 steps) in every preset until it measures better."""

    steps: int = 0  # after train.steps; 0: no mesh stage, the field is the asset
    lr: float = 1e-3  # Adam, on the vertex offsets (world units), cosine-decayed to lr_end_ratio
    lr_end_ratio: float = 0.1
    laplacian_weight: float = 10.0  # on the mean squared uniform Laplacian of the vertices, per cell^2
    # On the mean squared offset from the extracted surface, per cell^2: the renders give no gradient to
    # the silhouette, so this is what keeps the outline where the NeRF steps put it.
    anchor_weight: float = 0.0
    supersample: int = 2  # rasterised samples per pixel and axis

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if min(self.lr, self.laplacian_weight, self.anchor_weight) < 0 or not 0 <= self.lr_end_ratio <= 1:
            raise ValueError("lr, laplacian_weight and anchor_weight must be >= 0 and lr_end_ratio in [0, 1]")
        if not 1 <= self.supersample <= 4:
            raise ValueError(f"supersample must be in [1, 4], got {self.supersample}")


def unique_edges(faces: Tensor) -> Tensor:
    """(E, 2) the mesh's edges, each once, smaller index first."""
    edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).sort(1).values
    return torch.unique(edges, dim=0)


def uniform_laplacian(vertices: Tensor, edges: Tensor) -> Tensor:
    """(V, 3) each vertex minus the mean of its neighbours (zero on a flat, evenly meshed patch)."""
    a, b = edges[:, 0], edges[:, 1]
    total = torch.zeros_like(vertices).index_add(0, a, vertices[b]).index_add(0, b, vertices[a])
    degree = torch.zeros(vertices.shape[0], dtype=vertices.dtype).index_add(
        0, edges.reshape(-1), torch.ones(edges.numel(), dtype=vertices.dtype)
    )
    return vertices - total / degree.clamp_min(1)[:, None]


class RefinedMesh(nn.Module):
    """The mesh being refined: fixed start vertices and faces, a trainable offset per vertex."""

    def __init__(self, vertices: Tensor, faces: Tensor, cell: float, level: float):
        super().__init__()
        self.register_buffer("start", vertices.float().clone())
        self.register_buffer("faces", faces.long().clone())
        self.register_buffer("cell", torch.tensor(float(cell)))  # of the grid it was extracted from
        self.register_buffer("level", torch.tensor(float(level)))  # the iso density it was extracted at
        self.offsets = nn.Parameter(torch.zeros_like(self.start))
        self.register_buffer("edges", unique_edges(self.faces), persistent=False)

    @classmethod
    def from_trimesh(cls, mesh: trimesh.Trimesh, cell: float, level: float) -> RefinedMesh:
        return cls(torch.from_numpy(mesh.vertices), torch.from_numpy(mesh.faces), cell, level)

    @classmethod
    def from_state(cls, state: dict[str, Tensor]) -> RefinedMesh:
        mesh = cls(state["start"], state["faces"], float(state["cell"]), float(state["level"]))
        mesh.load_state_dict(state)
        return mesh

    @property
    def vertices(self) -> Tensor:
        return self.start + self.offsets

    def smoothness(self) -> Tensor:
        """Mean squared Laplacian in cells^2, so the weight does not depend on the grid's resolution."""
        return uniform_laplacian(self.vertices, self.edges).square().sum(-1).mean() / self.cell.square()

    def displacement(self) -> Tensor:
        """Mean squared offset from the start, in cells^2."""
        return self.offsets.square().sum(-1).mean() / self.cell.square()

    def to_trimesh(self) -> trimesh.Trimesh:
        vertices = self.vertices.detach().cpu().double().numpy()
        return trimesh.Trimesh(vertices, self.faces.cpu().numpy(), process=False)
