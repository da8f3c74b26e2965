"""3D segmentation networks, registered in :data:`semi3d.registry.NETS3D`.

Every builder has the signature ``builder(in_channels, num_classes, **options) -> nn.Module``; the
returned module maps a float tensor of shape ``(N, C, X, Y, Z)`` (batch, channel, then the three
spatial axes in array order) to logits of shape ``(N, K, X, Y, Z)``. Each module carries
``divisor: tuple[int, int, int]``: every spatial size of the input must be a multiple of it, and
``forward`` raises ``ValueError`` otherwise. An unknown option raises
:class:`semi3d.errors.InputError` naming the network and the key.

Registered names:

- ``"unet3d"``: :class:`UNet3D`, an nnU-Net-style plain-convolution U-Net.
- ``"vnet"``: :class:`semi3d.models.vnet.VNet`, the V-Net of the UA-MT / SASSNet / DTC
  left-atrium literature.
- ``"monai_unet"``, ``"swinunetr"``, ``"dynunet"``: MONAI networks (:mod:`semi3d.models.monai_nets`),
  imported on first build.
- ``"slicewise2d"``: a registered 2D network run slice by slice
  (:class:`semi3d.models.slicing.SliceWise2D`), the inference model of the ``supervised2d`` method.
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..registry import NETS3D
from .checks import check_io, check_options

__all__ = ["UNet3D", "check_patch", "count_parameters", "list_nets3d"]

Triple = tuple[int, int, int]


# ----------------------------------------------------------------------------------------- helpers
def list_nets3d() -> list[str]:
    """Names of all registered 3D networks, sorted."""
    return NETS3D.names()


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (only those with ``requires_grad`` if ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def int_triple(value: int | Sequence[int], where: str) -> Triple:
    """``(v, v, v)`` from one positive int, or the 3 positive ints given."""
    t = (value,) * 3 if isinstance(value, int) else tuple(value)
    if len(t) != 3 or not all(isinstance(v, int) and v >= 1 for v in t):
        raise InputError(where, f"expected a positive int or 3 positive ints, got {value!r}")
    return t  # type: ignore[return-value]


def divisor_of(strides: Iterable[int | Sequence[int]], where: str) -> Triple:
    """The per-axis product of the pooling ``strides``: what every input size must divide by."""
    out = [1, 1, 1]
    for s in strides:
        out = [a * b for a, b in zip(out, int_triple(s, where))]
    return tuple(out)  # type: ignore[return-value]


def _divides(divisor: Sequence[int], shape: Sequence[int]) -> bool:
    """True when every spatial size in ``shape`` is a multiple of ``divisor`` on its axis."""
    return all(s % d == 0 for s, d in zip(shape, divisor))


def check_input(x: torch.Tensor, divisor: Sequence[int], name: str) -> None:
    """Raise ``ValueError`` unless ``x`` is ``(N, C, X, Y, Z)`` with ``X, Y, Z`` multiples of ``divisor``."""
    if x.ndim != 5:
        raise ValueError(f"{name}: expected a 5D input (N, C, X, Y, Z), got shape {tuple(x.shape)}")
    if not _divides(divisor, x.shape[2:]):
        raise ValueError(
            f"{name}: input spatial shape {tuple(x.shape[2:])} (full shape {tuple(x.shape)}) "
            f"is not divisible by the network divisor {tuple(divisor)} per axis"
        )


def check_patch(patch_size: Sequence[int], nets: nn.Module, where: str = "data.patch_size") -> None:
    """Raise :class:`InputError` naming ``where`` unless every 3D network in ``nets`` (the module
    and its submodules that carry a ``divisor``) can train on patches of ``patch_size`` (voxels,
    ``(X, Y, Z)``): each size a multiple of the network's divisor, and, for a network with instance
    norm, more than one voxel at its deepest level (``patch // divisor``), since instance norm
    cannot normalise a single voxel. Called before training so the error is not a torch traceback
    at the first step."""
    patch = tuple(int(p) for p in patch_size)
    for name, net in nets.named_modules():
        divisor = getattr(net, "divisor", None)
        if divisor is None or len(divisor) != 3:
            continue
        label = f"{type(net).__name__}{f' ({name})' if name else ''}"
        if not _divides(divisor, patch):
            raise InputError(where, f"{list(patch)} is not a multiple of the divisor {list(divisor)} of {label} "
                                    "per axis; choose a patch whose every size is a multiple of it")
        deepest = [p // d for p, d in zip(patch, divisor)]
        if math.prod(deepest) == 1 and any(isinstance(m, nn.modules.instancenorm._InstanceNorm) for m in net.modules()):
            raise InputError(where, f"{list(patch)} leaves a single voxel at the deepest level of {label} "
                                    f"(divisor {list(divisor)}), which instance norm cannot normalise; use a patch "
                                    "at least twice the divisor along one axis, or fewer levels")


def main_output(out: Any) -> torch.Tensor:
    """The full-resolution logits of a network's output: the first map of a deep-supervision list
    or tuple, else the output itself."""
    return out[0] if isinstance(out, (list, tuple)) else out


def _divisor_hook(module: nn.Module, args: tuple[Any, ...]) -> None:
    check_input(args[0], module.divisor, type(module).__name__)


def with_divisor(net: nn.Module, divisor: Triple) -> nn.Module:
    """Attach ``divisor`` and an input-shape check to a third-party module."""
    net.divisor = divisor
    net.register_forward_pre_hook(_divisor_hook)
    return net


def register_class(name: str, cls: type[nn.Module]) -> Callable[..., nn.Module]:
    """Register a builder for ``cls`` that rejects options ``cls.__init__`` does not accept."""
    valid = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "in_channels", "num_classes")]

    def build(in_channels: int, num_classes: int, **options: Any) -> nn.Module:
        check_io(f"model {name}", in_channels, num_classes)
        check_options(f"model {name}", options, valid)
        return cls(in_channels, num_classes, **options)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"Build :class:`{cls.__name__}` (options: {', '.join(valid)})."
    return NETS3D.register(name)(build)


# ------------------------------------------------------------------------------------------ UNet3D
_NORMS = ("instance", "batch", "group", "none")


def _norm3d(kind: str, ch: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm3d(ch, affine=True)
    if kind == "batch":
        return nn.BatchNorm3d(ch)
    if kind == "group":
        return nn.GroupNorm(math.gcd(ch, 8), ch)
    return nn.Identity()


class _ConvNormAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, norm: str, stride: Triple = (1, 1, 1)):
        super().__init__(
            nn.Conv3d(cin, cout, 3, stride=stride, padding=1),
            _norm3d(norm, cout),
            nn.LeakyReLU(0.01, inplace=True),
        )


class UNet3D(nn.Module):
    """Plain-convolution 3D U-Net in the style of nnU-Net.

    Level ``i`` (0 = full resolution) has ``min(base * 2**i, max_channels)`` channels and two
    ``conv3x3x3 -> norm -> LeakyReLU(0.01)`` blocks. Going down one level uses ``strides[i]``
    (a strided first conv for ``pool="conv"``, a max-pool for ``pool="max"``); the decoder
    upsamples with ``ConvTranspose3d(kernel=stride, stride=stride)``, concatenates the skip and
    applies two conv blocks; a ``1x1x1`` conv gives the logits.

    Args:
        in_channels: number of input channels ``C``.
        num_classes: number of output channels ``K``.
        levels: number of resolution levels (default 5; taken from ``strides`` when only it is given).
        base: channels at full resolution.
        max_channels: cap on the channels of any level.
        norm: ``"instance"`` (affine), ``"batch"``, ``"group"`` (``gcd(ch, 8)`` groups) or ``"none"``.
        dropout: ``Dropout3d`` probability on the bottleneck and every decoder level (0 disables);
            stays active in training mode only, so MC dropout needs ``model.train()``.
        pool: ``"conv"`` or ``"max"``.
        strides: per-level downsampling strides (``levels - 1`` entries, each an int or an
            ``(sx, sy, sz)`` triple), e.g. ``[(2, 2, 1), (2, 2, 2), ...]`` for anisotropic data.
            Defaults to ``(2, 2, 2)`` everywhere.
        deep_supervision: in training mode ``forward`` returns a list of logits, one per decoder
            level, full resolution first, each ``(N, K, X / s_x, Y / s_y, Z / s_z)``.

    Attributes:
        divisor: per-axis product of the strides; input spatial sizes must be multiples of it.
        channels: the channel count of each level.

    Shapes:
        input ``(N, C, X, Y, Z)`` -> output ``(N, K, X, Y, Z)`` (or a list, see ``deep_supervision``).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        levels: int | None = None,
        base: int = 32,
        max_channels: int = 320,
        norm: str = "instance",
        dropout: float = 0.0,
        pool: str = "conv",
        strides: Sequence[int | Sequence[int]] | None = None,
        deep_supervision: bool = False,
    ):
        super().__init__()
        where = "model unet3d"
        if levels is None:
            levels = 5 if strides is None else len(strides) + 1
        if not isinstance(levels, int) or levels < 2:
            raise InputError(where, f"levels must be an int >= 2, got {levels!r}")
        if strides is None:
            strides = [(2, 2, 2)] * (levels - 1)
        if len(strides) != levels - 1:
            raise InputError(where, f"strides needs levels - 1 = {levels - 1} entries, got {len(strides)}")
        if norm not in _NORMS:
            raise InputError(where, f"norm must be one of {', '.join(_NORMS)}, got {norm!r}")
        if pool not in ("conv", "max"):
            raise InputError(where, f"pool must be 'conv' or 'max', got {pool!r}")
        if not 0.0 <= dropout < 1.0:
            raise InputError(where, f"dropout must be in [0, 1), got {dropout!r}")
        if base < 1 or max_channels < 1:
            raise InputError(where, "base and max_channels must be positive")
        self.strides: list[Triple] = [int_triple(s, f"{where} strides") for s in strides]
        self.divisor: Triple = divisor_of(self.strides, f"{where} strides")
        self.channels: tuple[int, ...] = tuple(min(base * 2**i, max_channels) for i in range(levels))
        self.deep_supervision = deep_supervision
        ch = self.channels

        self.encoder = nn.ModuleList()
        for i in range(levels):
            cin = in_channels if i == 0 else ch[i - 1]
            stride = (1, 1, 1) if i == 0 else self.strides[i - 1]
            if i > 0 and pool == "max":
                first: nn.Module = nn.Sequential(nn.MaxPool3d(stride, stride), _ConvNormAct(cin, ch[i], norm))
            else:
                first = _ConvNormAct(cin, ch[i], norm, stride)
            self.encoder.append(nn.Sequential(first, _ConvNormAct(ch[i], ch[i], norm)))

        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i in reversed(range(levels - 1)):  # decoder level i, from the bottom up
            s = self.strides[i]
            self.up.append(nn.ConvTranspose3d(ch[i + 1], ch[i], s, stride=s))
            self.decoder.append(nn.Sequential(_ConvNormAct(2 * ch[i], ch[i], norm), _ConvNormAct(ch[i], ch[i], norm)))
        self.dropout = nn.Dropout3d(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Conv3d(ch[0], num_classes, 1)
        # deep-supervision heads for decoder levels 1 .. levels-2 (full resolution uses self.head)
        self.aux_heads = nn.ModuleList(
            nn.Conv3d(ch[i], num_classes, 1) for i in range(1, levels - 1)
        ) if deep_supervision else nn.ModuleList()

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Map ``(N, C, X, Y, Z)`` to logits ``(N, K, X, Y, Z)``; a list with deep supervision in training."""
        check_input(x, self.divisor, "UNet3D")
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        x = self.dropout(skips.pop())
        decoded = []
        for up, stage in zip(self.up, self.decoder):
            x = self.dropout(stage(torch.cat([up(x), skips.pop()], dim=1)))
            decoded.append(x)
        out = self.head(x)
        if not (self.deep_supervision and self.training):
            return out
        # decoded[-1] is full resolution; decoded[-2] is one level down, etc.
        return [out] + [h(f) for h, f in zip(self.aux_heads, decoded[-2::-1])]


register_class("unet3d", UNet3D)


# ----------------------------------------------------------------------- a 2D network, slice-wise
@NETS3D.register("slicewise2d")
def slicewise2d(in_channels: int, num_classes: int, **options: Any) -> nn.Module:
    """:class:`semi3d.models.slicing.SliceWise2D` around a ``NETS2D`` network. Options: ``net2d``
    (required: ``{name, options}`` of the 2D network, as ``model.net2d``) and ``axes`` (the spatial
    axis or axes to slice along, default ``[2]``). ``divisor`` is ``(1, 1, 1)``.
    Shapes: ``(N, C, X, Y, Z)`` -> ``(N, K, X, Y, Z)``.
    """
    from ..registry import NETS2D
    from .slicing import SliceWise2D, spatial_axes

    where = "model slicewise2d"
    check_io("model slicewise2d", in_channels, num_classes)
    check_options("model slicewise2d", options, ("net2d", "axes"))
    spec = options.get("net2d")
    if (not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or set(spec) - {"name", "options"}
            or not isinstance(spec.get("options", {}), dict)):
        raise InputError(where, f"net2d must be {{name: <2D network>, options: {{...}}}}, got {spec!r}")
    try:
        axes = spatial_axes(options.get("axes", [2]))
    except ValueError as e:
        raise InputError(f"{where} axes", str(e)) from None
    net2d = NETS2D.build(spec["name"], in_channels=in_channels, num_classes=num_classes, **spec.get("options", {}))
    return SliceWise2D(net2d, axes)

