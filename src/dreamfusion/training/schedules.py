"""Quantities that change over training. Each takes `step` explicitly; lengths are fractions of the run so
that a short CPU run keeps the paper's proportions (its run is 15,000 steps)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class WarmupCosine:
    """Learning-rate multiplier: linear warm-up from `start` to 1, then cosine decay to `end` (App. A.2:
    1e-9 -> 1e-4 over 3,000 steps, cosine to 1e-6, i.e. start 1e-5 and end 1e-2 of the peak).

    `restarts` are steps where the schedule starts over (a warm restart, as SGDR): a finished run trained
    further gets a new warm-up and cosine over its added steps, each cycle with the same shape."""

    total_steps: int
    warmup_fraction: float = 3000 / 15000
    start: float = 1e-5
    end: float = 1e-2
    restarts: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if list(self.restarts) != sorted(set(self.restarts)) or any(
            not 0 < r < self.total_steps for r in self.restarts
        ):
            raise ValueError("restarts must be increasing steps between 0 and the total")

    def __call__(self, step: int) -> float:
        begin = max((r for r in self.restarts if r <= step), default=0)
        end = min((r for r in self.restarts if r > step), default=self.total_steps)
        step -= begin
        warmup = self.warmup_fraction * (end - begin)
        if step < warmup:
            return self.start + (1.0 - self.start) * step / warmup
        decay_steps = max(end - begin - warmup, 1.0)
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
