"""A triplane field whose MLP gives a signed distance, turned into density the VolSDF way (Yariv et al. 2021):
sigma(x) = Psi_beta(-s(x)) / beta, with Psi_beta the CDF of a zero-mean Laplace distribution of scale beta.

Not in the paper, whose field is a plain density (sec. 3.1); `field.kind=sdf` picks it. What it changes:
- Density is 1 / beta inside and falls off over a few beta outside, so the surface is as sharp as beta. Beta
  is learned between `beta_min` and `beta_max` (from `beta_init`): left free, it grew for thin parts (chair
  legs, an arrow, a torus, 0.03-0.04 in 500 fit steps) until nothing was denser than eval's fixed level.
  A density field likewise grows only as dense as its renders need, which leaves it soft over cells.
- Normals are the normalised gradient of s, which the eikonal term (|grad s| - 1)^2 (`loss.eikonal_weight`,
  averaged over the evaluated samples) keeps a distance: smooth, and defined on both sides of the surface.
- The App. A.2 blob becomes the initial shape: s starts as the sphere |x| - `field.blob_radius` plus the
  MLP's small output.

The planes, their features, the MLP and the analytic gradient are `TriplaneField`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dreamfusion.fields.base import Field, FieldOutput
from dreamfusion.fields.triplane import TriplaneConfig, TriplaneField

if TYPE_CHECKING:
    from dreamfusion.fields import FieldConfig


@dataclass(frozen=True)
class SdfConfig:
    """`field.sdf`: the planes (as `field.triplane`'s) and the sharpness of the surface."""

    resolution: int = 64
    channels: int = 16
    init_std: float = 0.1
    beta_init: float = 0.02  # world units over which density falls off, at the start
    beta_min: float = 0.005
    # 1 / 0.025 = 40 inside (times density_scale): denser than eval's fixed level (32), i.e. a surface
    # sharp at 1/128 of the box
    beta_max: float = 0.025
    # Annealing (NeuS's idea, here as a cap): when set, beta's maximum falls from beta_max to this over the
    # NeRF steps, geometrically, so the surface sharpens once the shape has formed.
    beta_max_end: float | None = None
    # VolSDF's alpha in units of 1 / beta: density inside is density_scale / beta. Above 1, a wall is opaque
    # at a thickness the render can sample, without a surface sharper than the samples' spacing.
    density_scale: float = 1.0
    # Shading normals from the analytic gradient of s (None), or from finite differences of s this many
    # texels apart (Neuralangelo's numerical gradient, Li et al. 2023): bilinear planes have a gradient
    # that jumps at every texel edge, which textureless renders show as grain. Four evaluations of s per
    # point, so the renderer takes them only where samples carry weight; the eikonal term keeps the
    # analytic gradient, at every sample.
    normal_texels: float | None = None
    # When set (with normal_texels): the step falls geometrically from normal_texels to this over the NeRF
    # steps, coarse to fine as in Neuralangelo (a wide step smooths, a narrow one keeps thin walls).
    normal_texels_end: float | None = None

    def __post_init__(self) -> None:
        TriplaneConfig(self.resolution, self.channels, self.init_std)  # the same checks
        if self.normal_texels is not None and self.normal_texels <= 0:
            raise ValueError(f"normal_texels must be > 0, got {self.normal_texels}")
        if self.normal_texels_end is not None and not (self.normal_texels and self.normal_texels_end > 0):
            raise ValueError(
                f"normal_texels_end needs normal_texels and must be > 0, got {self.normal_texels_end}"
            )
        if self.density_scale <= 0:
            raise ValueError(f"density_scale must be > 0, got {self.density_scale}")
        if not 0 < self.beta_min < self.beta_init < self.beta_max:
            raise ValueError(
                "need 0 < beta_min < beta_init < beta_max, got "
                f"{self.beta_min}, {self.beta_init} and {self.beta_max}"
            )
        if self.beta_max_end is not None and not self.beta_min < self.beta_max_end <= self.beta_max:
            raise ValueError(
                f"need beta_min < beta_max_end <= beta_max, got {self.beta_min}, {self.beta_max_end} and "
                f"{self.beta_max}"
            )

    def build(self, config: FieldConfig, generator: torch.Generator | None) -> Field:
        return SdfTriplaneField(config, generator)


# corners of a regular tetrahedron centred on the origin, a sqrt(3) from it: sum_k e_k e_k^T = 4 I
TETRAHEDRON = ((1.0, -1.0, -1.0), (-1.0, -1.0, 1.0), (-1.0, 1.0, -1.0), (1.0, 1.0, 1.0))


def laplace_density(sdf: Tensor, beta: Tensor) -> Tensor:
    """VolSDF's density Psi_beta(-s) / beta: 1 / beta deep inside, 1 / (2 beta) on the surface, e^(-s/beta)
    / (2 beta) outside. Written with exp of a non-positive argument on both sides, so it never overflows."""
    half = 0.5 * torch.exp(-sdf.abs() / beta)
    return torch.where(sdf > 0, half, 1.0 - half) / beta


class SdfTriplaneField(TriplaneField):
    def __init__(self, config: FieldConfig, generator: torch.Generator | None = None):
        sdf = config.sdf
        super().__init__(config, generator, TriplaneConfig(sdf.resolution, sdf.channels, sdf.init_std))
        with torch.no_grad():
            self.out.bias[0] = 0.0  # the initial surface is the sphere, shifted only by the planes' noise
        share = (sdf.beta_init - sdf.beta_min) / (sdf.beta_max - sdf.beta_min)
        self.beta_logit = nn.Parameter(torch.tensor(math.log(share / (1 - share))))
        # beta's current maximum: a buffer, so a checkpoint keeps the sharpness its run had reached
        self.register_buffer("beta_cap", torch.tensor(float(sdf.beta_max)))
        # the numerical normals' current step in texels, a buffer for the same reason
        self.register_buffer("normal_step", torch.tensor(float(sdf.normal_texels or 0.0)))

    def beta(self) -> Tensor:
        low = self.config.sdf.beta_min
        return low + (self.beta_cap - low) * torch.sigmoid(self.beta_logit)

    def anneal(self, done: float) -> None:
        """Both schedules are geometric, from their start at done = 0 to their end at done = 1."""
        sdf, done = self.config.sdf, min(max(done, 0.0), 1.0)
        for buffer, start, end in (
            (self.beta_cap, sdf.beta_max, sdf.beta_max_end),
            (self.normal_step, sdf.normal_texels, sdf.normal_texels_end),
        ):
            if end is not None:
                buffer.fill_(start * (end / start) ** done)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints written before beta_cap existed had the fixed cap beta_max (`state_dict` is
        # load_state_dict's own copy, so the caller's dict is left as it was)
        sdf = self.config.sdf
        state_dict.setdefault(prefix + "beta_cap", torch.tensor(float(sdf.beta_max)))
        state_dict.setdefault(prefix + "normal_step", torch.tensor(float(sdf.normal_texels or 0.0)))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def signed_distance(self, points: Tensor, with_gradient: bool = False) -> tuple[Tensor, Tensor | None]:
        out, d_out = self.head(points, with_gradient)
        radius = points.norm(dim=-1, keepdim=True).clamp_min(1e-9)
        sdf = out[:, 0] + radius[:, 0] - self.config.blob_radius
        gradient = None if d_out is None else d_out + points / radius
        return torch.stack([sdf, *out[:, 1:].unbind(-1)], -1), gradient

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        groups = super().parameter_groups()
        # With the planes' learning rate: at the MLP's, beta would barely move in a CPU run's 500 steps.
        return {"grid": [*groups["grid"], self.beta_logit], "mlp": groups["mlp"]}

    def numerical_gradient(self, points: Tensor) -> Tensor:
        """(N, 3) gradient of s from its values at the corners of a regular tetrahedron around each point,
        `normal_step` texels from it (normal_texels, or as far as its annealing has got): sum_k
        e_k s(x + h e_k) / (4 h), exact for a linear s, in four evaluations instead of central differences'
        six."""
        sdf = self.config.sdf
        h = self.normal_step * 2.0 * self.bound / (sdf.resolution - 1) / math.sqrt(3.0)
        corners = points.new_tensor(TETRAHEDRON)  # (4, 3), each of length sqrt(3)
        shifted = (points[None] + h * corners[:, None]).reshape(-1, 3)
        values = self.signed_distance(shifted)[0][:, 0].view(4, -1)  # (4, N)
        return (values.T @ corners) / (4.0 * h)

    def shading_normals(self, points: Tensor) -> Tensor | None:
        if self.config.sdf.normal_texels is None:
            return None
        return F.normalize(self.numerical_gradient(points), dim=-1, eps=1e-12)

    def forward(self, points: Tensor, with_normals: bool = False) -> FieldOutput:
        out, gradient = self.signed_distance(points, with_normals)
        density = self.density_of(out[:, 0])
        albedo = torch.sigmoid(out[:, 1:])
        if gradient is None:
            return FieldOutput(density=density, albedo=albedo, normals=None)
        length = gradient.norm(dim=-1)
        return FieldOutput(
            density=density,
            albedo=albedo,
            normals=F.normalize(gradient, dim=-1, eps=1e-12),
            eikonal=(length - 1.0).square(),
        )

    def density(self, points: Tensor) -> Tensor:
        out, _ = self.signed_distance(points)
        return self.density_of(out[:, 0])

    def density_of(self, sdf: Tensor) -> Tensor:
        """Density at signed distances `sdf`: `laplace_density` times `field.sdf.density_scale`."""
        return laplace_density(sdf, self.beta()) * self.config.sdf.density_scale
