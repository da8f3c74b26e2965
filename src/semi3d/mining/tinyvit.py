"""TinyViT image encoder as LiteMedSAM configures it, in pure torch (no ``timm``).

A port of ``tiny_vit_sam.py`` (MobileSAM / LiteMedSAM, Apache-2.0) for inference: no drop path,
no gradient checkpointing, no layer-wise learning-rate decay; module and parameter names are the
original's, so LiteMedSAM's ``image_encoder.*`` weights load strictly.

Input ``(B, 3, S, S)`` (LiteMedSAM: ``S = 256``, intensities in [0, 1]); output the image embedding
``(B, D, S / 4, S / 4)`` (``D = 256``). Stage 0 is convolutional (MBConv blocks), stages 1.. are
windowed attention blocks; every stage but the last ends in a patch merging that halves the
resolution, except the last merge, which keeps it. As in LiteMedSAM the patch embedding is two
1x1 convolutions (no downsampling), so the stages run at ``S, S/2, S/4, S/4``.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TinyViT"]


class ConvBN(nn.Sequential):
    """Convolution without bias (``c``) then batch norm (``bn``)."""

    def __init__(self, a: int, b: int, ks: int = 1, stride: int = 1, pad: int = 0, groups: int = 1):
        super().__init__()
        self.add_module("c", nn.Conv2d(a, b, ks, stride, pad, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(b))


class MBConv(nn.Module):
    """Inverted residual block ``(B, C, H, W) -> (B, C, H, W)``."""

    def __init__(self, dim: int, expand: float):
        super().__init__()
        h = int(dim * expand)
        self.conv1, self.conv2, self.conv3 = ConvBN(dim, h), ConvBN(h, h, 3, 1, 1, groups=h), ConvBN(h, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv3(F.gelu(self.conv2(F.gelu(self.conv1(x)))))
        return F.gelu(x + y)


class PatchMerging(nn.Module):
    """``(B, C, H, W)`` or tokens ``(B, H*W, C)`` -> tokens ``(B, H'*W', C')`` (``stride`` 2 or 1)."""

    def __init__(self, resolution: tuple[int, int], dim: int, out_dim: int, stride: int):
        super().__init__()
        self.resolution = resolution
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            h, w = self.resolution
            x = x.view(len(x), h, w, -1).permute(0, 3, 1, 2)
        x = self.conv3(F.gelu(self.conv2(F.gelu(self.conv1(x)))))
        return x.flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention over a ``w x w`` window with learned relative-position biases;
    tokens ``(B, w*w, C) -> (B, w*w, C)``."""

    def __init__(self, dim: int, num_heads: int, window: int):
        super().__init__()
        self.num_heads, self.key_dim = num_heads, dim // num_heads
        self.scale = self.key_dim ** -0.5
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        points = list(itertools.product(range(window), range(window)))
        offsets: dict[tuple[int, int], int] = {}
        idxs = [offsets.setdefault((abs(p[0] - q[0]), abs(p[1] - q[1])), len(offsets)) for p in points for q in points]
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, len(offsets)))
        self.register_buffer("attention_bias_idxs", torch.tensor(idxs).view(len(points), len(points)),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, n, self.num_heads, -1).split([self.key_dim] * 3, dim=3)
        q, k, v = (t.permute(0, 2, 1, 3) for t in (q, k, v))
        attn = (q @ k.transpose(-2, -1)) * self.scale + self.attention_biases[:, self.attention_bias_idxs]
        return self.proj((attn.softmax(-1) @ v).transpose(1, 2).reshape(b, n, -1))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Windowed attention (windows zero-padded at the bottom/right), a depthwise ``local_conv``
    and an MLP; tokens ``(B, H*W, C) -> (B, H*W, C)``."""

    def __init__(self, dim: int, resolution: tuple[int, int], num_heads: int, window: int, mlp_ratio: float,
                 local_conv: int = 3):
        super().__init__()
        self.resolution, self.window = resolution, window
        self.attn = Attention(dim, num_heads, window)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = ConvBN(dim, dim, local_conv, 1, local_conv // 2, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (h, w), ws = self.resolution, self.window
        b, n, c = x.shape
        y = x.view(b, h, w, c)
        pb, pr = (ws - h % ws) % ws, (ws - w % ws) % ws
        y = F.pad(y, (0, 0, 0, pr, 0, pb))
        ph, pw = h + pb, w + pr
        y = y.view(b, ph // ws, ws, pw // ws, ws, c).transpose(2, 3).reshape(-1, ws * ws, c)
        y = self.attn(y).view(b, ph // ws, pw // ws, ws, ws, c).transpose(2, 3).reshape(b, ph, pw, c)
        x = x + y[:, :h, :w].reshape(b, n, c)
        x = self.local_conv(x.transpose(1, 2).reshape(b, c, h, w)).view(b, c, n).transpose(1, 2)
        return x + self.mlp(x)


class Stage(nn.Module):
    def __init__(self, blocks: Sequence[nn.Module], downsample: nn.Module | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x) if self.downsample is not None else x


class LayerNorm2d(nn.Module):
    """Layer norm over the channels of ``(B, C, H, W)``."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight, self.bias, self.eps = nn.Parameter(torch.ones(channels)), nn.Parameter(torch.zeros(channels)), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        return self.weight[:, None, None] * ((x - u) / torch.sqrt(s + self.eps)) + self.bias[:, None, None]


class TinyViT(nn.Module):
    """The encoder (see the module docstring). Defaults: LiteMedSAM's TinyViT-5M.

    Args:
        img_size: ``S``, the square input side in pixels (a multiple of 4).
        embed_dims, depths, num_heads, window_sizes: per stage (stage 0 is convolutional; its
            ``num_heads`` / ``window_sizes`` entries are unused).
        out_dim: ``D``, the embedding channels (the SAM decoder's width).

    ``forward(pixel_values (B, 3, S, S))`` returns ``(embedding (B, D, S/4, S/4),)``: a tuple, the
    shape ``transformers.SamModel.get_image_embeddings`` expects of a vision encoder.
    """

    def __init__(self, img_size: int = 256, embed_dims: Sequence[int] = (64, 128, 160, 320),
                 depths: Sequence[int] = (2, 2, 6, 2), num_heads: Sequence[int] = (2, 4, 5, 10),
                 window_sizes: Sequence[int] = (7, 7, 14, 7), mlp_ratio: float = 4.0, mbconv_expand: float = 4.0,
                 out_dim: int = 256, in_chans: int = 3):
        super().__init__()
        n = len(depths)
        if n < 2 or img_size % 4:
            raise ValueError("TinyViT needs >= 2 stages and an img_size that is a multiple of 4")
        e = embed_dims
        self.patch_embed = nn.Module()
        self.patch_embed.seq = nn.Sequential(ConvBN(in_chans, e[0] // 2), nn.GELU(), ConvBN(e[0] // 2, e[0]))
        self.layers = nn.ModuleList()
        res = img_size
        for i in range(n):
            stride = 1 if i == n - 2 else 2  # the last merge keeps the resolution
            down = PatchMerging((res, res), e[i], e[i + 1], stride) if i < n - 1 else None
            if i == 0:
                blocks: list[nn.Module] = [MBConv(e[0], mbconv_expand) for _ in range(depths[0])]
            else:
                blocks = [TinyViTBlock(e[i], (res, res), num_heads[i], window_sizes[i], mlp_ratio)
                          for _ in range(depths[i])]
            self.layers.append(Stage(blocks, down))
            if down is not None:
                res //= stride
        self.out_res = res
        self.neck = nn.Sequential(nn.Conv2d(e[-1], out_dim, 1, bias=False), LayerNorm2d(out_dim),
                                  nn.Conv2d(out_dim, out_dim, 3, padding=1, bias=False), LayerNorm2d(out_dim))

    def forward(self, pixel_values: torch.Tensor, **_: object) -> tuple[torch.Tensor]:
        x = self.patch_embed.seq(pixel_values)
        for layer in self.layers:
            x = layer(x)
        b, _, c = x.shape
        x = x.view(b, self.out_res, self.out_res, c).permute(0, 3, 1, 2)
        return (self.neck(x),)
