"""The 3D scene: density and albedo at every point inside the bounding sphere (paper sec. 3.1).

`Field` is the interface every representation implements (triplane.py, hashgrid.py, analytic.py), with what
they share: the App. A.2 density blob, the density activation and normals by autograd.

Normals are the negative, normalised gradient of density (paper sec. 3.1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Density pre-activations are clamped before exp() so a bad step cannot produce inf (trunc-exp).
MAX_DENSITY_PREACTIVATION = 15.0


@dataclass(frozen=True)
class FieldOutput:
    density: Tensor  # (N,) >= 0, per unit length
    albedo: Tensor  # (N, 3) in [0, 1]
    normals: Tensor | None  # (N, 3) unit length, outward (-grad density), or None when not asked for
    # (N,) (|grad s| - 1)^2 for a field with a signed distance s, computed with the normals; else None
    eikonal: Tensor | None = None


def blob_preactivation(points: Tensor, strength: float, radius: float) -> Tensor:
    """tau_init(x) = lambda (1 - ||x|| / sigma), shape (N,). App. A.2."""
    return strength * (1.0 - points.norm(dim=-1) / radius)


def blob_preactivation_gradient(points: Tensor, strength: float, radius: float) -> Tensor:
    """d tau_init / dx = -lambda / sigma * x / ||x||, shape (N, 3)."""
    return -(strength / radius) * points / points.norm(dim=-1, keepdim=True).clamp_min(1e-9)


def density_activation(preactivation: Tensor) -> Tensor:
    """exp, with the argument clamped (trunc-exp): density scales over orders of magnitude."""
    return torch.exp(preactivation.clamp(max=MAX_DENSITY_PREACTIVATION))


class Field(nn.Module):
    """Density and albedo inside a sphere of radius `bound`. Subclasses implement `forward` and `density`."""

    bound: float

    def forward(self, points: Tensor, with_normals: bool = False) -> FieldOutput:  # points: (N, 3)
        raise NotImplementedError

    def density(self, points: Tensor) -> Tensor:
        """(N,) density only; the cheap path for occupancy updates and mesh extraction."""
        raise NotImplementedError

    def detail_resolution(self) -> int | None:
        """Cells per axis of the field's finest features across its box, or None when it has no grid (an
        analytic shape): how finely a mesh of it is worth sampling."""
        return None

    def smoothness(self) -> Tensor | None:
        """A differentiable measure of the field's high-frequency content (`loss.smoothness_weight` scales
        it), or None when the field has none to offer."""
        return None

    def shading_normals(self, points: Tensor) -> Tensor | None:
        """(N, 3) normals to shade with at `points`, where they differ from `forward`'s (a smoothed
        gradient), or None: then `forward`'s normals are the shading normals. The renderer asks for them only
        at the samples that carry weight, so they may cost several evaluations per point."""
        return None

    def anneal(self, done: float) -> None:
        """Called by the trainer before every step with the share of the NeRF steps done (0 .. 1), for a
        field whose settings follow a schedule. Most have none."""

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by learning-rate group: "grid" (feature planes, hash tables) and "mlp"."""
        return {"grid": [], "mlp": list(self.parameters())}


def init_linear(layer: nn.Linear, generator: torch.Generator | None) -> None:
    """Kaiming-uniform like nn.Linear's default, but drawn from an explicit generator."""
    bound = 1.0 / math.sqrt(layer.in_features)
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=generator)
        layer.bias.uniform_(-bound, bound, generator=generator)


def autograd_normals(density_fn, points: Tensor) -> Tensor:
    """-normalize(grad density) by autograd with create_graph=True (double backward in training).

    The generic path for a field without an analytic gradient; both built-in fields have one, and this is
    what their tests compare against.
    """
    training = torch.is_grad_enabled()
    with torch.enable_grad():
        x = points.detach().requires_grad_(True)
        sigma = density_fn(x)
        (grad,) = torch.autograd.grad(sigma.sum(), x, create_graph=training)
    return -F.normalize(grad, dim=-1, eps=1e-12)
