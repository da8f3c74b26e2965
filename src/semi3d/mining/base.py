"""The promptable-segmenter interface shared by SAM and the weight-free refiner.

Coordinates follow SAM: a 2D image has shape ``(C, H, W)`` (channels, rows, columns); a point is
``(x, y)`` = ``(column, row)`` in pixels, pixel centres at integer coordinates; a box is
``(x0, y0, x1, y1)``, the inclusive pixel coordinates of its top-left and bottom-right pixels.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import StrictModel
from ..errors import InputError

__all__ = ["Prompt", "PromptableSegmenter", "Segmentation", "Strict", "as_image"]


Strict = StrictModel  # the mining option models' base (semi3d.config's)


@dataclass
class Prompt:
    """Prompts for one object of a 2D image ``(C, H, W)``.

    Attributes:
        box: ``(4,)`` float ``(x0, y0, x1, y1)``, or None.
        points: ``(P, 2)`` float ``(x, y)`` points.
        labels: ``(P,)`` int, 1 = positive (on the object), 0 = negative (background).
        mask: ``(H, W)`` float in [0, 1] (or bool): a previous mask of the object, or None.
        cls: the foreground class index the object belongs to (1..K-1).
    """

    box: np.ndarray | None = None
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    mask: np.ndarray | None = None
    cls: int = 1

    @property
    def positive(self) -> np.ndarray:
        """``(P+, 2)`` positive points."""
        return np.asarray(self.points).reshape(-1, 2)[np.asarray(self.labels) == 1]

    @property
    def negative(self) -> np.ndarray:
        """``(P-, 2)`` negative points."""
        return np.asarray(self.points).reshape(-1, 2)[np.asarray(self.labels) == 0]

    def validate(self, shape: tuple[int, int], where: str = "prompt") -> None:
        """Raise :class:`InputError` when a coordinate lies outside an ``(H, W)`` image or the
        arrays disagree in shape."""
        h, w = shape
        pts = np.asarray(self.points, dtype=float).reshape(-1, 2)
        if len(pts) != len(np.asarray(self.labels).reshape(-1)):
            raise InputError(where, f"{len(pts)} points but {np.asarray(self.labels).size} labels")
        if not set(np.asarray(self.labels).reshape(-1).tolist()) <= {0, 1}:
            raise InputError(where, "point labels must be 1 (positive) or 0 (negative)")
        if len(pts) and (not np.isfinite(pts).all() or pts[:, 0].min() < 0 or pts[:, 1].min() < 0
                         or pts[:, 0].max() > w - 1 or pts[:, 1].max() > h - 1):
            raise InputError(where, f"a point lies outside the {h}x{w} image")
        if self.box is not None:
            b = np.asarray(self.box, dtype=float).reshape(-1)
            if b.size != 4 or not np.isfinite(b).all() or b[0] > b[2] or b[1] > b[3]:
                raise InputError(where, f"box must be (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1, got {b.tolist()}")
            if b[0] < 0 or b[1] < 0 or b[2] > w - 1 or b[3] > h - 1:
                raise InputError(where, f"box {b.tolist()} lies outside the {h}x{w} image")
        if self.mask is not None and np.asarray(self.mask).shape != (h, w):
            raise InputError(where, f"mask shape {np.asarray(self.mask).shape} != image shape {(h, w)}")
        if self.box is None and not len(pts) and self.mask is None:
            raise InputError(where, "empty prompt: give a box, points or a mask")


@dataclass
class Segmentation:
    """Candidate masks of one prompt.

    Attributes:
        masks: ``(M, H, W)`` bool.
        scores: ``(M,)`` float, the segmenter's own quality estimate (higher is better; SAM's
            predicted IoU, the random walker's probability margin).
        probs: ``(M, H, W)`` float32 foreground probabilities, or None.
    """

    masks: np.ndarray
    scores: np.ndarray
    probs: np.ndarray | None = None

    def best(self) -> tuple[np.ndarray, float, np.ndarray]:
        """``(mask (H, W) bool, score, prob (H, W) float32)`` of the highest-scored candidate."""
        i = int(np.argmax(self.scores))
        prob = self.probs[i] if self.probs is not None else self.masks[i].astype(np.float32)
        return self.masks[i], float(self.scores[i]), prob


def as_image(image: np.ndarray | torch.Tensor, where: str = "image") -> np.ndarray:
    """A ``(C, H, W)`` float32 numpy copy of ``image`` (``(H, W)`` gets a channel axis); finite values only."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or min(arr.shape) < 1:
        raise InputError(where, f"expected a 2D image (C, H, W), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InputError(where, "image has NaN/inf values")
    return arr


class PromptableSegmenter(ABC):
    """Segments one object of a 2D image from its prompts.

    ``key`` names the image (e.g. ``(case_id, slice_index)``) so that an implementation can cache
    per-image work (SAM's image embedding) across prompts and mining rounds.
    """

    @abstractmethod
    def segment(self, image: np.ndarray | torch.Tensor, prompt: Prompt, key: Hashable | None = None) -> Segmentation:
        """Masks of the object prompted in ``image`` ``(C, H, W)``: :class:`Segmentation` of ``(M, H, W)``."""

    def segment_many(self, image: np.ndarray | torch.Tensor, prompts: Sequence[Prompt],
                     key: Hashable | None = None) -> list[Segmentation]:
        """One :class:`Segmentation` per prompt (objects of the same image)."""
        return [self.segment(image, p, key) for p in prompts]

    def plan_cache(self, n_images: int, folder: Path) -> str | None:
        """Prepare to be called on ``n_images`` images every mining round (e.g. cache their
        embeddings in ``folder``); returns a line for the user, or None. Default: nothing to do."""
        return None
