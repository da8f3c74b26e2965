"""Learning-rate schedules as pure functions of the iteration (nothing to checkpoint)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import ScheduleConfig


@dataclass
class LRSchedule:
    """lr(step) = base_lr * factor(step); ``step`` counts from 0 to ``total - 1``."""

    cfg: ScheduleConfig
    total: int

    def boundaries(self) -> list[tuple[int, int]]:
        """The [start, end) iteration range of every cosine cycle."""
        ends = [c for c in self.cfg.cycles if 0 < c < self.total] + [self.total]
        starts = [0] + ends[:-1]
        return list(zip(starts, ends))

    def cycle_position(self, step: int) -> tuple[int, float]:
        """(cycle index, position p in [0, 1) within that cycle)."""
        for i, (s, e) in enumerate(self.boundaries()):
            if step < e:
                return i, (step - s) / max(e - s, 1)
        return len(self.boundaries()) - 1, 1.0 - 1e-9

    def factor(self, step: int) -> float:
        c = self.cfg
        if c.name == "constant":
            f = 1.0
        elif c.name == "poly":
            f = (1.0 - min(step, self.total) / self.total) ** c.power
        else:
            _, p = self.cycle_position(step)
            f = c.min_factor + (1 - c.min_factor) * 0.5 * (1 + math.cos(math.pi * p))
        if c.warmup and step < c.warmup:
            f *= (step + 1) / c.warmup
        return f
