"""Multiresolution hash-grid field (Instant-NGP, Mueller et al. 2022) in plain PyTorch, behind `Field`.

This is the representation GPU users of stable-dreamfusion and threestudio know; no CUDA extension is needed,
so the same code runs on a CPU and on CUDA. Each of L levels is a grid of resolution R_l (geometric from
`hash_base_resolution` to `hash_max_resolution`). A point's feature at a level is the trilinear interpolation of
the 8 surrounding vertices' F-vectors, read from that level's table of T = 2^hash_log2_table_size entries:
- coarse levels whose grid fits the table are indexed densely (no collisions),
- finer levels hash the vertex: (x * 1) xor (y * 2654435761) xor (z * 805459861) mod T (Instant-NGP sec. 3).
The L*F features go through a one-hidden-layer MLP to the density pre-activation (plus the App. A.2 blob)
and three albedo logits, exactly as `TriplaneField`.

Layout, chosen by measurement on a 2-core CPU: the table is (F, L*T) and every per-point tensor keeps the
points innermost, (..., L, N). Gathers then read one row per feature, the corner index arithmetic and the
interpolation are broadcasts over leading dimensions (vectorised), and level-major order keeps each level's
table slice hot in cache. The MLP runs on (channels, N) too, so no transpose is needed until the outputs.

Normals are the negative normalised density gradient (paper sec. 3.1), computed analytically: the derivative
of trilinear interpolation along an axis is the difference of the two faces, bilinearly interpolated, times
R_l / (2 bound); it is pushed through the MLP by the chain rule. That needs only a first-order backward pass.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dreamfusion.field import (
    Field,
    FieldConfig,
    FieldOutput,
    blob_preactivation,
    blob_preactivation_gradient,
    density_activation,
    init_linear,
)

# Instant-NGP's hash primes, one per axis (the first is 1 so neighbouring x stay in one cache line).
HASH_PRIMES = (1, 2654435761, 805459861)
TABLE_INIT_RANGE = 1e-4  # uniform(-1e-4, 1e-4), Instant-NGP sec. 4


def level_resolutions(levels: int, base: int, finest: int) -> list[int]:
    """R_l = floor(base * b^l) with b = (finest / base)^(1 / (levels - 1)) (Instant-NGP eq. 2-3)."""
    if levels == 1:
        return [base]
    growth = math.exp((math.log(finest) - math.log(base)) / (levels - 1))
    # The epsilon keeps floor() from dropping an exact resolution to rounding error (base * b^(L-1) = finest).
    return [math.floor(base * growth**level + 1e-6) for level in range(levels)]


def level_multipliers(resolutions: list[int], log2_table_size: int) -> Tensor:
    """(3, L) integer multipliers m such that a vertex's slot is (x m_x) xor (y m_y) xor (z m_z) mod T.

    Dense levels use m = (1, 2^b, 2^2b) with 2^b >= R + 1 vertices per axis: the three products occupy disjoint
    bit ranges, so xor equals the sum and the slot is a plain row-major index with power-of-two strides. That
    lets dense and hashed levels share one code path. A level is dense when 2^3b <= T.
    Hashed levels use the primes reduced mod T: only the low log2(T) bits of each product survive the mod,
    and reducing first keeps every product far inside int64.
    """
    table_size = 2**log2_table_size
    columns = []
    for resolution in resolutions:
        bits = math.ceil(math.log2(resolution + 1))
        if 3 * bits <= log2_table_size:
            columns.append((1, 2**bits, 2 ** (2 * bits)))
        else:
            columns.append(tuple(p % table_size for p in HASH_PRIMES))
    return torch.tensor(columns, dtype=torch.int64).T


class HashGridField(Field):
    """L hash-grid levels of F features each, concatenated, then a one-hidden-layer SiLU MLP."""

    def __init__(self, config: FieldConfig, generator: torch.Generator | None = None):
        super().__init__()
        self.config = config
        self.bound = config.bound
        levels, features = config.hash_levels, config.hash_features_per_level
        self.table_size = 2**config.hash_log2_table_size
        resolutions = level_resolutions(levels, config.hash_base_resolution, config.hash_max_resolution)
        self.resolutions = resolutions
        # Per-level constants, shaped (L, 1) / (3, L, 1) to broadcast against (..., L, N).
        self.register_buffer("_resolution", torch.tensor(resolutions, dtype=torch.float32)[:, None], False)
        multipliers = level_multipliers(resolutions, config.hash_log2_table_size)
        self.register_buffer("_multiplier", multipliers[:, :, None], False)
        offsets = torch.arange(levels, dtype=torch.int64) * self.table_size
        self.register_buffer("_level_offset", offsets[:, None], False)

        table = torch.empty(features, levels * self.table_size)
        table.uniform_(-TABLE_INIT_RANGE, TABLE_INIT_RANGE, generator=generator)
        self.table = nn.Parameter(table)  # (F, L*T): level l owns columns [l*T, (l+1)*T)
        self.hidden = nn.Linear(levels * features, config.hidden_width)
        self.out = nn.Linear(config.hidden_width, 4)  # density pre-activation + 3 albedo logits
        init_linear(self.hidden, generator)
        init_linear(self.out, generator)

    # -- encoding -----------------------------------------------------------------------------------------
    def _corners(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Table columns of the 8 cell corners, (2, 2, 2, L, N) int64 indexed by (x, y, z) corner bit, and
        the position inside the cell, (3, L, N) in [0, 1], differentiable in the points."""
        unit = ((points / self.bound + 1) * 0.5).clamp(0, 1)  # the cube [-bound, bound]^3 -> [0, 1]^3
        position = unit.T[:, None, :] * self._resolution  # (3, L, N) in vertex units
        # The last cell is closed so a point on the far face interpolates inside the grid.
        cell = position.detach().floor().clamp(max=self._resolution - 1)
        fraction = position - cell
        scaled = cell.long() * self._multiplier
        mask = self.table_size - 1
        low = scaled & mask
        high = (scaled + self._multiplier) & mask
        # Put the level offset into the x term once; the y and z terms are below T, so xor cannot reach it.
        low[0] |= self._level_offset
        high[0] |= self._level_offset
        xy = torch.stack([low[0] ^ low[1], low[0] ^ high[1], high[0] ^ low[1], high[0] ^ high[1]])
        corners = torch.stack([xy ^ low[2], xy ^ high[2]], 1)  # (4, 2, L, N)
        return corners.view(2, 2, 2, *corners.shape[2:]), fraction

    def _encode(self, points: Tensor, with_jacobian: bool) -> tuple[Tensor, Tensor | None]:
        """Features (L*F, N) and, if asked, their derivative with respect to the points, (3, L*F, N)."""
        corners, fraction = self._corners(points)
        features = self.table.shape[0]
        flat = corners.view(1, -1).expand(features, -1)
        values = torch.gather(self.table, 1, flat).view(features, *corners.shape)  # (F, 2, 2, 2, L, N)
        fx, fy, fz = fraction
        # Trilinear interpolation as three lerps, z then y then x (each halves the corner count).
        v0, v1 = values.unbind(3)
        along_z = torch.lerp(v0, v1, fz)  # (F, 2, 2, L, N)
        along_yz = torch.lerp(along_z[:, :, 0], along_z[:, :, 1], fy)  # (F, 2, L, N)
        encoded = torch.lerp(along_yz[:, 0], along_yz[:, 1], fx)  # (F, L, N)
        n = points.shape[0]
        if not with_jacobian:
            return encoded.reshape(-1, n), None
        # d/dz: the z-difference of the two faces, bilinear in (x, y); likewise for y and x.
        dz = v1 - v0
        dz = torch.lerp(dz[:, :, 0], dz[:, :, 1], fy)
        dz = torch.lerp(dz[:, 0], dz[:, 1], fx)
        dy = along_z[:, :, 1] - along_z[:, :, 0]
        dy = torch.lerp(dy[:, 0], dy[:, 1], fx)
        dx = along_yz[:, 1] - along_yz[:, 0]
        per_unit_length = self._resolution * (0.5 / self.bound)  # d(vertex units) / d(world units), (L, 1)
        jacobian = torch.stack([dx, dy, dz]) * per_unit_length  # (3, F, L, N)
        return encoded.reshape(-1, n), jacobian.reshape(3, -1, n)

    # -- public -------------------------------------------------------------------------------------------
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"grid": [self.table], "mlp": [*self.hidden.parameters(), *self.out.parameters()]}

    def forward(self, points: Tensor, with_normals: bool = False) -> FieldOutput:
        encoded, jacobian = self._encode(points, with_normals)
        # The MLP runs on (channels, N): weight @ x, matching the encoding's layout.
        pre_hidden = self.hidden.weight @ encoded + self.hidden.bias[:, None]  # (H, N)
        out = self.out.weight @ F.silu(pre_hidden) + self.out.bias[:, None]  # (4, N)
        cfg = self.config
        pre_density = out[0] + blob_preactivation(points, cfg.blob_strength, cfg.blob_radius)
        normals = None
        if jacobian is not None:
            # Reverse mode through the MLP: d pre_density / d features, (L*F, N), then contract with the
            # (3, L*F, N) feature Jacobian. Cheaper than pushing three tangents through the hidden layer.
            sig = torch.sigmoid(pre_hidden)
            silu_slope = sig * (1 + pre_hidden * (1 - sig))  # d silu(h) / dh
            d_features = self.hidden.weight.T @ (self.out.weight[0, :, None] * silu_slope)
            d_pre = (jacobian * d_features).sum(1)  # (3, N)
            d_pre = d_pre.T + blob_preactivation_gradient(points, cfg.blob_strength, cfg.blob_radius)
            # exp is monotone, so grad(density) points along grad(pre-activation).
            normals = -F.normalize(d_pre, dim=-1, eps=1e-12)
        return FieldOutput(density=density_activation(pre_density), albedo=torch.sigmoid(out[1:].T), normals=normals)

    def density(self, points: Tensor) -> Tensor:
        encoded, _ = self._encode(points, with_jacobian=False)
        pre_hidden = self.hidden.weight @ encoded + self.hidden.bias[:, None]
        pre_density = self.out.weight[0] @ F.silu(pre_hidden) + self.out.bias[0]
        cfg = self.config
        return density_activation(pre_density + blob_preactivation(points, cfg.blob_strength, cfg.blob_radius))
