"""Optimisers per model group, and learning-rate schedules as pure functions of the iteration
(nothing to checkpoint)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import ScheduleConfig, TrainConfig
from ..errors import InputError


def make_optimizer(params, cfg: dict) -> torch.optim.Optimizer:
    """One optimiser from an ``OptimConfig`` dump (name, lr, weight_decay, momentum, nesterov)."""
    name, lr, wd = cfg["name"], cfg["lr"], cfg["weight_decay"]
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    return torch.optim.SGD(params, lr=lr, momentum=cfg["momentum"], weight_decay=wd, nesterov=cfg["nesterov"])


def make_optimizers(groups: dict[str, torch.nn.Module], t: TrainConfig
                    ) -> tuple[dict[str, torch.optim.Optimizer], dict[str, float]]:
    """One optimiser per model group over its trainable parameters: ``train.optimizer`` with the
    group's ``train.group_optimizers`` entries on top; returns (optimisers, base lr) by group."""
    unknown = set(t.group_optimizers) - set(groups)
    if unknown:
        raise InputError("train.group_optimizers", f"unknown group {sorted(unknown)[0]!r}; groups: {', '.join(groups)}")
    optimizers, base_lr = {}, {}
    for g, net in groups.items():
        ocfg = {**t.optimizer.model_dump(), **t.group_optimizers.get(g, {})}
        optimizers[g] = make_optimizer([p for p in net.parameters() if p.requires_grad], ocfg)
        base_lr[g] = ocfg["lr"]
    return optimizers, base_lr


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
