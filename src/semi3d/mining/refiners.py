"""Weight-free promptable segmenters: the random walker (Grady 2006) seeded by the prompts, and the
identity (the prompt's own mask back: self-training, the control that attributes a mining gain).

The problem is solved on the prompt's region only: the box grown by ``crop_margin`` pixels
(without a box: the bounding box of the points and mask grown by a quarter of its size plus
``crop_margin``; the whole image when that covers it). Seeds inside that region:

- background: every pixel outside the box, a disc of radius ``point_radius`` around each negative
  point and, with a mask prompt, every pixel farther than ``mask_ring`` px outside the mask;
- foreground (wins over background): a disc around each positive point and, with a mask prompt,
  the mask's core, its pixels at depth ``>= max(1, mask_core * max depth)`` (Euclidean distance to
  the mask's outside).

Edge weights between 4-neighbours are those of ``skimage.segmentation.random_walker`` (mode
``"bf"``, ``eps = 1e-10``): ``exp(-beta * |g|^2 / (10 * std(region) * sqrt(C))) + eps`` where
``|g|^2`` sums the squared intensity differences over the ``C`` channels (tested equal to skimage's
probabilities when it is installed), computed on the region smoothed by a Gaussian of
``smooth_sigma`` px (0: skimage's weights exactly). Smoothing by 1 px was measured clearly better on
54 perturbed masks (Dice 0.78) of noisy synthetic MRI-like slices, refined with box, points and the
mask as prompts: refined Dice 0.88 vs 0.78 without, and only with it did the score correlate with
the refined Dice (r = 0.48 vs -0.17). The foreground probability of the unseeded pixels solves the
combinatorial Dirichlet problem ``L_uu p_u = -L_us p_s`` (sparse direct solve up to
``direct_max`` unseeded pixels, Jacobi-preconditioned conjugate gradients beyond). Mask =
probability > 0.5 (pixels outside the region are background); score = mean probability margin
``|2p - 1|`` over the unseeded pixels (1 when all are seeded; 0 when there is no foreground or no
background seed).
"""
from __future__ import annotations

from collections.abc import Hashable

import numpy as np
import scipy.sparse as sp
import torch
from pydantic import Field
from scipy import ndimage
from scipy.sparse.linalg import cg, spsolve

from ..errors import InputError
from .base import Prompt, PromptableSegmenter, Segmentation, Strict, as_image

__all__ = ["IdentityRefiner", "RandomWalkerOptions", "RandomWalkerRefiner", "random_walker_probability"]


class RandomWalkerOptions(Strict):
    """Options of :class:`RandomWalkerRefiner` (see the module docstring)."""

    beta: float = Field(130.0, gt=0)
    smooth_sigma: float = Field(1.0, ge=0)
    eps: float = Field(1e-10, gt=0)
    point_radius: float = Field(1.0, ge=0)
    crop_margin: int = Field(4, ge=1)
    mask_core: float = Field(0.5, ge=0, le=1)
    mask_ring: float = Field(3.0, ge=0)
    direct_max: int = Field(40000, ge=1)


def random_walker_probability(image: np.ndarray, seeds: np.ndarray, beta: float = 130.0, eps: float = 1e-10,
                              direct_max: int = 40000) -> np.ndarray:
    """Foreground probability ``(H, W)`` float32 of a two-label random walker.

    Args:
        image: ``(C, H, W)`` float.
        seeds: ``(H, W)`` int: 0 = unseeded, 1 = foreground seed, 2 = background seed; both seed
            kinds must be present.
        beta, eps: edge weights ``exp(-beta * |g|^2 / (10 * std * sqrt(C))) + eps`` (skimage's).
        direct_max: sparse direct solve up to this many unseeded pixels, conjugate gradients beyond.
    """
    c, h, w = image.shape
    data = image.astype(np.float64)
    std = float(data.std())
    scale = beta / (10.0 * max(std, 1e-12)) / (np.sqrt(c) if c > 1 else 1.0)
    idx = np.arange(h * w).reshape(h, w)
    gh = ((data[:, :, 1:] - data[:, :, :-1]) ** 2).sum(0)  # (H, W-1)
    gv = ((data[:, 1:, :] - data[:, :-1, :]) ** 2).sum(0)  # (H-1, W)
    a = np.concatenate([idx[:, :-1].ravel(), idx[:-1, :].ravel()])
    b = np.concatenate([idx[:, 1:].ravel(), idx[1:, :].ravel()])
    wgt = np.exp(-scale * np.concatenate([gh.ravel(), gv.ravel()])) + eps
    n = h * w
    adj = sp.coo_matrix((np.concatenate([wgt, wgt]), (np.concatenate([a, b]), np.concatenate([b, a]))), shape=(n, n))
    lap = (sp.diags(np.asarray(adj.sum(1)).ravel()) - adj).tocsr()
    s = seeds.ravel()
    unknown = np.flatnonzero(s == 0)
    seeded = np.flatnonzero(s != 0)
    prob = (s == 1).astype(np.float64)
    if unknown.size:
        l_uu = lap[unknown][:, unknown].tocsc()
        rhs = -(lap[unknown][:, seeded] @ prob[seeded])
        if unknown.size <= direct_max:
            x = spsolve(l_uu, rhs)
        else:
            diag = l_uu.diagonal()
            x, _ = cg(l_uu, rhs, rtol=1e-4, maxiter=2000, M=sp.diags(1.0 / diag))
        prob[unknown] = np.clip(x, 0.0, 1.0)
    return prob.reshape(h, w).astype(np.float32)


def _disc(shape: tuple[int, int], points: np.ndarray, radius: float) -> np.ndarray:
    out = np.zeros(shape, bool)
    if not len(points):
        return out
    rr, cc = np.indices(shape)
    for x, y in points:
        out |= (rr - y) ** 2 + (cc - x) ** 2 <= max(radius, 0.5) ** 2
    return out


class RandomWalkerRefiner(PromptableSegmenter):
    """Random-walker refinement seeded by the prompts (see the module docstring); no weights.

    Returns one candidate per prompt: :class:`Segmentation` with masks ``(1, H, W)``, scores
    ``(1,)`` and probs ``(1, H, W)``.
    """

    def __init__(self, options: RandomWalkerOptions | dict | None = None, **kwargs):
        if isinstance(options, dict) or options is None:
            options = RandomWalkerOptions(**{**(options or {}), **kwargs})
        self.options = options
        self.calls = 0

    def _region(self, prompt: Prompt, h: int, w: int) -> tuple[slice, slice]:
        m = self.options.crop_margin
        if prompt.box is not None:
            x0, y0, x1, y1 = np.asarray(prompt.box, float)
            pad_x = pad_y = m
        else:
            xs, ys = list(prompt.points[:, 0]), list(prompt.points[:, 1])
            if prompt.mask is not None and np.asarray(prompt.mask).any():
                rows, cols = np.nonzero(np.asarray(prompt.mask) > 0.5)
                xs += [cols.min(), cols.max()]
                ys += [rows.min(), rows.max()]
            x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
            pad_x, pad_y = 0.25 * (x1 - x0 + 1) + m, 0.25 * (y1 - y0 + 1) + m
        r0, r1 = max(int(np.floor(y0 - pad_y)), 0), min(int(np.ceil(y1 + pad_y)) + 1, h)
        c0, c1 = max(int(np.floor(x0 - pad_x)), 0), min(int(np.ceil(x1 + pad_x)) + 1, w)
        return slice(r0, r1), slice(c0, c1)

    def seeds(self, shape: tuple[int, int], prompt: Prompt) -> np.ndarray:
        """Seed map ``(H, W)`` int (0 unseeded, 1 foreground, 2 background) of a prompt on the full image."""
        o = self.options
        h, w = shape
        seeds = np.zeros((h, w), np.int8)
        if prompt.box is not None:
            x0, y0, x1, y1 = np.asarray(prompt.box, float)
            rr, cc = np.indices((h, w))
            seeds[(cc < np.floor(x0)) | (cc > np.ceil(x1)) | (rr < np.floor(y0)) | (rr > np.ceil(y1))] = 2
        seeds[_disc((h, w), prompt.negative, o.point_radius)] = 2
        if prompt.mask is not None:
            mask = np.asarray(prompt.mask, float) > 0.5
            if mask.any():
                seeds[ndimage.distance_transform_edt(~mask) > o.mask_ring] = 2
                depth = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
                seeds[depth >= max(1.0, o.mask_core * depth.max())] = 1
        seeds[_disc((h, w), prompt.positive, o.point_radius)] = 1
        return seeds

    def segment(self, image: np.ndarray | torch.Tensor, prompt: Prompt, key: Hashable | None = None) -> Segmentation:
        img = as_image(image)
        _, h, w = img.shape
        prompt.validate((h, w))
        self.calls += 1
        rs, cs = self._region(prompt, h, w)
        seeds = self.seeds((h, w), prompt)[rs, cs]
        prob = np.zeros((h, w), np.float32)
        has_fg, has_bg = (seeds == 1).any(), (seeds == 2).any()
        if not has_fg:
            score = 0.0
        elif not has_bg:
            prob[rs, cs] = 1.0
            score = 0.0
        else:
            o = self.options
            region = img[:, rs, cs]
            if o.smooth_sigma > 0:
                region = ndimage.gaussian_filter(region, (0, o.smooth_sigma, o.smooth_sigma), mode="nearest")
            p = random_walker_probability(region, seeds, o.beta, o.eps, o.direct_max)
            prob[rs, cs] = p
            free = seeds == 0
            score = float(np.abs(2 * p[free] - 1).mean()) if free.any() else 1.0
        mask = prob > 0.5
        return Segmentation(mask[None], np.array([score], np.float32), prob[None])


class IdentityRefiner(PromptableSegmenter):
    """Returns each prompt's mask unchanged (score 1): mining with it is self-training on the
    small model's own masks with the same prompts' components, selection and fine-tuning.

    Needs the mask prompt (``iterate.feed_model_mask: true``, the default). One candidate per
    prompt: masks ``(1, H, W)``, scores ``(1,)``, probs ``(1, H, W)``.
    """

    def __init__(self, options: dict | None = None):
        if options:
            raise InputError("refiner.options (identity)", f"takes no options, got {sorted(options)}")

    def segment(self, image: np.ndarray | torch.Tensor, prompt: Prompt, key: Hashable | None = None) -> Segmentation:
        img = as_image(image)
        prompt.validate(img.shape[1:])
        if prompt.mask is None:
            raise InputError("refiner (identity)", "needs the small model's mask as a prompt "
                             "(iterate.feed_model_mask: true)")
        mask = np.asarray(prompt.mask, np.float32) > 0.5
        return Segmentation(mask[None], np.ones(1, np.float32), mask[None].astype(np.float32))
