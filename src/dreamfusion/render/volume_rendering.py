"""Emission-absorption volume rendering (the NeRF quadrature used by the paper, sec. 3.1)."""

from __future__ import annotations

import torch
from torch import Tensor


def compositing_weights(density: Tensor, deltas: Tensor) -> Tensor:
    """w_i = T_i (1 - exp(-sigma_i delta_i)), T_i = exp(-sum_{j<i} sigma_j delta_j).

    density, deltas: (..., S) along each ray. The weights sum to 1 - exp(-sum sigma delta): the exact
    opacity of a piecewise-constant medium, so a constant-density ray of length d gives 1 - exp(-sigma d).
    """
    optical = density * deltas
    alpha = 1.0 - torch.exp(-optical)
    # exclusive cumulative sum: the optical depth accumulated before sample i
    accumulated = torch.cumsum(optical, dim=-1) - optical
    return alpha * torch.exp(-accumulated)


def composite(weights: Tensor, values: Tensor) -> Tensor:
    """sum_i w_i v_i along the sample axis. weights (..., S), values (..., S, C) -> (..., C)."""
    return (weights.unsqueeze(-1) * values).sum(-2)
