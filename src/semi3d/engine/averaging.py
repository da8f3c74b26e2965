"""Weight averaging: an exponential moving average (EMA) of a method's trainable networks.

The trainer keeps it beside the method when ``train.weight_average`` is set and validates, selects
and saves the averaged predictor instead of the live one; training itself never sees it (the live
weights, the losses and every random draw are those of the same run without it). The average
covers the method's ``groups`` (parameters and floating-point buffers, such as batch-norm running
statistics; other buffers are copied), as timm's ``ModelEmaV2`` and torch's ``AveragedModel`` with
``get_ema_multi_avg_fn`` and ``use_buffers=True``; teachers and other method state are not
averaged (Mean Teacher's EMA teacher is the method's own).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["WeightAverage", "averaged_groups"]


class WeightAverage(nn.Module):
    """EMA of ``groups`` (a method's ``nn.ModuleDict`` of trainable networks).

    ``update(live, step)`` after optimiser step ``step`` (0-based): nothing before ``start``; at the
    first update the average becomes a copy of ``live``, then ``avg = decay * avg + (1 - decay) * live``.
    ``predictor(method)``: ``method.predictor()`` built on the averaged networks (the live one before
    the first update). Its state dict (the averaged networks and the update count) goes into the
    run's checkpoint.
    """

    def __init__(self, groups: nn.ModuleDict, decay: float, start: int = 0):
        super().__init__()
        self.groups = copy.deepcopy(groups).requires_grad_(False)
        self.decay, self.start = float(decay), int(start)
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, live: nn.ModuleDict, step: int) -> None:
        if step < self.start:
            return
        first = int(self.count) == 0
        avg = [*self.groups.parameters(), *self.groups.buffers()]
        new = [*live.parameters(), *live.buffers()]
        for a, b in zip(avg, new, strict=True):
            if first or not a.is_floating_point():
                a.copy_(b)
            else:
                a.lerp_(b.detach().to(a.dtype), 1.0 - self.decay)
        self.count += 1

    def predictor(self, method: nn.Module) -> nn.Module:
        if int(self.count) == 0:
            return method.predictor()
        live = method.groups
        method.groups = self.groups  # every method builds its predictor from ``self.groups``
        try:
            return method.predictor()
        finally:
            method.groups = live


def averaged_groups(state: dict) -> dict | None:
    """The averaged networks as a state dict of the method's ``groups`` (for
    ``method.groups.load_state_dict``) from a :class:`WeightAverage` state dict; ``None`` before its
    first update (nothing averaged yet: the live weights are the model)."""
    if int(state["count"]) == 0:
        return None
    return {k.removeprefix("groups."): v for k, v in state.items() if k.startswith("groups.")}
