"""The V-Net of the semi-supervised left-atrium literature and its blocks (also A&D's network's,
:mod:`semi3d.models.ad_net`). Registered as ``"vnet"`` in :data:`semi3d.registry.NETS3D`."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..errors import InputError
from .nets3d import Triple, register_class, check_input

__all__ = ["VNet", "vnet_norm", "vnet_stage", "vnet_resample"]

_VNET_NORMS = ("batchnorm", "instancenorm", "groupnorm", "none")
NormFactory = Callable[[str, int], list[nn.Module]] | None


def vnet_norm(kind: str, ch: int) -> list[nn.Module]:
    if kind == "batchnorm":
        return [nn.BatchNorm3d(ch)]
    if kind == "instancenorm":
        return [nn.InstanceNorm3d(ch)]  # affine=False, as in the original
    if kind == "groupnorm":
        return [nn.GroupNorm(16, ch)]
    return []


def vnet_stage(n_convs: int, cin: int, cout: int, norm: str, conv_dropout: float = 0.0,
               norms: NormFactory = None) -> nn.Sequential:
    """``n_convs`` blocks of ``conv3x3x3 -> norm -> ReLU`` (``-> Dropout3d(conv_dropout)`` when > 0);
    ``norms(kind, ch)`` gives the norm layers (default :func:`vnet_norm`). (N, cin, ...) -> (N, cout, ...)."""
    norms = norms or vnet_norm
    ops: list[nn.Module] = []
    for i in range(n_convs):
        ops += [nn.Conv3d(cin if i == 0 else cout, cout, 3, padding=1), *norms(norm, cout), nn.ReLU(inplace=True)]
        if conv_dropout > 0:
            ops.append(nn.Dropout3d(conv_dropout))
    return nn.Sequential(*ops)


def vnet_resample(cin: int, cout: int, norm: str, up: bool, norms: NormFactory = None) -> nn.Sequential:
    """A ``2x2x2`` stride-2 conv (``up``: transposed conv) ``-> norm -> ReLU``: halves (doubles) X, Y, Z."""
    conv = (nn.ConvTranspose3d if up else nn.Conv3d)(cin, cout, 2, stride=2)
    return nn.Sequential(conv, *(norms or vnet_norm)(norm, cout), nn.ReLU(inplace=True))


class VNet(nn.Module):
    """V-Net of the semi-supervised left-atrium literature (UA-MT, SASSNet, DTC, MC-Net).

    Same layers as those repositories' ``VNet(n_channels, n_classes, n_filters, normalization,
    has_dropout)``: encoder stages of 1, 2, 3, 3, 3 ``conv3x3x3 -> norm -> ReLU`` blocks with
    ``n_filters * (1, 2, 4, 8, 16)`` channels, ``2x2x2`` stride-2 conv downsampling, ``2x2x2``
    stride-2 transposed-conv upsampling, additive skips (``up + skip``), decoder stages of 3, 3, 2, 1
    blocks and a ``1x1x1`` output conv. Parameter names differ from the original checkpoints.

    Args:
        in_channels: number of input channels ``C``.
        num_classes: number of output channels ``K``.
        n_filters: channels of the first stage (``groupnorm`` needs a multiple of 16).
        normalization: ``"batchnorm"``, ``"instancenorm"`` (non-affine), ``"groupnorm"`` (16 groups)
            or ``"none"``.
        has_dropout: ``Dropout3d(p=0.5)`` on the bottleneck and on the last decoder features
            (active in training mode only).

    Attributes:
        divisor: ``(16, 16, 16)``.

    Shapes:
        input ``(N, C, X, Y, Z)`` -> output ``(N, K, X, Y, Z)``.
    """

    divisor: Triple = (16, 16, 16)

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        n_filters: int = 16,
        normalization: str = "batchnorm",
        has_dropout: bool = False,
    ):
        super().__init__()
        where = "model vnet"
        if normalization not in _VNET_NORMS:
            raise InputError(where, f"normalization must be one of {', '.join(_VNET_NORMS)}, got {normalization!r}")
        if not isinstance(n_filters, int) or n_filters < 1 or (normalization == "groupnorm" and n_filters % 16):
            raise InputError(
                where, f"n_filters must be a positive int (a multiple of 16 for groupnorm), got {n_filters!r}"
            )
        f = [n_filters * 2**i for i in range(5)]
        norm = normalization
        self.has_dropout = has_dropout
        self.encoder = nn.ModuleList(
            vnet_stage(n, in_channels if i == 0 else f[i], f[i], norm) for i, n in enumerate((1, 2, 3, 3, 3))
        )
        self.down = nn.ModuleList(vnet_resample(f[i], f[i + 1], norm, up=False) for i in range(4))
        self.up = nn.ModuleList(vnet_resample(f[i + 1], f[i], norm, up=True) for i in (3, 2, 1, 0))
        self.decoder = nn.ModuleList(vnet_stage(n, f[i], f[i], norm) for i, n in zip((3, 2, 1, 0), (3, 3, 2, 1)))
        self.out_conv = nn.Conv3d(f[0], num_classes, 1)
        self.dropout = nn.Dropout3d(p=0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(N, C, X, Y, Z)`` to logits ``(N, K, X, Y, Z)``."""
        check_input(x, self.divisor, "VNet")
        skips = []
        for i, stage in enumerate(self.encoder):
            x = stage(x)
            if i < 4:
                skips.append(x)
                x = self.down[i](x)
        if self.has_dropout:
            x = self.dropout(x)
        for up, stage in zip(self.up, self.decoder):
            x = stage(up(x) + skips.pop())
        if self.has_dropout:
            x = self.dropout(x)
        return self.out_conv(x)


register_class("vnet", VNet)
