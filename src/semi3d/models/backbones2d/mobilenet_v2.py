"""MobileNetV2 encoder in pure PyTorch, with the key layout of ``torchvision.models.mobilenet_v2``.

The module's ``state_dict`` keys are exactly those of torchvision's ``mobilenet_v2-b0353104.pth``
minus the classifier ``classifier.1.*``: ``features.0`` (stem conv-BN), ``features.{1..17}.conv``
(inverted residual blocks) and ``features.18`` (1x1 conv-BN to 1280 channels). Convolutions use
symmetric padding, BatchNorm PyTorch defaults. Expected input normalisation: ImageNet mean/std
on ``[0, 1]`` images (see :func:`normalise_input`).
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["MobileNetV2Encoder", "normalise_input"]

# expand ratio t, out channels c, repeats n, first stride s (MobileNetV2 paper, width 1.0)
_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
_TAPS = (1, 3, 6, 13, 18)  # `features` indices ending the stride-2, 4, 8, 16 and 32 stages
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _conv_bn_relu6(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """``conv = [expand 1x1 conv-BN-ReLU6 (if t > 1), depthwise 3x3 conv-BN-ReLU6, 1x1 conv, BN]``."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        layers = [_conv_bn_relu6(cin, mid, 1)] if expand != 1 else []
        layers += [_conv_bn_relu6(mid, mid, 3, stride, groups=mid),
                   nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2Encoder(nn.Module):
    """MobileNetV2 (width 1.0) feature extractor (2.22 M parameters).

    Forward: ``(N, 3, H, W)`` ImageNet-normalised image -> list of five feature maps
    ``(N, C_i, ceil(H / s_i), ceil(W / s_i))`` at strides ``s_i = 2, 4, 8, 16, 32`` with
    ``C_i = out_channels = [16, 24, 32, 96, 1280]``: the outputs of ``features[1]``, ``[3]``,
    ``[6]``, ``[13]`` and ``[18]`` (the final 1x1 conv to 1280 channels).
    """

    arch = "mobilenet_v2"
    classifier_prefixes = ("classifier.",)
    out_channels = [16, 24, 32, 96, 1280]

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn_relu6(3, 32, 3, 2)]
        cin = 32
        for t, c, n, s in _SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(_conv_bn_relu6(cin, 1280, 1))
        self.features = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _TAPS:
                features.append(x)
        return features


def normalise_input(x: torch.Tensor) -> torch.Tensor:
    """ImageNet mean/std normalisation of an ``(N, 3, H, W)`` image with values in ``[0, 1]``."""
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std
