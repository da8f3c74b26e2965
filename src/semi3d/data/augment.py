"""Seeded, batched, torch-based augmentation of training patches.

Tensors are batches of patches: image (N, C, X, Y, Z) float, label (N, X, Y, Z) integer class
indices. Spatial axes in the config are numbered 0, 1, 2 for X, Y, Z. Every random number is drawn
from the caller's ``torch.Generator``: the same generator state gives the same output, so a
resumed run replays the same augmentations.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import AugmentConfig
from ..errors import InputError

__all__ = ["AugmentConfig", "augment"]


def _uniform(u: torch.Tensor, lo_hi: tuple[float, float]) -> list[float]:
    lo, hi = lo_hi
    return (lo + (hi - lo) * u).tolist()


def _zoom(x: torch.Tensor, factor: float, mode: str, padding: str) -> torch.Tensor:
    """Zoom a (1, C, X, Y, Z) float tensor about its centre by ``factor``, keeping its size."""
    theta = torch.zeros(1, 3, 4, dtype=x.dtype, device=x.device)
    theta[0, 0, 0] = theta[0, 1, 1] = theta[0, 2, 2] = 1.0 / factor
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode=padding, align_corners=False)


def _gamma(x: torch.Tensor, gamma: float) -> torch.Tensor:
    """nnU-Net style gamma on each channel of (C, X, Y, Z), within the channel's [min, max]."""
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    rng = x.amax(dim=(1, 2, 3), keepdim=True) - lo
    safe = torch.where(rng > 0, rng, torch.ones_like(rng))
    return ((x - lo) / safe).clamp(0, 1).pow(gamma) * rng + lo


def _contrast(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Scale each channel of (C, X, Y, Z) around its mean, clipped to its original range."""
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * factor + mean).clamp(min=lo, max=hi)


def augment(
    image: torch.Tensor,
    label: torch.Tensor | None,
    cfg: AugmentConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Randomly augment a batch of patches; parameters are drawn independently per sample.

    Spatial transforms (isotropic zoom about the centre, rot90, flips) are applied identically to
    image and label; zoom uses trilinear sampling for the image and nearest sampling for the label,
    both padded with their border values (one rule, so they stay aligned at the patch faces).
    Intensity transforms (gamma, contrast, brightness, gaussian noise) touch the image only. The inputs are never modified.

    Args:
        image: float tensor (N, C, X, Y, Z).
        label: integer tensor (N, X, Y, Z) of class indices, or None.
        cfg: the :class:`AugmentConfig`.
        generator: the only source of randomness (its device is used for the draws).

    Returns:
        (image, label) with the input shapes, dtypes and devices (label None if None was given).
    """
    if image.ndim != 5 or not image.is_floating_point():
        raise InputError("augment", f"image must be a float tensor (N,C,X,Y,Z), got {image.dtype} {tuple(image.shape)}")
    n, spatial = image.shape[0], tuple(image.shape[2:])
    if label is not None and (tuple(label.shape) != (n, *spatial) or label.is_floating_point()):
        raise InputError("augment", f"label must be an integer tensor {(n, *spatial)}, got {label.dtype} {tuple(label.shape)}")

    gdev = generator.device

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=generator, device=gdev)

    # every parameter drawn upfront in a fixed order: the stream does not depend on outcomes
    flip = (rand(n, len(cfg.flip_axes)) < cfg.p_flip).tolist()
    rot_on = (rand(n, len(cfg.rot90_axes)) < cfg.p_rot90).tolist()
    rot_k = torch.randint(0, 4, (n, len(cfg.rot90_axes)), generator=generator, device=gdev).tolist()
    draws = {}
    for name, rng in (("scale", cfg.scale_range), ("gamma", cfg.gamma_range),
                      ("contrast", cfg.contrast_range), ("brightness", cfg.brightness_range)):
        on = (rand(n) < getattr(cfg, f"p_{name}")).tolist()
        draws[name] = [v if o else None for o, v in zip(on, _uniform(rand(n), rng))]
    noise_on = (rand(n) < cfg.p_noise).tolist() if cfg.noise_std > 0 else [False] * n

    images, labels = [], []
    for i in range(n):
        img = image[i]
        lab = None if label is None else label[i]
        s = draws["scale"][i]
        if s is not None and s != 1.0:
            img = _zoom(img[None], s, "bilinear", "border")[0]
            if lab is not None:
                lab = _zoom(lab[None, None].float(), s, "nearest", "border")[0, 0].round().to(label.dtype)
        for (a, b), on, k in zip(cfg.rot90_axes, rot_on[i], rot_k[i]):
            if on and k % 4 and spatial[a] == spatial[b]:
                img = torch.rot90(img, k, dims=(a + 1, b + 1))
                lab = None if lab is None else torch.rot90(lab, k, dims=(a, b))
        axes = [a for a, on in zip(cfg.flip_axes, flip[i]) if on]
        if axes:
            img = torch.flip(img, dims=[a + 1 for a in axes])
            lab = None if lab is None else torch.flip(lab, dims=axes)
        if draws["gamma"][i] is not None:
            img = _gamma(img, draws["gamma"][i])
        if draws["contrast"][i] is not None:
            img = _contrast(img, draws["contrast"][i])
        if draws["brightness"][i] is not None:
            img = img * draws["brightness"][i]
        if noise_on[i]:
            noise = torch.randn(img.shape, generator=generator, device=gdev, dtype=torch.float32)
            img = img + cfg.noise_std * noise.to(device=img.device, dtype=img.dtype)
        images.append(img)
        labels.append(lab)
    out_label = None if label is None else torch.stack(labels)  # type: ignore[arg-type]
    return torch.stack(images), out_label
