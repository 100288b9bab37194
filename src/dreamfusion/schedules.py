"""Quantities that change over training. Each takes `step` explicitly; lengths are fractions of the run so
that a short CPU run keeps the paper's proportions (its run is 15,000 steps)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class WarmupCosine:
    """Learning-rate multiplier: linear warm-up from `start` to 1, then cosine decay to `end` (App. A.2:
    1e-9 -> 1e-4 over 3,000 steps, cosine to 1e-6, i.e. start 1e-5 and end 1e-2 of the peak)."""

    total_steps: int
    warmup_fraction: float = 3000 / 15000
    start: float = 1e-5
    end: float = 1e-2

    def __call__(self, step: int) -> float:
        warmup = self.warmup_fraction * self.total_steps
        if step < warmup:
            return self.start + (1.0 - self.start) * step / warmup
        decay_steps = max(self.total_steps - warmup, 1.0)
        progress = min((step - warmup) / decay_steps, 1.0)
        return self.end + (1.0 - self.end) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class LinearRamp:
    """From `start` to `end` over the first `fraction` of the run, then constant."""

    total_steps: int
    start: float
    end: float
    fraction: float

    def __call__(self, step: int) -> float:
        length = self.fraction * self.total_steps
        if length <= 0 or step >= length:
            return self.end
        return self.start + (self.end - self.start) * step / length
