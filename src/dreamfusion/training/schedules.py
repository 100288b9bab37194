"""Quantities that change over training. Each takes `step` explicitly; lengths are fractions of the run so
that a short CPU run keeps the paper's proportions (its run is 15,000 steps)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class WarmupCosine:
    """Learning rate: linear warm-up from `start` to 1 (times `peak`), then cosine decay to `end` (App. A.2:
    1e-9 -> 1e-4 over 3,000 steps, cosine to 1e-6, i.e. start 1e-5 and end 1e-2 of the peak). The NeRF, the
    built-in prior's stages, the world classifier and the judge all use it.

    - The warm-up lasts `warmup_fraction` of each cycle, or `warmup_steps` when that is set.
    - `warmup_offset` 1 counts the current step as done, so a warm-up from 0 gives its first step 1/W of the
      peak, not nothing (the prior's and the classifiers' convention; their shipped weights were trained so).
    - `restarts` are steps where the schedule starts over (a warm restart, as SGDR): a finished run trained
      further gets a new warm-up and cosine over its added steps, each cycle with the same shape.

    `peak` 1 gives a multiplier of the base learning rate; another peak gives the rate itself."""

    total_steps: int
    warmup_fraction: float = 3000 / 15000
    start: float = 1e-5
    end: float = 1e-2
    restarts: tuple[int, ...] = ()
    peak: float = 1.0
    warmup_steps: int | None = None
    warmup_offset: int = 0

    def __post_init__(self) -> None:
        if list(self.restarts) != sorted(set(self.restarts)) or any(
            not 0 < r < self.total_steps for r in self.restarts
        ):
            raise ValueError("restarts must be increasing steps between 0 and the total")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError("warmup_steps must not be negative")

    def __call__(self, step: int) -> float:
        begin = max((r for r in self.restarts if r <= step), default=0)
        end = min((r for r in self.restarts if r > step), default=self.total_steps)
        step -= begin
        warmup = self.warmup_fraction * (end - begin) if self.warmup_steps is None else self.warmup_steps
        if step < warmup:
            low = self.peak * self.start
            return low + (self.peak - low) * (step + self.warmup_offset) / warmup
        decay_steps = max(end - begin - warmup, 1)
        progress = min((step - warmup) / decay_steps, 1.0)
        floor = self.peak * self.end
        return floor + (self.peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


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
