"""An ensemble of 3D segmenters as one 3D network (registered in ``NETS3D`` as ``"ensemble"``).

M&N's optional 2D + 3D inference (``method.options.predict: ensemble``) is saved as this network
with the 3D model and the slice-wise 2D model as its members.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..registry import NETS3D
from .checks import check_io, check_options
from .nets3d import main_output

__all__ = ["Ensemble"]
class Ensemble(nn.Module):
    """Several 3D segmenters as one: ``(N, C, X, Y, Z)`` -> ``log(mean_i softmax(member_i(x)))``
    ``(N, K, X, Y, Z)``, a log-probability whose softmax is the members' mean probability (clamped
    to the smallest positive float before the log). Deep-supervision outputs count by their first
    (full-resolution) map. ``divisor`` is the per-axis least common multiple of the members'.
    The state dict is each member's under ``members.<i>.``."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.divisor = tuple(math.lcm(*(getattr(m, "divisor", (1, 1, 1))[a] for m in members)) for a in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for m in self.members:
            p = torch.softmax(main_output(m(x)).float(), 1)
            total = p if total is None else total + p
        probs = total / len(self.members)
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()


@NETS3D.register("ensemble")
def ensemble(in_channels: int, num_classes: int, **options: Any) -> nn.Module:
    """:class:`Ensemble` of registered 3D networks. Option ``members`` (required): a list of two or
    more ``{name, options}`` specs (as ``model.net3d``), each built with the same channels and classes."""
    check_io("model ensemble", in_channels, num_classes)
    check_options("model ensemble", options, ("members",))
    specs = options.get("members")
    if (not isinstance(specs, list) or len(specs) < 2
            or any(not isinstance(m, dict) or not isinstance(m.get("name"), str) or set(m) - {"name", "options"}
                   for m in specs)):
        raise InputError("model ensemble members", f"expected a list of >= 2 {{name, options}} specs, got {specs!r}")
    return Ensemble([NETS3D.build(m["name"], in_channels=in_channels, num_classes=num_classes, **m.get("options", {}))
                     for m in specs])
