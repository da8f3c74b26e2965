"""Prompts from a predicted mask: per connected component a box, positive and negative points.

For every connected component (8-connected, at least ``min_area`` pixels) of a class mask
``(H, W)``:

- **box**: the component's tight bounding box ``(x0, y0, x1, y1)`` (inclusive pixel coordinates),
  grown on every side by ``margin * side + margin_px`` (side = the box width for x, height for y),
  each coordinate then shifted by a seeded uniform jitter in ``+-jitter * side``, and clipped to
  the image;
- **positive points**: up to ``n_positive`` interior points taken greedily at the maxima of the
  component's Euclidean distance transform (EDT): the deepest pixel first, then the deepest pixel
  farther than ``0.5 * max EDT`` (at least 1.5 px) from every chosen one, among pixels at depth
  ``>= max(1, point_depth * max EDT)``; all lie inside the component;
- **negative points**: up to ``n_negative`` points of the ring around it, the pixels whose
  distance to the class's predicted foreground lies in ``[ring_inner, ring_outer]`` px and whose
  distance to this component is at most ``ring_outer``; spread by farthest-point sampling from a
  seeded random start. All lie outside every predicted component of the class.

With ``min_confidence`` > 0 the mining loop first removes from the small model's label map every
component whose mean probability of its class is below it (:func:`confident_label`), so only
confident components are prompted and become pseudo-labels (beyond the paper). On Kvasir at 25 %
of the labels, LiteMedSAM's pseudo-labels from every component's box were no better than the model's
own masks (0.749 vs 0.755 Dice), from the largest component's box only (``max_components: 1``) 1
Dice better, and from true boxes 0.948: the boxes limit it (``benchmarks/mine_probe.py``).

Points are ``(x, y)`` = ``(column, row)``, see :mod:`semi3d.mining.base`.
"""
from __future__ import annotations

import numpy as np
from pydantic import Field, model_validator
from scipy import ndimage

from .base import Prompt, Strict

__all__ = ["PromptOptions", "confident_label", "mask_components", "prompts_from_label", "prompts_from_mask"]

_EIGHT = np.ones((3, 3), bool)


class PromptOptions(Strict):
    """How prompts are drawn from a mask (see the module docstring)."""

    margin: float = Field(0.05, ge=0)
    margin_px: float = Field(2.0, ge=0)
    jitter: float = Field(0.05, ge=0)
    n_positive: int = Field(3, ge=0)
    point_depth: float = Field(0.3, ge=0, le=1)
    n_negative: int = Field(4, ge=0)
    ring_inner: float = Field(3.0, ge=1)
    ring_outer: float = Field(8.0, ge=1)
    min_area: int = Field(8, ge=1)
    max_components: int | None = Field(None, ge=1)
    box: bool = True
    min_confidence: float = Field(0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _ring(self) -> "PromptOptions":
        if self.ring_outer < self.ring_inner:
            raise ValueError("ring_outer must be >= ring_inner")
        return self


def mask_components(mask: np.ndarray, min_area: int = 1, max_components: int | None = None) -> list[np.ndarray]:
    """8-connected components of a ``(H, W)`` mask with at least ``min_area`` pixels, largest first
    (ties in scan order), at most ``max_components``; each a ``(H, W)`` bool mask."""
    lab, n = ndimage.label(np.asarray(mask, bool), structure=_EIGHT)
    if n == 0:
        return []
    areas = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    order = [i for i in np.argsort(-areas, kind="stable") if areas[i] >= min_area]
    if max_components is not None:
        order = order[:max_components]
    return [lab == i + 1 for i in order]


def confident_label(prob: np.ndarray, min_confidence: float) -> np.ndarray:
    """The argmax label map ``(H, W)`` (uint8) of class probabilities ``prob`` ``(K, H, W)``, in which
    every 8-connected component of a foreground class whose mean probability of that class is below
    ``min_confidence`` becomes background (0)."""
    label = np.asarray(prob).argmax(0).astype(np.uint8)
    if min_confidence <= 0:
        return label
    for c in range(1, prob.shape[0]):
        lab, n = ndimage.label(label == c, structure=_EIGHT)
        if n:
            mean = ndimage.mean(prob[c], lab, index=np.arange(1, n + 1))
            label[np.isin(lab, np.flatnonzero(np.asarray(mean) < min_confidence) + 1)] = 0
    return label


def _box(comp: np.ndarray, o: PromptOptions, rng: np.random.Generator) -> np.ndarray:
    h, w = comp.shape
    rows, cols = np.flatnonzero(comp.any(1)), np.flatnonzero(comp.any(0))
    y0, y1, x0, x1 = float(rows[0]), float(rows[-1]), float(cols[0]), float(cols[-1])
    sw, sh = x1 - x0 + 1, y1 - y0 + 1
    mx, my = o.margin * sw + o.margin_px, o.margin * sh + o.margin_px
    box = np.array([x0 - mx, y0 - my, x1 + mx, y1 + my])
    if o.jitter > 0:
        box += rng.uniform(-1, 1, 4) * o.jitter * np.array([sw, sh, sw, sh])
    box[[0, 2]] = np.clip(box[[0, 2]], 0, w - 1)
    box[[1, 3]] = np.clip(box[[1, 3]], 0, h - 1)
    # jitter never loses the component's own extent entirely: keep x0 <= x1, y0 <= y1
    box[0], box[2] = min(box[0], box[2]), max(box[0], box[2])
    box[1], box[3] = min(box[1], box[3]), max(box[1], box[3])
    return box.astype(np.float32)


def _positive_points(comp: np.ndarray, n: int, depth: float) -> np.ndarray:
    if n == 0:
        return np.zeros((0, 2), np.float32)
    edt = ndimage.distance_transform_edt(np.pad(comp, 1))[1:-1, 1:-1]  # the image border counts as outside
    top = float(edt.max())
    cand = edt >= max(1.0, depth * top)
    radius = max(1.5, 0.5 * top)
    rr, cc = np.indices(comp.shape)
    chosen = []
    while len(chosen) < n and cand.any():
        score = np.where(cand, edt, -1.0)
        r, c = np.unravel_index(int(np.argmax(score)), score.shape)
        chosen.append((c, r))
        cand &= (rr - r) ** 2 + (cc - c) ** 2 > radius ** 2
    return np.asarray(chosen, np.float32).reshape(-1, 2)


def _negative_points(comp: np.ndarray, dist_fg: np.ndarray, o: PromptOptions,
                     rng: np.random.Generator) -> np.ndarray:
    if o.n_negative == 0:
        return np.zeros((0, 2), np.float32)
    dist_comp = ndimage.distance_transform_edt(~comp)
    ring = (dist_fg >= o.ring_inner) & (dist_fg <= o.ring_outer) & (dist_comp <= o.ring_outer)
    rows, cols = np.nonzero(ring)
    if not len(rows):
        return np.zeros((0, 2), np.float32)
    pts = np.stack([cols, rows], 1).astype(np.float64)
    chosen = [int(rng.integers(len(pts)))]
    d = np.linalg.norm(pts - pts[chosen[0]], axis=1)
    while len(chosen) < min(o.n_negative, len(pts)):
        i = int(np.argmax(d))
        chosen.append(i)
        d = np.minimum(d, np.linalg.norm(pts - pts[i], axis=1))
    return pts[chosen].astype(np.float32)


def prompts_from_mask(mask: np.ndarray, options: PromptOptions | None = None, rng: np.random.Generator | None = None,
                      cls: int = 1) -> list[Prompt]:
    """One :class:`Prompt` per connected component of a binary ``(H, W)`` mask (largest first).

    Each prompt carries the component as its ``mask`` (callers drop it when they do not want a mask
    prompt). ``rng`` drives the box jitter and the start of the negative sampling (default seed 0).
    """
    o = options or PromptOptions()
    rng = rng if rng is not None else np.random.default_rng(0)
    mask = np.asarray(mask, bool)
    comps = mask_components(mask, o.min_area, o.max_components)
    if not comps:
        return []
    dist_fg = ndimage.distance_transform_edt(~mask)
    out = []
    for comp in comps:
        pos = _positive_points(comp, o.n_positive, o.point_depth)
        neg = _negative_points(comp, dist_fg, o, rng)
        box = _box(comp, o, rng) if o.box else None
        points = np.concatenate([pos, neg]).astype(np.float32)
        labels = np.concatenate([np.ones(len(pos), np.int64), np.zeros(len(neg), np.int64)])
        out.append(Prompt(box=box, points=points, labels=labels, mask=comp, cls=cls))
    return out


def prompts_from_label(label: np.ndarray, num_classes: int, options: PromptOptions | None = None,
                       rng: np.random.Generator | None = None) -> list[Prompt]:
    """Prompts of every foreground class ``1..K-1`` of an integer ``(H, W)`` label map, class by class."""
    rng = rng if rng is not None else np.random.default_rng(0)
    out: list[Prompt] = []
    for c in range(1, num_classes):
        out += prompts_from_mask(np.asarray(label) == c, options, rng, cls=c)
    return out
