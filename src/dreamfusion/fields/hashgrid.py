"""Multiresolution hash-grid field (Instant-NGP, Mueller et al. 2022) in plain PyTorch, behind `Field`.

This is the representation GPU users of stable-dreamfusion and threestudio know; no CUDA extension is needed,
so the same code runs on a CPU and on CUDA. Each of L levels is a grid of resolution R_l (geometric from
`base_resolution` to `max_resolution` of `field.hashgrid`). A point's feature at a level is the trilinear
interpolation of the 8 surrounding vertices' F-vectors, read from that level's table of T = 2^log2_table_size
entries:
- coarse levels whose grid fits the table are indexed densely (no collisions),
- finer levels hash the vertex: (x * 1) xor (y * 2654435761) xor (z * 805459861) mod T (Instant-NGP sec. 3).
The L*F features go through a one-hidden-layer MLP to the density pre-activation (plus the App. A.2 blob)
and three albedo logits, exactly as `TriplaneField`.

Speed, measured on a 2-core CPU (benchmarks/bench_field.py):
- The table is (F, L*T) and per-point tensors keep the points innermost, (..., L, N): gathers read one row per
  feature, and the index arithmetic and interpolation are broadcasts over leading dimensions (vectorised).
- The encoding is one autograd Function that works through the points in chunks and recomputes the corner
  indices in its backward pass instead of saving them: a chunk's intermediates stay in cache, no N x L x 8
  tensor is ever kept, and the backward writes each gradient once (plain autograd through the lerps of
  corner slices zero-fills a full-size gradient per slice). A training step is 2-3x faster than the same
  maths in plain autograd.
- Normals are the negative normalised density gradient (paper sec. 3.1), computed analytically: along an
  axis, trilinear interpolation changes by the difference of the two faces across it (bilinearly
  interpolated) per cell, i.e. times R_l / (2 bound) per unit length; the MLP is then differentiated in
  reverse mode. Only a first-order backward pass is needed, unlike `autograd_normals` (double backward).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from dreamfusion.fields.base import (
    Field,
    FieldOutput,
    blob_preactivation,
    blob_preactivation_gradient,
    density_activation,
    init_linear,
)

# Instant-NGP's hash primes, one per axis (the first is 1 so neighbouring x stay in one cache line).
HASH_PRIMES = (1, 2654435761, 805459861)
TABLE_INIT_RANGE = 1e-4  # uniform(-1e-4, 1e-4), Instant-NGP sec. 4
# Points per chunk of the encoding on a CPU, measured with 2 threads at 131072 points per step (plain / with
# normals): one chunk 607 / 1063 ms, 16384 324 / 761 ms, 4096 279 / 583 ms. Small chunks keep a chunk's
# corner slots and values in cache, but each chunk runs ~80 small parallel ops, and when other processes
# compete for the cores every one of them waits for a descheduled thread: at a load of 5 from other
# processes, 4096 took 17 s per step, 16384 3 s, one chunk 2 s. 16384 is the compromise. On CUDA one chunk
# covers all points.
CPU_CHUNK_POINTS = 16384


if TYPE_CHECKING:
    from dreamfusion.fields import FieldConfig


@dataclass(frozen=True)
class HashGridConfig:
    """`field.hashgrid`: Instant-NGP's levels and tables (its defaults)."""

    levels: int = 16
    features_per_level: int = 2
    log2_table_size: int = 16
    base_resolution: int = 16
    max_resolution: int = 1024

    def __post_init__(self) -> None:
        for name in ("levels", "features_per_level", "base_resolution"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.max_resolution < self.base_resolution:
            raise ValueError("max_resolution must be >= base_resolution")
        if not 8 <= self.log2_table_size <= 26:
            raise ValueError(f"log2_table_size must be in [8, 26], got {self.log2_table_size}")

    def build(self, config: FieldConfig, generator: torch.Generator | None) -> Field:
        return HashGridField(config, generator)


def level_resolutions(levels: int, base: int, finest: int) -> list[int]:
    """R_l = floor(base * b^l) with b = (finest / base)^(1 / (levels - 1)) (Instant-NGP eq. 2-3)."""
    if levels == 1:
        return [base]
    growth = math.exp((math.log(finest) - math.log(base)) / (levels - 1))
    # The epsilon keeps floor() from dropping an exact resolution to rounding error (base * b^(L-1) = finest).
    return [math.floor(base * growth**level + 1e-6) for level in range(levels)]


def level_multipliers(resolutions: list[int], log2_table_size: int) -> Tensor:
    """(3, L) integer multipliers m such that a vertex's slot is (x m_x) xor (y m_y) xor (z m_z) mod T.

    Dense levels use m = (1, 2^b, 2^2b) with 2^b >= R + 1 vertices per axis: the three products occupy
    disjoint bit ranges, so xor equals the sum and the slot is a plain row-major index with power-of-two
    strides. That lets dense and hashed levels share one code path. A level is dense when 2^3b <= T.
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
        grid = config.hashgrid
        levels, features = grid.levels, grid.features_per_level
        self.table_size = 2**grid.log2_table_size
        self.resolutions = level_resolutions(levels, grid.base_resolution, grid.max_resolution)
        # Per-level constants, shaped (L, 1) / (3, L, 1) to broadcast against (..., L, N).
        resolution = torch.tensor(self.resolutions, dtype=torch.float32)[:, None]
        self.register_buffer("_resolution", resolution, persistent=False)
        multiplier = level_multipliers(self.resolutions, grid.log2_table_size)[:, :, None]
        self.register_buffer("_multiplier", multiplier, persistent=False)
        level_offset = torch.arange(levels, dtype=torch.int64)[:, None] * self.table_size
        self.register_buffer("_level_offset", level_offset, persistent=False)

        table = torch.empty(features, levels * self.table_size)
        table.uniform_(-TABLE_INIT_RANGE, TABLE_INIT_RANGE, generator=generator)
        self.table = nn.Parameter(table)  # (F, L*T): level l owns columns [l*T, (l+1)*T)
        self.hidden = nn.Linear(levels * features, config.hidden_width)
        self.out = nn.Linear(config.hidden_width, 4)  # density pre-activation + 3 albedo logits
        init_linear(self.hidden, generator)
        init_linear(self.out, generator)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"grid": [self.table], "mlp": [*self.hidden.parameters(), *self.out.parameters()]}

    def detail_resolution(self) -> int:
        return self.resolutions[-1]

    def _encode(self, points: Tensor, with_derivative: bool) -> tuple[Tensor, Tensor | None]:
        """Features (F, L, N) and, if asked, their derivative along x, y, z in cells, (3, F, L, N)."""
        unit = ((points / self.bound + 1) * 0.5).clamp(0, 1)  # the cube [-bound, bound]^3 -> [0, 1]^3
        grid = _Grid(self._resolution, self._multiplier, self._level_offset, self.table_size)
        chunk = CPU_CHUNK_POINTS if points.device.type == "cpu" else max(points.shape[0], 1)
        if not (with_derivative or unit.requires_grad):
            return _HashEncoding.apply(self.table, unit.detach(), grid, False, chunk), None
        encoded, derivative = _HashEncoding.apply(self.table, unit.detach(), grid, True, chunk)
        if unit.requires_grad:
            # The encoding treats the points as constants. This term is zero in value, but its gradient with
            # respect to the in-cell position is the derivative: it restores exact first derivatives with
            # respect to the points (for autograd_normals and any caller that needs them).
            _, fraction = _cell_and_fraction(unit, self._resolution)
            encoded = encoded + ((fraction - fraction.detach())[:, None] * derivative).sum(0)
        return encoded, derivative

    def forward(self, points: Tensor, with_normals: bool = False) -> FieldOutput:
        encoded, derivative = self._encode(points, with_normals)
        # The MLP runs on (channels, N), weight @ x, matching the encoding's layout.
        pre_hidden = self.hidden.weight @ encoded.flatten(0, 1) + self.hidden.bias[:, None]
        hidden = F.silu(pre_hidden)  # (H, N)
        out = self.out.weight @ hidden + self.out.bias[:, None]  # (4, N)
        cfg = self.config
        pre_density = out[0] + blob_preactivation(points, cfg.blob_strength, cfg.blob_radius)
        normals = None
        if with_normals:
            # Reverse mode through the MLP gives d pre_density / d features, (F, L, N), with one matmul;
            # contracting it with the feature derivative is cheaper than pushing three tangents forward.
            sig = torch.sigmoid(pre_hidden)
            silu_slope = torch.addcmul(sig, hidden, 1 - sig)  # silu'(h) = sig(h) + silu(h) (1 - sig(h))
            # The density row of the output layer scales the small weight matrix, not an (H, N) tensor.
            d_features = (self.hidden.weight.T * self.out.weight[0]) @ silu_slope
            # Cells per unit length, R_l / (2 bound), turns the derivative per cell into one per unit length.
            d_features = d_features.view(encoded.shape) * (self._resolution * (0.5 / self.bound))
            d_pre = (derivative * d_features).sum((1, 2)).T  # (N, 3)
            d_pre = d_pre + blob_preactivation_gradient(points, cfg.blob_strength, cfg.blob_radius)
            # exp is monotone, so grad(density) points along grad(pre-activation).
            normals = -F.normalize(d_pre, dim=-1, eps=1e-12)
        albedo = torch.sigmoid(out[1:].T)
        return FieldOutput(density=density_activation(pre_density), albedo=albedo, normals=normals)

    def density(self, points: Tensor) -> Tensor:
        encoded, _ = self._encode(points, with_derivative=False)
        pre_hidden = self.hidden.weight @ encoded.flatten(0, 1) + self.hidden.bias[:, None]
        pre_density = self.out.weight[0] @ F.silu(pre_hidden) + self.out.bias[0]
        blob = blob_preactivation(points, self.config.blob_strength, self.config.blob_radius)
        return density_activation(pre_density + blob)


# -- the encoding ------------------------------------------------------------------------------------------
class _Grid(NamedTuple):
    resolution: Tensor  # (L, 1) float, cells per axis
    multiplier: Tensor  # (3, L, 1) int64, see level_multipliers
    level_offset: Tensor  # (L, 1) int64, first table column of each level
    table_size: int  # T, a power of two


def _cell_and_fraction(unit: Tensor, resolution: Tensor) -> tuple[Tensor, Tensor]:
    """Cell of each point at each level, (3, L, N) float (whole numbers), and the position inside it in
    [0, 1], (3, L, N), differentiable in `unit` (N, 3)."""
    # Transposed to (3, N) first: elementwise ops keep their input's strides, and points must be innermost.
    position = unit.T.contiguous()[:, None, :] * resolution
    # The last cell is closed so a point on the far face interpolates inside the grid.
    cell = position.detach().floor().clamp(max=resolution - 1)
    return cell, position - cell


def _corner_slots(cell: Tensor, grid: _Grid) -> Tensor:
    """Table columns of the 8 corners of each cell, (2, 2, 2, L, N) int64 by (x, y, z) corner bit."""
    scaled = cell.long() * grid.multiplier
    mask = grid.table_size - 1
    low = scaled & mask
    high = (scaled + grid.multiplier) & mask
    # Put the level offset into the x term once; the y and z terms are below T, so xor cannot reach it.
    low[0] |= grid.level_offset
    high[0] |= grid.level_offset
    # Written slice by slice into one tensor: stacking broadcast xors costs an extra full-size copy.
    slots = torch.empty((2, 2, 2, *cell.shape[1:]), dtype=torch.int64, device=cell.device)
    for i, x_term in enumerate((low[0], high[0])):
        for j, y_term in enumerate((low[1], high[1])):
            xy = x_term ^ y_term
            torch.bitwise_xor(xy, low[2], out=slots[i, j, 0])
            torch.bitwise_xor(xy, high[2], out=slots[i, j, 1])
    return slots


def _interpolate(values: Tensor, fraction: Tensor, encoded: Tensor, derivative: Tensor | None) -> None:
    """Trilinear interpolation of corner values (F, 2, 2, 2, L, n) as three lerps (z, y, x), written into
    `encoded` (F, L, n), and, if given, its derivative along x, y, z per cell into `derivative` (3, F, L, n).
    Writing into the callers' slices saves a full-size copy of each output."""
    fx, fy, fz = fraction
    v0, v1 = values.unbind(3)  # the z = 0 and z = 1 faces
    along_z = torch.lerp(v0, v1, fz)  # (F, 2, 2, L, n) by (x, y)
    along_yz = torch.lerp(along_z[:, :, 0], along_z[:, :, 1], fy)  # (F, 2, L, n) by x
    torch.lerp(along_yz[:, 0], along_yz[:, 1], fx, out=encoded)
    if derivative is None:
        return
    # Linear along each axis inside a cell: the derivative along an axis is the difference of the two faces
    # across it, interpolated along the other two axes.
    torch.sub(along_yz[:, 1], along_yz[:, 0], out=derivative[0])
    dy = along_z[:, :, 1] - along_z[:, :, 0]  # (F, 2, L, n) by x
    torch.lerp(dy[:, 0], dy[:, 1], fx, out=derivative[1])
    dz = v1 - v0
    dz = torch.lerp(dz[:, :, 0], dz[:, :, 1], fy)
    torch.lerp(dz[:, 0], dz[:, 1], fx, out=derivative[2])


def _interpolate_backward(
    grad_encoded: Tensor | None, grad_derivative: Tensor | None, fraction: Tensor
) -> Tensor:
    """Gradient of `_interpolate` with respect to the corner values, (F, 2, 2, 2, L, n).

    Undoes the x lerp, then y, then z, writing each gradient once (autograd through the slices would build a
    zero-filled full-size gradient per slice and add them). A derivative output (upper face - lower face)
    sends +grad to the upper and -grad to the lower face at its own axis's stage, and is weighted like a
    value at the other stages.
    """
    wx, wy, wz = (torch.stack([1 - f, f]) for f in fraction)  # (2, L, n) lerp weights per axis
    if grad_encoded is None:
        features = grad_derivative.shape[1]
        grad_x = wx.new_zeros(features, *wx.shape)
    else:
        grad_x = grad_encoded[:, None] * wx  # (F, 2, L, n)
    if grad_derivative is not None:
        grad_dx, grad_dy, grad_dz = grad_derivative
        grad_x[:, 0] -= grad_dx
        grad_x[:, 1] += grad_dx
    grad_xy = grad_x[:, :, None] * wy  # (F, 2, 2, L, n)
    if grad_derivative is not None:
        spread = grad_dy[:, None] * wx
        grad_xy[:, :, 0] -= spread
        grad_xy[:, :, 1] += spread
    grad_values = grad_xy[:, :, :, None] * wz  # (F, 2, 2, 2, L, n)
    if grad_derivative is not None:
        spread = (grad_dz[:, None] * wx)[:, :, None] * wy
        grad_values[:, :, :, 0] -= spread
        grad_values[:, :, :, 1] += spread
    return grad_values


class _HashEncoding(torch.autograd.Function):
    """table (F, L*T), unit (N, 3) in [0, 1] (a constant) -> features (F, L, N) [, derivative (3, F, L, N)].

    Works through the points `chunk` at a time and recomputes the corner slots in backward rather than
    saving them (see the module docstring). First-order only: `_encode` supplies the point gradient.
    """

    @staticmethod
    def forward(ctx, table: Tensor, unit: Tensor, grid: _Grid, with_derivative: bool, chunk: int):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(unit)
        ctx.grid, ctx.chunk, ctx.table_shape, ctx.table_dtype = grid, chunk, table.shape, table.dtype
        features, n = table.shape[0], unit.shape[0]
        encoded = table.new_empty(features, grid.resolution.shape[0], n)
        derivative = table.new_empty(3, *encoded.shape) if with_derivative else None
        for start in range(0, n, chunk):
            part = slice(start, start + chunk)
            cell, fraction = _cell_and_fraction(unit[part], grid.resolution)
            slots = _corner_slots(cell, grid)
            values = torch.gather(table, 1, slots.view(1, -1).expand(features, -1))
            part_derivative = None if derivative is None else derivative[..., part]
            _interpolate(values.view(features, *slots.shape), fraction, encoded[..., part], part_derivative)
        return encoded if derivative is None else (encoded, derivative)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_encoded: Tensor | None, grad_derivative: Tensor | None = None):
        (unit,) = ctx.saved_tensors
        if grad_encoded is None and grad_derivative is None:
            return None, None, None, None, None
        grid, chunk = ctx.grid, ctx.chunk
        grad_table = unit.new_zeros(ctx.table_shape, dtype=ctx.table_dtype)
        features = grad_table.shape[0]
        for start in range(0, unit.shape[0], chunk):
            part = slice(start, start + chunk)
            cell, fraction = _cell_and_fraction(unit[part], grid.resolution)
            grad_values = _interpolate_backward(
                None if grad_encoded is None else grad_encoded[..., part],
                None if grad_derivative is None else grad_derivative[..., part],
                fraction,
            )
            slots = _corner_slots(cell, grid)
            grad_table.scatter_add_(1, slots.view(1, -1).expand(features, -1), grad_values.view(features, -1))
        return grad_table, None, None, None, None
