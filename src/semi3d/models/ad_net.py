"""The A&D network (Wang & Li, NeurIPS 2023, "Towards Generic Semi-Supervised Framework for
Volumetric Medical Image Segmentation"): one V-Net-style encoder shared by three decoders.

Layout (``widths[l] = width * 2**l`` channels at level ``l = 0 .. depth-1``; stages of
``min(l + 1, 3)`` ``conv3x3x3 -> norm -> ReLU`` blocks, i.e. the V-Net's 1, 2, 3, 3, 3 encoder and
3, 3, 2, 1 decoder blocks for ``depth = 5``; ``2x2x2`` stride-2 (transposed) convolutions between
levels; additive skips; a ``1x1x1`` output conv):

- two input stems, each one conv stage to ``widths[0]`` channels:
  ``stem`` (the plain path) takes the image ``(N, C, X, Y, Z)``; ``stem_diffusion`` takes the image
  concatenated with a noisy label map ``x_t`` ``(N, K, X, Y, Z)``;
- the shared ``encoder`` (levels 1 .. depth-1);
- ``decoder_diffusion`` (A&D's xi: the diffusion decoder, predicts ``x_0``), ``decoder_difficulty``
  (psi: the difficulty-aware decoder) and ``decoder_student`` (theta: the student, the only one used
  for inference). The three decoders have identical parameter names and shapes.

Time conditioning (diffusion path only): a sinusoidal embedding of the time step (``temb_dim``
features, as DDPM) goes through ``Linear -> SiLU -> Linear`` (``4 * temb_dim`` features); per level
a ``Linear`` projection of ``SiLU`` of it is added, as a per-channel bias, to the features entering
each conv stage: after the diffusion stem, after every down-sampling conv of the encoder and after
every up-sampling conv of the diffusion decoder. The plain path runs the same encoder with no
time embedding. These projections belong to :class:`ADNet`, not to the encoder or the decoders, so
the student (plain stem + encoder + student decoder) is a stand-alone :class:`ADStudent` with no
unused parameters.

:class:`ADStudent` is registered in :data:`semi3d.registry.NETS3D` as ``"ad_student"``; an
``ADNet``'s ``student`` submodule is one, so ``ADNet.student.state_dict()`` loads into
``NETS3D.build("ad_student", ...)`` with the same options, which is how a saved A&D model is
rebuilt for ``semi3d predict`` / ``evaluate``.

Differences from the authors' ``DiffVNet``: norm before ReLU (as :class:`~semi3d.models.vnet.VNet`),
time embedding added once per stage (theirs after every conv but the last of a stage), optional
``conv_dropout`` per conv block (theirs: always 0.1).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
import torch.nn.functional as F

from ..errors import InputError
from .nets3d import register_class, check_input
from .vnet import vnet_resample, vnet_stage

__all__ = ["ADNet", "ADStudent", "timestep_embedding"]

NORMS = ("batchnorm", "instancenorm", "groupnorm", "none")


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """DDPM's sinusoidal embedding: ``(N,)`` time steps -> ``(N, dim)`` float32
    ``[sin(t w_0) .. sin(t w_{h-1}), cos(t w_0) .. cos(t w_{h-1})]`` with ``h = dim // 2`` and
    ``w_i = exp(-ln(10000) i / (h - 1))`` (zero-padded to ``dim`` when odd)."""
    half = dim // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device) * -(math.log(10000) / max(half - 1, 1)))
    arg = t.float()[:, None] * freq[None]
    emb = torch.cat([torch.sin(arg), torch.cos(arg)], 1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def _norm(kind: str, ch: int) -> list[nn.Module]:
    if kind == "batchnorm":
        return [nn.BatchNorm3d(ch)]
    if kind == "instancenorm":
        return [nn.InstanceNorm3d(ch, affine=True)]
    if kind == "groupnorm":
        return [nn.GroupNorm(math.gcd(ch, 8), ch)]
    return []


def _stage(n_convs: int, cin: int, cout: int, norm: str, conv_dropout: float) -> nn.Sequential:
    return vnet_stage(n_convs, cin, cout, norm, conv_dropout, norms=_norm)


def _resample(cin: int, cout: int, norm: str, up: bool) -> nn.Sequential:
    return vnet_resample(cin, cout, norm, up, norms=_norm)


def _n_convs(level: int) -> int:
    return min(level + 1, 3)


def _bias(x: torch.Tensor, shift: torch.Tensor | None) -> torch.Tensor:
    return x if shift is None else x + shift.to(x.dtype)[:, :, None, None, None]


def _check(in_channels, num_classes, width, depth, normalization, dropout, conv_dropout, where: str) -> None:
    for key, v, lo in (("in_channels", in_channels, 1), ("num_classes", num_classes, 1), ("width", width, 1),
                       ("depth", depth, 2)):
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise InputError(where, f"{key} must be an int >= {lo}, got {v!r}")
    if normalization not in NORMS:
        raise InputError(where, f"normalization must be one of {', '.join(NORMS)}, got {normalization!r}")
    for key, v in (("dropout", dropout), ("conv_dropout", conv_dropout)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0.0 <= v < 1.0:
            raise InputError(where, f"{key} must be in [0, 1), got {v!r}")


class ADEncoder(nn.Module):
    """Levels 1 .. depth-1 of the V-Net encoder; ``forward(x0, shifts)`` returns the features of
    every level ``[x0, x1, ..., x_{depth-1}]`` (``x0`` is the stem output). ``shifts[l]`` (``(N,
    widths[l])``, ``l >= 1``) is added after the down-sampling conv into level ``l``. ``dropout``
    (``Dropout3d``) acts on the bottleneck features."""

    def __init__(self, widths: Sequence[int], norm: str, dropout: float = 0.0, conv_dropout: float = 0.0):
        super().__init__()
        d = len(widths)
        self.down = nn.ModuleList(_resample(widths[lv - 1], widths[lv], norm, up=False) for lv in range(1, d))
        self.stages = nn.ModuleList(_stage(_n_convs(lv), widths[lv], widths[lv], norm, conv_dropout) for lv in range(1, d))
        self.dropout = nn.Dropout3d(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x0: torch.Tensor, shifts: Sequence[torch.Tensor | None] | None = None) -> list[torch.Tensor]:
        feats, x = [x0], x0
        for lv, (down, stage) in enumerate(zip(self.down, self.stages), start=1):
            x = stage(_bias(down(x), None if shifts is None else shifts[lv]))
            feats.append(x)
        feats[-1] = self.dropout(feats[-1])
        return feats


class ADDecoder(nn.Module):
    """V-Net decoder from the features of every level to logits ``(N, K, X, Y, Z)``. ``shifts[i]``
    is added after the ``i``-th up-sampling conv (from the bottom). ``dropout`` acts on the last
    features before the output conv."""

    def __init__(self, widths: Sequence[int], num_classes: int, norm: str, dropout: float = 0.0,
                 conv_dropout: float = 0.0):
        super().__init__()
        levels = list(reversed(range(len(widths) - 1)))
        self.up = nn.ModuleList(_resample(widths[lv + 1], widths[lv], norm, up=True) for lv in levels)
        self.stages = nn.ModuleList(_stage(_n_convs(lv), widths[lv], widths[lv], norm, conv_dropout) for lv in levels)
        self.dropout = nn.Dropout3d(dropout) if dropout > 0 else nn.Identity()
        self.out_conv = nn.Conv3d(widths[0], num_classes, 1)

    def forward(self, feats: Sequence[torch.Tensor], shifts: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        x = feats[-1]
        for i, (up, stage) in enumerate(zip(self.up, self.stages)):
            x = stage(_bias(up(x), None if shifts is None else shifts[i]) + feats[len(feats) - 2 - i])
        return self.out_conv(self.dropout(x))


class ADStudent(nn.Module):
    """The inference network of A&D: plain stem + shared encoder + student decoder, a V-Net.

    Args:
        in_channels: image channels ``C``.
        num_classes: classes ``K``.
        width: channels of the first level (A&D: 32; the LA V-Net baselines: 16).
        depth: resolution levels (5 as V-Net); inputs must be multiples of ``2 ** (depth - 1)``.
        normalization: ``"batchnorm"`` (A&D), ``"instancenorm"`` (affine), ``"groupnorm"``
            (``gcd(ch, 8)`` groups) or ``"none"``.
        dropout: ``Dropout3d`` on the bottleneck and the last decoder features (A&D: 0.5), training
            mode only.
        conv_dropout: ``Dropout3d`` after every conv block (A&D: 0.1), training mode only.

    Shapes: ``(N, C, X, Y, Z)`` -> logits ``(N, K, X, Y, Z)``.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 16, depth: int = 5,
                 normalization: str = "batchnorm", dropout: float = 0.0, conv_dropout: float = 0.0):
        super().__init__()
        _check(in_channels, num_classes, width, depth, normalization, dropout, conv_dropout, "model ad_student")
        self.widths = [width * 2**lv for lv in range(depth)]
        self.divisor = (2 ** (depth - 1),) * 3
        self.stem = _stage(1, in_channels, width, normalization, conv_dropout)
        self.encoder = ADEncoder(self.widths, normalization, dropout, conv_dropout)
        self.decoder = ADDecoder(self.widths, num_classes, normalization, dropout, conv_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.divisor, "ADStudent")
        return self.decoder(self.encoder(self.stem(x)))


class ADNet(nn.Module):
    """Plain and diffusion stems, shared encoder, diffusion / difficulty-aware / student decoders.

    Args: those of :class:`ADStudent`, plus ``temb_dim``: size of the sinusoidal time embedding
    (its MLP has ``4 * temb_dim`` features; A&D: 128 -> 512).

    Calls:
        ``denoise(x_t, t, image)``: diffusion path, ``x_t`` ``(N, K, X, Y, Z)``, ``t`` ``(N,)``
        int -> ``x_0`` prediction ``(N, K, X, Y, Z)`` (also read as logits).
        ``features(image)``: plain path up to the encoder (list of level features).
        ``forward(image)``: the student's logits (``student(image)``).
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, depth: int = 5,
                 normalization: str = "batchnorm", dropout: float = 0.0, conv_dropout: float = 0.0,
                 temb_dim: int = 128):
        super().__init__()
        if not isinstance(temb_dim, int) or isinstance(temb_dim, bool) or temb_dim < 2:
            raise InputError("model ad_net", f"temb_dim must be an int >= 2, got {temb_dim!r}")
        self.num_classes, self.temb_dim = num_classes, temb_dim
        self.student = ADStudent(in_channels, num_classes, width, depth, normalization, dropout, conv_dropout)
        w = self.student.widths
        self.divisor = self.student.divisor
        self.stem_diffusion = _stage(1, in_channels + num_classes, width, normalization, conv_dropout)
        self.decoder_diffusion = ADDecoder(w, num_classes, normalization, dropout, conv_dropout)
        self.decoder_difficulty = ADDecoder(w, num_classes, normalization, dropout, conv_dropout)
        hidden = 4 * temb_dim
        self.time_mlp = nn.Sequential(nn.Linear(temb_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.temb_encoder = nn.ModuleList(nn.Linear(hidden, c) for c in w)  # level 0 = the diffusion stem
        self.temb_decoder = nn.ModuleList(nn.Linear(hidden, w[lv]) for lv in reversed(range(len(w) - 1)))

    # the shared parts, by their A&D names
    @property
    def stem(self) -> nn.Module:
        return self.student.stem

    @property
    def encoder(self) -> ADEncoder:
        return self.student.encoder

    @property
    def decoder_student(self) -> ADDecoder:
        return self.student.decoder

    def time_shifts(self, t: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per-level biases (encoder levels 0..depth-1, decoder up-convs bottom-up) for steps ``t``."""
        h = F.silu(self.time_mlp(timestep_embedding(t, self.temb_dim)))
        return [p(h) for p in self.temb_encoder], [p(h) for p in self.temb_decoder]

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        check_input(image, self.divisor, "ADNet")
        enc, dec = self.time_shifts(t)
        x0 = _bias(self.stem_diffusion(torch.cat([image, x_t.to(image.dtype)], 1)), enc[0])
        return self.decoder_diffusion(self.encoder(x0, enc), dec)

    def features(self, image: torch.Tensor) -> list[torch.Tensor]:
        check_input(image, self.divisor, "ADNet")
        return self.encoder(self.stem(image))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.student(image)


register_class("ad_student", ADStudent)
