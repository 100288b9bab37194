"""Regularisers on the rendered weights and normals (App. A.2)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class LossConfig:
    # Orientation loss (Ref-NeRF), weight 1e-2, ramped up from 1e-4 over the first 5,000 of 15,000 steps.
    orientation_weight: float = 1e-2
    orientation_weight_start: float = 1e-4
    orientation_ramp_fraction: float = 5000 / 15000
    # Opacity loss sqrt((sum_i w_i)^2 + 0.01) per ray; the paper's useful range is 1e-3 .. 5e-3.
    opacity_weight: float = 1e-3
    # Not in the paper (0 there): the field's own smoothness term (Field.smoothness; for the triplane, the
    # total variation of its planes).
    smoothness_weight: float = 0.0
    # The eikonal term of a field with a signed distance (field.kind=sdf); fields without one ignore it.
    eikonal_weight: float = 0.1
    # Not in the paper (0 there): Mip-NeRF 360's distortion loss, which gathers each ray's weights into as
    # short a stretch as it can, so that a surface is a surface and not a cloud.
    distortion_weight: float = 0.0
    # Not in the paper (0 there): UNISURF's normal smoothness (Oechsle et al. 2021), |n(x) - n(x + e)|^2 at
    # each ray's expected surface point x, with e a random offset of length normal_smoothness_radius (world
    # units; a triplane texel of the default field is 2.8 / 64 = 0.044).
    normal_smoothness_weight: float = 0.0
    normal_smoothness_radius: float = 0.02

    def __post_init__(self) -> None:
        weights = (self.orientation_weight, self.orientation_weight_start, self.opacity_weight)
        others = (self.smoothness_weight, self.eikonal_weight, self.distortion_weight)
        if min(*weights, *others, self.normal_smoothness_weight) < 0:
            raise ValueError("loss weights must be >= 0")
        if self.normal_smoothness_radius <= 0:
            raise ValueError(f"normal_smoothness_radius must be > 0, got {self.normal_smoothness_radius}")


def orientation_loss(weights: Tensor, sample_normals: Tensor, directions: Tensor) -> Tensor:
    """Mean over rays of sum_i stopgrad(w_i) max(0, n_i . d)^2 (Ref-NeRF eq. 10, App. A.2).

    Penalises normals that face away from the camera at points the camera sees.
    weights (..., S), sample_normals (..., S, 3), directions (..., 3).
    """
    facing_away = (sample_normals * directions.unsqueeze(-2)).sum(-1).clamp_min(0.0)
    return (weights.detach() * facing_away.square()).sum(-1).mean()


def opacity_loss(opacity: Tensor) -> Tensor:
    """Mean over rays of sqrt(opacity^2 + 0.01): pushes unneeded density to zero (App. A.2)."""
    return (opacity.square() + 0.01).sqrt().mean()


def distortion_loss(weights: Tensor, distances: Tensor, deltas: Tensor) -> Tensor:
    """Mean over rays of sum_ij w_i w_j |t_i - t_j| + 1/3 sum_i w_i^2 delta_i (Mip-NeRF 360, eq. 15).

    Zero for a ray whose weight sits in one infinitely thin sample, larger the more its weight spreads.
    The double sum is computed in O(S) with running sums over samples sorted by distance (they are):
    sum_ij = 2 sum_i w_i (t_i W_<i - (wt)_<i). weights, distances, deltas: (..., S).
    """
    before = weights.cumsum(-1) - weights  # W_<i
    weighted_before = (weights * distances).cumsum(-1) - weights * distances
    spread = 2.0 * (weights * (distances * before - weighted_before)).sum(-1)
    return (spread + (weights.square() * deltas).sum(-1) / 3.0).mean()


def normal_smoothness_loss(normals: Tensor, neighbour_normals: Tensor, weights: Tensor) -> Tensor:
    """sum_i w_i |n_i - n'_i|^2 / sum_i w_i: how much the normals (N, 3) change to their neighbours' (N, 3),
    weighted by (N,) `weights` (UNISURF, Oechsle et al. 2021, eq. 9). Zero when there are no points."""
    change = (normals - neighbour_normals).square().sum(-1)
    return (weights * change).sum() / weights.sum().clamp_min(1e-6)
