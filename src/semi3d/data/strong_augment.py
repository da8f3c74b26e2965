"""A&D's strong augmentation (Wang & Li, NeurIPS 2023; ``get_StrongAug(patch, 3, 0.7)``) in torch,
on batches already on the training device: used by method ``ad`` and, for a labelled-only
comparison with the same augmentation, by ``supervised`` (option ``strong_augment``)."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import InputError


@dataclass
class StrongAugment:
    """A&D's strong augmentation (``get_StrongAug(patch, 3, 0.7)``): per sample ``select`` of the six
    transforms, each applied with probability ``p``. Ranges are (low, high), drawn uniformly.

    Attributes:
        rotation: max absolute angle in degrees of a rotation in the (X, Y) plane.
        scale: sampling-grid scale (< 1 zooms in; batchgenerators' convention as A&D's 0.7 .. 1.0).
        blur_sigma: Gaussian blur sigma in voxels.
        brightness: multiplicative factor.
        contrast: factor around the sample mean, clipped to the sample's range.
        gamma: gamma on the [0, 1]-rescaled sample, mean and std restored (``retain_stats``).
    """

    select: int = 3
    p: float = 0.7
    rotation: float = 15.0
    scale: tuple[float, float] = (0.7, 1.0)
    blur_sigma: tuple[float, float] = (0.7, 1.3)
    brightness: tuple[float, float] = (0.7, 1.3)
    contrast: tuple[float, float] = (0.7, 1.3)
    gamma: tuple[float, float] = (0.7, 1.3)

    TRANSFORMS = ("rotation", "scale", "blur", "brightness", "contrast", "gamma")

    def __post_init__(self) -> None:
        where = "method.options.strong_augment"
        if not isinstance(self.select, int) or not 0 <= self.select <= 6:
            raise InputError(f"{where}.select", f"expected an int in 0..6, got {self.select!r}")
        if not 0.0 <= float(self.p) <= 1.0:
            raise InputError(f"{where}.p", f"expected a probability, got {self.p!r}")
        if float(self.rotation) < 0:
            raise InputError(f"{where}.rotation", f"expected an angle >= 0, got {self.rotation!r}")
        for name in ("scale", "blur_sigma", "brightness", "contrast", "gamma"):
            v = getattr(self, name)
            try:
                lo, hi = (float(x) for x in v)
            except (TypeError, ValueError):
                raise InputError(f"{where}.{name}", f"expected [low, high], got {v!r}") from None
            if not 0 < lo <= hi:
                raise InputError(f"{where}.{name}", f"expected 0 < low <= high, got {v!r}")
            setattr(self, name, (lo, hi))

    @classmethod
    def from_option(cls, value: Any) -> "StrongAugment | None":
        if value is False or value is None:
            return None
        if value is True:
            return cls()
        if not isinstance(value, dict):
            raise InputError("method.options.strong_augment", f"expected true, false or a mapping, got {value!r}")
        valid = {f.name for f in fields(cls)}
        bad = set(value) - valid
        if bad:
            raise InputError("method.options.strong_augment", f"unknown key {sorted(bad)[0]!r}; valid: {', '.join(sorted(valid))}")
        return cls(**value)


def _uniform(lo_hi: tuple[float, float], device) -> float:
    lo, hi = lo_hi
    return float(lo + (hi - lo) * torch.rand((), device=device))


def _spatial(img: torch.Tensor, lab: torch.Tensor | None, angle: float, scale: float):
    """Rotate by ``angle`` (radians) in the (X, Y) plane and sample on a grid scaled by ``scale``,
    about the patch centre, in voxel units. img (C, X, Y, Z); lab (X, Y, Z) or None."""
    size = torch.tensor(img.shape[1:], dtype=torch.float32, device=img.device)
    c, s = math.cos(angle), math.sin(angle)
    a = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], device=img.device) * scale
    a = torch.diag(2 / size) @ a @ torch.diag(size / 2)  # voxel offsets -> normalised coordinates
    rev = [2, 1, 0]  # affine_grid's (x, y, z) index the last, middle, first spatial axes
    theta = torch.zeros(1, 3, 4, device=img.device)
    theta[0, :, :3] = a[rev][:, rev]
    grid = F.affine_grid(theta, [1, img.shape[0], *img.shape[1:]], align_corners=False)
    out = F.grid_sample(img[None].float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    if lab is not None:
        lab = F.grid_sample(lab[None, None].float(), grid, mode="nearest", padding_mode="zeros",
                            align_corners=False)[0, 0].round().to(lab.dtype)
    return out.to(img.dtype), lab


def _blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (C, X, Y, Z), radius ``ceil(3 sigma)``, replicate padding."""
    r = max(1, math.ceil(3 * sigma))
    x = torch.arange(-r, r + 1, dtype=torch.float32, device=img.device)
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    out = img[None].float()
    c = img.shape[0]
    for axis in range(3):
        shape = [1, 1, 1]
        shape[axis] = 2 * r + 1
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = r
        out = F.conv3d(F.pad(out, pad, mode="replicate"), g.view(1, 1, *shape).expand(c, 1, *shape).contiguous(),
                       groups=c)
    return out[0].to(img.dtype)


def _gamma_retain(img: torch.Tensor, gamma: float) -> torch.Tensor:
    """batchgenerators' ``augment_gamma(retain_stats=True)`` per channel of (C, X, Y, Z)."""
    dims = (1, 2, 3)
    mean, std = img.mean(dims, keepdim=True), img.std(dims, keepdim=True)
    lo = img.amin(dims, keepdim=True)
    rng = img.amax(dims, keepdim=True) - lo
    out = ((img - lo) / (rng + 1e-7)).clamp_min(0).pow(gamma) * rng + lo
    out = out - out.mean(dims, keepdim=True)
    return out / (out.std(dims, keepdim=True) + 1e-8) * std + mean


def strong_augment(image: torch.Tensor, label: torch.Tensor | None,
                   cfg: StrongAugment) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Apply :class:`StrongAugment` to a batch: image (N, C, X, Y, Z), label (N, X, Y, Z) or None.

    Randomness from the global torch RNG (on the image's device), which the trainer checkpoints.
    Spatial transforms move image (bilinear, zero padding) and label (nearest, background padding)
    alike; intensity transforms touch the image only.
    """
    dev = image.device
    images, labels = [], []
    for i in range(image.shape[0]):
        img, lab = image[i], None if label is None else label[i]
        chosen = set(torch.randperm(6, device=dev)[: cfg.select].tolist())
        on = {name: (k in chosen) and bool(torch.rand((), device=dev) < cfg.p)
              for k, name in enumerate(StrongAugment.TRANSFORMS)}
        angle = math.radians(_uniform((-cfg.rotation, cfg.rotation), dev)) if on["rotation"] else 0.0
        scale = _uniform(cfg.scale, dev) if on["scale"] else 1.0
        if angle != 0.0 or scale != 1.0:
            img, lab = _spatial(img, lab, angle, scale)
        if on["blur"]:
            img = _blur(img, _uniform(cfg.blur_sigma, dev))
        if on["brightness"]:
            img = img * _uniform(cfg.brightness, dev)
        if on["contrast"]:
            f = _uniform(cfg.contrast, dev)
            dims = (1, 2, 3)
            mean = img.mean(dims, keepdim=True)
            img = ((img - mean) * f + mean).clamp(img.amin(dims, keepdim=True), img.amax(dims, keepdim=True))
        if on["gamma"]:
            img = _gamma_retain(img, _uniform(cfg.gamma, dev))
        images.append(img)
        labels.append(lab)
    out = torch.stack(images)
    if image.is_contiguous(memory_format=torch.channels_last_3d):
        out = out.contiguous(memory_format=torch.channels_last_3d)
    return out, (None if label is None else torch.stack(labels))  # type: ignore[arg-type]
