"""What the camera sees where the object is transparent (paper sec. 3.1: an MLP of the ray direction).

`EnvironmentMLP` is the paper's choice. `SolidBackground` paints each training image one random colour (and
white for validation), which keeps the prior from hiding the object in the background; a common fix for
objects that "vanish" into a learned environment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from dreamfusion.fields.base import init_linear

if TYPE_CHECKING:
    from dreamfusion.distributed import Shard


@dataclass(frozen=True)
class BackgroundConfig:
    kind: str = "mlp"  # "mlp" (the paper) or "solid" (random colour per training image, white otherwise)
    frequencies: int = 4  # positional-encoding octaves of the ray direction for the MLP
    hidden_width: int = 32
    colourfulness: float = 1.0  # "solid": the random colour's share against a light grey (background.py)

    def __post_init__(self) -> None:
        if self.kind not in ("mlp", "solid"):
            raise ValueError(f"background.kind must be 'mlp' or 'solid', got {self.kind!r}")
        if not 0.0 <= self.colourfulness <= 1.0:
            raise ValueError(f"background.colourfulness must be in [0, 1], got {self.colourfulness}")


class Background(nn.Module):
    def forward(
        self, directions: Tensor, generator: torch.Generator | None, shard: Shard | None = None
    ) -> Tensor:
        """directions (B, H, W, 3) -> colours (B, H, W, 3) in [0, 1]. No generator: a validation render.
        `shard`: the B images are one process's share of a larger batch (dreamfusion.distributed)."""
        raise NotImplementedError


class EnvironmentMLP(Background):
    def __init__(self, config: BackgroundConfig, generator: torch.Generator | None = None):
        super().__init__()
        self.frequencies = config.frequencies
        in_dim = 3 + 6 * config.frequencies
        self.hidden = nn.Linear(in_dim, config.hidden_width)
        self.out = nn.Linear(config.hidden_width, 3)
        init_linear(self.hidden, generator)
        init_linear(self.out, generator)

    def forward(
        self, directions: Tensor, generator: torch.Generator | None, shard: Shard | None = None
    ) -> Tensor:
        scales = 2.0 ** torch.arange(self.frequencies, device=directions.device) * torch.pi
        angles = directions[..., None, :] * scales[:, None]  # (..., F, 3)
        encoded = torch.cat([directions, angles.sin().flatten(-2), angles.cos().flatten(-2)], -1)
        return torch.sigmoid(self.out(torch.relu(self.hidden(encoded))))


def random_colours(
    n: int, generator: torch.Generator, colourfulness: float = 1.0, shard: Shard | None = None
) -> Tensor:
    """(n, 3) random background colours: a light grey in [0.5, 1] mixed with a uniform random colour, the
    colour's share being `colourfulness` (1: any colour, 0: greys only). Muted backgrounds keep an object's
    colour the most visible thing in an image; the world's renders and the NeRF's solid backgrounds share
    this so that the built-in prior and SDS see the same kind of picture. With a `shard`, these n are this
    process's rows of the whole batch's colours (dreamfusion.distributed)."""

    def draw(columns: int) -> Tensor:
        if shard is not None:
            return shard.rand((n, columns), generator)
        return torch.rand(n, columns, generator=generator)

    colour = draw(3)
    if colourfulness == 1.0:
        return colour
    grey = 0.5 + 0.5 * draw(1)
    return torch.lerp(grey.expand(n, 3), colour, colourfulness)


class SolidBackground(Background):
    def __init__(self, colourfulness: float = 1.0):
        super().__init__()
        self.colourfulness = colourfulness

    def forward(
        self, directions: Tensor, generator: torch.Generator | None, shard: Shard | None = None
    ) -> Tensor:
        batch = directions.shape[0]
        if generator is None:
            colour = torch.ones(batch, 3)
        else:
            colour = random_colours(batch, generator, self.colourfulness, shard)
        return colour.to(directions.device).view(batch, 1, 1, 3).expand_as(directions)


def build_background(config: BackgroundConfig, generator: torch.Generator | None = None) -> Background:
    match config.kind:
        case "mlp":
            return EnvironmentMLP(config, generator)
        case "solid":
            return SolidBackground(config.colourfulness)
        case _:
            raise ValueError(f"unknown background kind {config.kind!r}")
