"""The default field: three axis-aligned feature planes read with `grid_sample`, summed per point, then a
small MLP. Chosen by measurement on a 2-core CPU (benchmarks/bench_field.py).

Its normals come from the analytic derivative of bilinear interpolation, pushed forward through the MLP, so it
needs only a first-order backward pass. Measured against a double backward through `grid_sample` the gain is
modest (1.1-1.3x per step on this CPU), but it also needs less memory and no double-backward support.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dreamfusion.fields.base import (
    Field,
    FieldOutput,
    blob_preactivation,
    blob_preactivation_gradient,
    density_activation,
    init_linear,
)

if TYPE_CHECKING:
    from dreamfusion.fields import FieldConfig


@dataclass(frozen=True)
class TriplaneConfig:
    """`field.triplane`: the planes' size."""

    resolution: int = 64  # texels per side
    channels: int = 16
    init_std: float = 0.1  # the planes start as Gaussian noise of this deviation

    def __post_init__(self) -> None:
        if self.resolution < 4:
            raise ValueError(f"resolution must be >= 4, got {self.resolution}")
        if self.channels <= 0:
            raise ValueError(f"channels must be > 0, got {self.channels}")
        if self.init_std < 0:
            raise ValueError(f"init_std must be >= 0, got {self.init_std}")

    def build(self, config: FieldConfig, generator: torch.Generator | None) -> Field:
        return TriplaneField(config, generator)


class TriplaneField(Field):
    """Three feature planes (xy, xz, yz), each (C, R, R), summed per point, then a one-hidden-layer MLP that
    outputs the density pre-activation and albedo logits.
    """

    PLANE_AXES = ((0, 1), (0, 2), (1, 2))

    def __init__(
        self,
        config: FieldConfig,
        generator: torch.Generator | None = None,
        planes: TriplaneConfig | None = None,
    ):
        super().__init__()
        self.config = config
        self.plane_config = planes = planes or config.triplane  # another field kind may bring its own
        self.bound = config.bound
        c, r, h = planes.channels, planes.resolution, config.hidden_width
        self.planes = nn.Parameter(planes.init_std * torch.randn(3, c, r, r, generator=generator))
        self.hidden = nn.Linear(c, h)
        self.out = nn.Linear(h, 4)  # density pre-activation + 3 albedo logits
        init_linear(self.hidden, generator)
        init_linear(self.out, generator)

    # -- features -----------------------------------------------------------------------------------------
    def _grid(self, points: Tensor) -> Tensor:
        """(3, 1, N, 2) normalised plane coordinates for grid_sample (x indexes width, y height)."""
        u = points / self.bound
        return torch.stack([u[:, list(axes)] for axes in self.PLANE_AXES]).unsqueeze(1)

    def _features(self, points: Tensor) -> Tensor:
        sampled = F.grid_sample(self.planes, self._grid(points), mode="bilinear", align_corners=True)
        return sampled.sum(0)[:, 0].transpose(0, 1)  # (N, C)

    def _feature_jacobian(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """d features / d points, exact for bilinear interpolation, as six plane-axis derivatives (6, C, N)
        and the (6, 3) matrix that sums them into the three point axes: J[n, a, c] = sum_k D[k, c, n] M[k, a].

        Along one plane axis the bilinear interpolant is linear inside a cell, so its derivative is the
        difference of neighbouring texels (times texels per unit length), interpolated along the other axis.
        That is a grid_sample of the difference plane at the cell's left node: first-order differentiable
        in the planes, no double backward needed. All six difference planes go through one grid_sample.
        """
        r = self.plane_config.resolution
        u = (points / self.bound).detach()
        # Cell index along each axis, and the coordinate of its left node on an r-texel grid.
        cell = ((u + 1) * 0.5 * (r - 1)).floor().clamp(0, r - 2)
        node = cell / (r - 1) * 2 - 1
        planes = self.planes
        diff_w = F.pad(
            planes[:, :, :, 1:] - planes[:, :, :, :-1], (0, 1)
        )  # d/d(first axis), zero last column
        diff_h = F.pad(planes[:, :, 1:, :] - planes[:, :, :-1, :], (0, 0, 0, 1))  # d/d(second axis)
        grids, axes = [], []
        for a, b in self.PLANE_AXES:
            grids.append(torch.stack([node[:, a], u[:, b]], -1))  # derivative along a: snap a, lerp b
            grids.append(torch.stack([u[:, a], node[:, b]], -1))  # derivative along b: lerp a, snap b
            axes += [a, b]
        diffs = torch.stack([d for p in range(3) for d in (diff_w[p], diff_h[p])])  # (6, C, r, r)
        sampled = F.grid_sample(diffs, torch.stack(grids).unsqueeze(1), mode="bilinear", align_corners=True)
        scale = (r - 1) / (2.0 * self.bound)  # texels per unit length
        # Sum the six derivatives into the three axes with one small matmul: summing indexed slices
        # instead made autograd fill a zeroed (6, N, C) tensor per slice, the largest cost of a CPU step.
        to_axis = F.one_hot(torch.tensor(axes, device=points.device), 3).to(sampled.dtype) * scale  # (6, 3)
        return sampled[:, :, 0], to_axis  # (6, C, N), (6, 3)

    # -- public -------------------------------------------------------------------------------------------
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"grid": [self.planes], "mlp": [*self.hidden.parameters(), *self.out.parameters()]}

    def smoothness(self) -> Tensor:
        """Total variation of the planes: the mean squared difference of neighbouring texels. Texels that
        no ray sample reaches get no gradient from the renders, and the normals (derivatives, so 22 times the
        texel differences per unit length at 64 texels) carry their noise; this pulls them toward their
        neighbours."""
        planes = self.planes
        across = (planes[:, :, :, 1:] - planes[:, :, :, :-1]).square().mean()
        down = (planes[:, :, 1:, :] - planes[:, :, :-1, :]).square().mean()
        return across + down

    def detail_resolution(self) -> int:
        return self.plane_config.resolution

    def head(self, points: Tensor, with_gradient: bool = False) -> tuple[Tensor, Tensor | None]:
        """The MLP's (N, 4) output (density pre-activation before the blob, then 3 albedo logits), and with
        `with_gradient` the (N, 3) gradient of its first column with respect to the points."""
        feats = self._features(points)
        pre_hidden = self.hidden(feats)
        out = self.out(F.silu(pre_hidden))
        if not with_gradient:
            return out, None
        # The chain rule through the MLP: d out0 / dx = J (W_h^T (silu'(h) * w_out)), with J = d features /
        # dx (N, 3, C). Contracting the hidden layer first costs N x C x H once, not per axis, and never
        # builds an (N, 3, H) tensor: a third of the work of pushing J forward, forward and backward.
        sig = torch.sigmoid(pre_hidden)
        silu_slope = sig * (1 + pre_hidden * (1 - sig))  # d silu(h) / dh
        d_features = (silu_slope * self.out.weight[0]) @ self.hidden.weight  # (N, C)
        # J @ d_features, contracted over channels first: (6, C, N) x (N, C) -> (6, N), then to the
        # three axes. Contracting J's (N, 3, C) form instead ran N tiny batched matmuls.
        derivatives, to_axis = self._feature_jacobian(points)
        return out, (derivatives * d_features.T).sum(1).T @ to_axis  # (N, 3)

    def forward(self, points: Tensor, with_normals: bool = False) -> FieldOutput:
        out, d_out = self.head(points, with_normals)
        cfg = self.config
        pre_density = out[:, 0] + blob_preactivation(points, cfg.blob_strength, cfg.blob_radius)
        density = density_activation(pre_density)
        albedo = torch.sigmoid(out[:, 1:])
        normals = None
        if d_out is not None:
            d_pre = d_out + blob_preactivation_gradient(points, cfg.blob_strength, cfg.blob_radius)
            # exp is monotone, so grad(density) points along grad(pre-activation).
            normals = -F.normalize(d_pre, dim=-1, eps=1e-12)
        return FieldOutput(density=density, albedo=albedo, normals=normals)

    def density(self, points: Tensor) -> Tensor:
        out, _ = self.head(points)
        cfg = self.config
        return density_activation(out[:, 0] + blob_preactivation(points, cfg.blob_strength, cfg.blob_radius))
