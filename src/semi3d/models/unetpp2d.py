"""U-Net++ (Zhou et al. 2018): a 2D U-Net with nested, densely connected skip pathways.

Registered in :data:`semi3d.registry.NETS2D` as ``"unetpp2d"``; pure torch, no pretrained weights.
Like every 2D network of this package it maps a float tensor ``(N, C, H, W)`` to logits
``(N, K, H, W)`` at the input resolution for any ``H, W`` (the input is zero-padded, split evenly on
both sides, to the next multiple of ``2 ** (L - 1)`` and the logits are cropped back).

Nodes ``X[i][j]`` (level ``i = 0..L-1``, ``L = len(widths)``; column ``j = 0..L-1-i``):

- ``X[0][0] = block(x)``; ``X[i][0] = block(maxpool(X[i-1][0]))`` is the encoder (``widths[i]``
  channels at stride ``2 ** i``);
- ``X[i][j] = block(cat(X[i][0], ..., X[i][j-1], up(X[i+1][j-1])))`` (``j >= 1``) are the nested
  decoder nodes, ``up`` a x2 upsampling (bilinear or nearest) and ``block`` two 3x3
  conv-norm-ReLU layers with ``widths[i]`` outputs.

Heads: a 1x1 convolution on ``X[0][L-1]`` (the full U-Net++ output). With
``deep_supervision=True`` every top node ``X[0][1..L-1]`` has its own 1x1 head:
:meth:`UNetPlusPlus2D.forward_heads` returns the ``L - 1`` logit maps (for the averaged
deep-supervision loss of the paper) and :meth:`UNetPlusPlus2D.forward` their mean (the paper's
"accurate mode"), so the registry contract ``(N, C, H, W) -> (N, K, H, W)`` holds either way.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..registry import NETS2D
from .checks import check_io, choice, positive_int, with_defaults
from .seg2d import check_input_2d, pad_to

__all__ = ["UNetPlusPlus2D", "unetpp2d"]

NORMS = ("batch", "instance", "group", "none")
UPSAMPLE = ("bilinear", "nearest")
_DEFAULTS: dict[str, Any] = dict(widths=(32, 64, 128, 256, 512), deep_supervision=False, norm="batch",
                                 upsample="bilinear")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    return nn.Identity()


class _Block(nn.Sequential):
    """Two 3x3 conv-norm-ReLU layers: ``(N, cin, h, w) -> (N, cout, h, w)``."""

    def __init__(self, cin: int, cout: int, norm: str):
        bias = norm == "none"
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=bias), _norm(norm, cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=bias), _norm(norm, cout), nn.ReLU(inplace=True))


class UNetPlusPlus2D(nn.Module):
    """U-Net++ with ``L = len(widths)`` levels (see the module docstring).

    Args:
        in_channels: ``C``.
        num_classes: ``K``.
        widths: channels per level, shallow to deep (at least 2 levels).
        deep_supervision: one head per top node ``X[0][1..L-1]`` (forward returns their mean).
        norm: ``"batch"`` | ``"instance"`` | ``"group"`` | ``"none"``.
        upsample: ``"bilinear"`` | ``"nearest"``.

    Forward: ``(N, C, H, W)`` float -> logits ``(N, K, H, W)``.
    """

    def __init__(self, in_channels: int, num_classes: int, widths: Sequence[int] = (32, 64, 128, 256, 512),
                 deep_supervision: bool = False, norm: str = "batch", upsample: str = "bilinear"):
        super().__init__()
        self.in_channels, self.num_classes = in_channels, num_classes
        self.widths = tuple(int(w) for w in widths)
        self.levels = len(self.widths)
        self.size_multiple = 2 ** (self.levels - 1)
        self.deep_supervision = bool(deep_supervision)
        self.upsample = upsample
        w = self.widths
        self.pool = nn.MaxPool2d(2)
        # nodes[i][j] is X[i][j]; X[i][j] (j >= 1) takes j skips of w[i] channels + the upsampled X[i+1][j-1]
        self.nodes = nn.ModuleList()
        for i in range(self.levels):
            row = nn.ModuleList()
            for j in range(self.levels - i):
                cin = (in_channels if i == 0 else w[i - 1]) if j == 0 else j * w[i] + w[i + 1]
                row.append(_Block(cin, w[i], norm))
            self.nodes.append(row)
        n_heads = self.levels - 1 if self.deep_supervision else 1
        self.heads = nn.ModuleList(nn.Conv2d(w[0], num_classes, 1) for _ in range(n_heads))

    def _up(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample == "nearest":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)

    def forward_heads(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every head, each ``(N, K, H, W)``: ``L - 1`` maps with deep supervision (top
        nodes ``X[0][1]`` .. ``X[0][L-1]``, shallow to full depth), else one."""
        check_input_2d(x, self.in_channels, "UNetPlusPlus2D")
        x, crop = pad_to(x, self.size_multiple)
        grid: list[list[torch.Tensor]] = [[] for _ in range(self.levels)]
        for i in range(self.levels):
            inp = x if i == 0 else self.pool(grid[i - 1][0])
            grid[i].append(self.nodes[i][0](inp))
            # after X[i][0] exists, fill the diagonal X[i-k][k] for k = 1..i
            for k in range(1, i + 1):
                r = i - k
                grid[r].append(self.nodes[r][k](torch.cat([*grid[r][:k], self._up(grid[r + 1][k - 1])], 1)))
        tops = grid[0][1:] if self.deep_supervision else grid[0][-1:]
        return [head(t)[(..., *crop)] for head, t in zip(self.heads, tops)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        heads = self.forward_heads(x)
        return heads[0] if len(heads) == 1 else torch.stack(heads).mean(0)


@NETS2D.register("unetpp2d")
def unetpp2d(in_channels: int, num_classes: int, **options: Any) -> UNetPlusPlus2D:
    """U-Net++ (see :class:`UNetPlusPlus2D`), random initialisation.

    Options: ``widths`` (channels per level, shallow to deep, >= 2 levels; default
    ``(32, 64, 128, 256, 512)``), ``deep_supervision`` (bool, default False), ``norm``
    (``"batch"`` | ``"instance"`` | ``"group"`` | ``"none"``), ``upsample`` (``"bilinear"`` |
    ``"nearest"``).
    """
    o = with_defaults("unetpp2d", options, _DEFAULTS)
    check_io("unetpp2d", in_channels, num_classes)
    widths = o["widths"]
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence) or len(widths) < 2:
        raise InputError("unetpp2d", f"widths={widths!r}: expected at least 2 positive integers (shallow to deep)")
    for c in widths:
        positive_int("unetpp2d", "widths", c)
    choice("unetpp2d", "norm", o["norm"], NORMS)
    choice("unetpp2d", "upsample", o["upsample"], UPSAMPLE)
    if not isinstance(o["deep_supervision"], bool):
        raise InputError("unetpp2d", f"deep_supervision={o['deep_supervision']!r}: expected true or false")
    return UNetPlusPlus2D(in_channels, num_classes, tuple(widths), o["deep_supervision"], o["norm"], o["upsample"])
