"""An exponential moving average of a module's weights: what the built-in prior ships (as DDPM and IF do,
whose samples from averaged weights are better than from the last step's)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, module: nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.average = copy.deepcopy(module).eval().requires_grad_(False)

    def decay_at(self, step: int) -> float:
        """A shorter memory early on, so the first random weights do not linger: (1 + k) / (10 + k)."""
        return min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        averaged = list(self.average.parameters())
        current = [p.detach() for p in module.parameters()]
        torch._foreach_lerp_(averaged, current, 1.0 - self.decay_at(step))
