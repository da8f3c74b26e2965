"""2D samples for the mining loop: slices of 3D cases, or 2D image folders (Kvasir-SEG layout).

Every sample is a :class:`Slice2D`: image ``(C, H, W)`` float32 z-scored (per case for volumes,
per image and channel for 2D images), label ``(H, W)`` uint8 or None.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import Field

from ..config import SplitsConfig
from ..data.case import Case
from ..errors import InputError
from ..models.slicing import spatial_dim
from .base import Strict

__all__ = ["ImageFolderConfig", "Slice2D", "read_image_folder", "stack_slices", "volume_slices"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
IMAGE_CHANNELS, IMAGE_CLASSES = 3, 2  # a 2D image sample: RGB, a binary mask


@dataclass
class Slice2D:
    """One 2D sample.

    Attributes:
        id: ``"<case>:<index>"`` for a slice of a volume, the file stem for a 2D image.
        image: ``(C, H, W)`` float32.
        label: ``(H, W)`` uint8 class indices, or None.
        group: the case id (volumes) or the image id (2D images).
        index: the slice index along the slicing axis (0 for 2D images).
    """

    id: str
    image: np.ndarray
    label: np.ndarray | None
    group: str
    index: int = 0


def volume_slices(case: Case, axis: int = 2, with_label: bool = True) -> list[Slice2D]:
    """The slices of a case along spatial ``axis`` (0 = X, 1 = Y, 2 = Z), in index order.

    Image ``(C, X, Y, Z)`` -> slices ``(C, A, B)``, label ``(X, Y, Z)`` -> ``(A, B)``, the two
    remaining axes in their original order (as :func:`semi3d.models.slicing.volume_to_slices`).
    """
    d = spatial_dim(axis) - 1  # axis within (C, X, Y, Z)
    image = np.moveaxis(case.image, d, 0)  # (S, C, A, B)
    label = np.moveaxis(case.label, d - 1, 0) if (with_label and case.label is not None) else None
    return [Slice2D(f"{case.id}:{i}", np.ascontiguousarray(image[i], np.float32),
                    None if label is None else np.ascontiguousarray(label[i]).astype(np.uint8), case.id, i)
            for i in range(image.shape[0])]


def stack_slices(masks: Sequence[np.ndarray], axis: int = 2) -> np.ndarray:
    """Slices ``(A, B)`` in index order -> a volume ``(X, Y, Z)``: the inverse of :func:`volume_slices`."""
    return np.moveaxis(np.stack(masks), 0, spatial_dim(axis) - 2)


class ImageFolderConfig(Strict):
    """A folder of 2D images with binary masks (Kvasir-SEG layout: ``images/*.jpg``,
    ``masks/*.jpg``, mask pixel ``> threshold`` = foreground). Images without a mask file of the
    same stem form the unlabelled pool. ``splits`` as in the 3D configs (``labelled``,
    ``validation``, ``unlabelled``); ``max_size`` resizes the longest side (None: native size)."""

    root: Path
    images: str = "images"
    masks: str = "masks"
    threshold: int = Field(127, ge=0, le=254)
    max_size: int | None = Field(256, ge=8)
    splits: SplitsConfig = SplitsConfig()


def index_images(folder: Path) -> dict[str, Path]:
    """``{stem: path}`` of the image files in ``folder`` (hidden files ignored), in name order."""
    if not folder.is_dir():
        raise InputError(folder, "no such folder")
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith("."):
            if p.stem in out:
                raise InputError(folder, f"two files for image {p.stem!r}: {out[p.stem].name} and {p.name}")
            out[p.stem] = p
    return out


def _open(path: Path, mode: str):
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.convert(mode)
    except Exception as exc:  # PIL raises UnidentifiedImageError/OSError/...
        raise InputError(path, f"cannot read: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def _size(w: int, h: int, max_size: int | None) -> tuple[int, int]:
    if max_size is None or max(w, h) <= max_size:
        return w, h
    s = max_size / max(w, h)
    return max(1, round(w * s)), max(1, round(h * s))


def read_image_sample(image_path: Path, mask_path: Path | None, threshold: int = 127,
                      max_size: int | None = None) -> Slice2D:
    """One 2D sample: the image as RGB ``(3, H, W)`` (grey images repeated), z-scored per channel;
    the mask (read as grey) ``> threshold`` as label 1. Both resized so the longest side is at most
    ``max_size`` (image bilinear; mask bilinear on grey values, then thresholded)."""
    from PIL import Image

    im = _open(image_path, "RGB")
    native = im.size
    size = _size(*im.size, max_size)
    if size != im.size:
        im = im.resize(size, Image.BILINEAR)
    image = np.moveaxis(np.asarray(im, np.float32), -1, 0)
    mean, std = image.mean((1, 2), keepdims=True), image.std((1, 2), keepdims=True)
    image = ((image - mean) / np.maximum(std, 1e-6)).astype(np.float32)
    label = None
    if mask_path is not None:
        m = _open(mask_path, "L")
        if m.size != native:
            raise InputError(mask_path, f"mask size {m.size} does not match image size of {image_path.name}")
        if size != m.size:
            m = m.resize(size, Image.BILINEAR)
        label = (np.asarray(m) > threshold).astype(np.uint8)
    return Slice2D(image_path.stem, image, label, image_path.stem, 0)


def read_image_folder(cfg: ImageFolderConfig) -> tuple[dict[str, Slice2D], list[str], set[str]]:
    """All samples of an image folder: ``({id: Slice2D}, ids in name order, ids with a mask)``."""
    root = Path(cfg.root)
    images = index_images(root / cfg.images)
    masks = index_images(root / cfg.masks) if (root / cfg.masks).is_dir() else {}
    if not images:
        raise InputError(root / cfg.images, f"no image files ({', '.join(IMAGE_SUFFIXES)})")
    orphans = sorted(set(masks) - set(images))
    if orphans:
        raise InputError(root / cfg.masks, f"mask {orphans[0]!r} has no image")
    samples = {k: read_image_sample(p, masks.get(k), cfg.threshold, cfg.max_size) for k, p in images.items()}
    return samples, list(images), set(masks)
