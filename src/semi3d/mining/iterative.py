"""Iterative refinement of one slice: prompts from the current mask -> refine -> repeat.

Round ``r = 1..rounds``: prompts are drawn from the current label map (round 1: the small model's
prediction), every prompt is refined by the promptable segmenter (its best candidate), the refined
masks form the new label map; from round 2 on (``feed_mask=True``) each prompt also carries the
previous round's refined mask of its component as a mask prompt. The loop stops early when the
label map changes by less than ``tol`` (``1 - Dice`` between consecutive label maps, mean over the
foreground classes present in either) or when no prompt can be drawn.
"""
from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np
import torch
from pydantic import Field

from ..losses import without_ignored
from .base import PromptableSegmenter, Strict, as_image
from .prompts import PromptOptions, prompts_from_label

__all__ = ["IterateOptions", "RefinedSlice", "label_dice", "refine_iteratively"]


class IterateOptions(Strict):
    """Rounds of refinement per slice (see the module docstring)."""

    rounds: int = Field(2, ge=1)
    tol: float = Field(0.01, ge=0)
    feed_mask: bool = True
    feed_model_mask: bool = True  # round 1 also gives the small model's own mask as a mask prompt


@dataclass
class RefinedSlice:
    """Result of :func:`refine_iteratively`.

    Attributes:
        label: ``(H, W)`` uint8 refined label map.
        score: mean of the segmenter's scores over the last round's prompts, weighted by the pixels
            each prompt's mask holds in the refined label (None when no prompt could be drawn from
            the input: an empty prediction).
        rounds: refinement rounds run.
        changes: ``1 - Dice`` between consecutive label maps, one per round (the first against the input).
        n_prompts: prompts of the last round.
    """

    label: np.ndarray
    score: float | None
    rounds: int
    changes: list[float] = field(default_factory=list)
    n_prompts: int = 0


def label_dice(a: np.ndarray, b: np.ndarray, num_classes: int) -> float:
    """Mean Dice over the foreground classes present in ``a`` or ``b`` (1.0 when neither has any);
    voxels where the reference ``b`` holds :data:`~semi3d.losses.IGNORE_INDEX` are left out."""
    a, b = without_ignored(np.asarray(a), np.asarray(b))
    scores = []
    for c in range(1, num_classes):
        x, y = a == c, b == c
        n = int(x.sum()) + int(y.sum())
        if n:
            scores.append(2.0 * int((x & y).sum()) / n)
    return float(np.mean(scores)) if scores else 1.0


def refine_iteratively(segmenter: PromptableSegmenter, image: np.ndarray | torch.Tensor, label: np.ndarray,
                       num_classes: int = 2, prompts: PromptOptions | None = None,
                       options: IterateOptions | None = None, rng: np.random.Generator | None = None,
                       key: Hashable | None = None) -> RefinedSlice:
    """Refine a predicted label map ``(H, W)`` of ``image`` ``(C, H, W)`` (see the module docstring).

    Where the refined masks of several prompts overlap, the pixel goes to the prompt with the
    higher foreground probability.
    """
    o = options or IterateOptions()
    rng = rng if rng is not None else np.random.default_rng(0)
    img = as_image(image)
    current = np.asarray(label).astype(np.uint8)
    changes: list[float] = []
    score: float | None = None
    n_prompts = 0
    for r in range(o.rounds):
        plist = prompts_from_label(current, num_classes, prompts, rng)
        if not plist:
            if r == 0:
                return RefinedSlice(current.copy(), None, 0, [], 0)
            new, score, n_prompts = np.zeros_like(current), 0.0, 0
        else:
            feed = o.feed_mask if r > 0 else o.feed_model_mask
            if not feed:
                for p in plist:
                    p.mask = None
            segs = segmenter.segment_many(img, plist, key)
            new = np.zeros_like(current)
            best = np.zeros(current.shape, np.float32)
            owner = np.full(current.shape, -1)
            scores = []
            for i, (p, s) in enumerate(zip(plist, segs)):
                mask, sc, prob = s.best()
                take = mask & (prob > best)
                new[take] = p.cls
                best[take] = prob[take]
                owner[take] = i
                scores.append(sc)
            w = np.bincount(owner[owner >= 0], minlength=len(plist)).astype(float)
            score = float(np.average(scores, weights=w)) if w.sum() > 0 else float(np.mean(scores))
            n_prompts = len(plist)
        changes.append(1.0 - label_dice(new, current, num_classes))
        current = new
        if changes[-1] < o.tol or n_prompts == 0:
            break
    return RefinedSlice(current, score, len(changes), changes, n_prompts)
