"""MONAI's 3D networks behind the semi3d network contract (:mod:`semi3d.models.nets3d`): ``monai_unet``,
``swinunetr``, ``dynunet``, registered in :data:`semi3d.registry.NETS3D` and imported on first build."""
from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Iterable
from typing import Any

from torch import nn

from ..registry import NETS3D
from .checks import check_io, check_options
from .nets3d import divisor_of, int_triple, with_divisor


def _monai_options(
    name: str, cls: type, options: dict[str, Any], fixed: Iterable[str], extra: Iterable[str] = ()
) -> None:
    valid = set(inspect.signature(cls.__init__).parameters) - {"self", *fixed}
    check_options(f"model {name}", options, valid | set(extra))


@NETS3D.register("monai_unet")
def monai_unet(in_channels: int, num_classes: int, **options: Any) -> nn.Module:
    """MONAI ``UNet`` (``spatial_dims=3``); defaults ``channels=(16, 32, 64, 128, 256)``,
    ``strides=(2, 2, 2, 2)``, ``num_res_units=2``. Other options pass through to MONAI.

    ``divisor`` is the per-axis product of ``strides`` (16 by default).
    Shapes: ``(N, C, X, Y, Z)`` -> ``(N, K, X, Y, Z)``.
    """
    from monai.networks.nets import UNet

    check_io("model monai_unet", in_channels, num_classes)
    _monai_options("monai_unet", UNet, options, ("spatial_dims", "in_channels", "out_channels"))
    kw: dict[str, Any] = {"channels": (16, 32, 64, 128, 256), "strides": (2, 2, 2, 2), "num_res_units": 2, **options}
    divisor = divisor_of(kw["strides"], "model monai_unet strides")
    net = UNet(spatial_dims=3, in_channels=in_channels, out_channels=num_classes, **kw)
    return with_divisor(net, divisor)


@NETS3D.register("swinunetr")
def swinunetr(in_channels: int, num_classes: int, **options: Any) -> nn.Module:
    """MONAI ``SwinUNETR`` (``spatial_dims=3``, default ``feature_size=24``).

    ``img_size`` is accepted for every MONAI version: MONAI < 1.5 needs it (default
    ``(96, 96, 96)``; it does not change the weights), newer MONAI has dropped it and it is
    ignored. ``divisor`` is ``32 * patch_size / 2`` per axis (32 by default). Needs ``einops``
    (MONAI imports it only at the first forward; this builder checks for it up front).
    Shapes: ``(N, C, X, Y, Z)`` -> ``(N, K, X, Y, Z)``.
    """
    from monai.networks.nets import SwinUNETR

    check_io("model swinunetr", in_channels, num_classes)
    _monai_options("swinunetr", SwinUNETR, options, ("spatial_dims", "in_channels", "out_channels"), ("img_size",))
    if importlib.util.find_spec("einops") is None:
        raise ImportError("model swinunetr needs the 'einops' package (pip install einops)")
    kw: dict[str, Any] = {"feature_size": 24, **options}
    img_size = kw.pop("img_size", (96, 96, 96))
    if "img_size" in inspect.signature(SwinUNETR.__init__).parameters:
        kw["img_size"] = img_size
    patch = int_triple(kw.get("patch_size", 2), "model swinunetr patch_size")
    net = SwinUNETR(in_channels=in_channels, out_channels=num_classes, spatial_dims=3, **kw)
    return with_divisor(net, tuple(p * 16 for p in patch))  # type: ignore[arg-type]


@NETS3D.register("dynunet")
def dynunet(in_channels: int, num_classes: int, **options: Any) -> nn.Module:
    """MONAI ``DynUNet`` (``spatial_dims=3``), by default 5 levels: ``kernel_size=[3] * 5``,
    ``strides=[1, 2, 2, 2, 2]``, ``upsample_kernel_size=strides[1:]`` (derived from ``strides``
    when only those are given), filters 32..320 (MONAI's default), instance norm, LeakyReLU.

    ``divisor`` is the per-axis product of ``strides`` (16 by default). With
    ``deep_supervision=True`` MONAI returns, in training mode, a stacked tensor
    ``(N, 1 + deep_supr_num, K, X, Y, Z)``.
    Shapes: ``(N, C, X, Y, Z)`` -> ``(N, K, X, Y, Z)``.
    """
    from monai.networks.nets import DynUNet

    check_io("model dynunet", in_channels, num_classes)
    _monai_options("dynunet", DynUNet, options, ("spatial_dims", "in_channels", "out_channels"))
    kw: dict[str, Any] = dict(options)
    kw.setdefault("strides", [1, 2, 2, 2, 2])
    kw.setdefault("kernel_size", [3] * len(kw["strides"]))
    kw.setdefault("upsample_kernel_size", list(kw["strides"])[1:])
    divisor = divisor_of(kw["strides"], "model dynunet strides")
    net = DynUNet(spatial_dims=3, in_channels=in_channels, out_channels=num_classes, **kw)
    return with_divisor(net, divisor)
