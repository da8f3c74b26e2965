"""Label-map post-processing: keep the largest connected component of each foreground class, or
of all foreground classes together.

nnU-Net's "remove all but the largest component" and the LA semi-supervised literature's
``getLargestCC`` (BCP, UA-MT's ``nms``), for single-structure targets such as the left atrium.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from scipy import ndimage

from ..errors import InputError

_FULL = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity (skimage's / BCP's default in 3D)


def keep_largest_component(label: np.ndarray, num_classes: int, classes: Sequence[int] | None = None) -> np.ndarray:
    """A copy of the label map ``label`` (X, Y, Z; integer classes) in which every voxel of a
    foreground class outside that class's largest 26-connected component becomes background (0).
    ``classes``: the foreground classes this applies to (default every one, 1..K-1); the others keep
    all their components. Ties keep the component found first in C order."""
    out = np.array(label, copy=True)
    for c in range(1, num_classes) if classes is None else classes:
        out[_outside_largest(out == c)] = 0
    return out


def keep_largest_foreground(label: np.ndarray) -> np.ndarray:
    """A copy of the label map ``label`` (X, Y, Z; integer classes, 0 = background) in which every
    foreground voxel outside the largest 26-connected component of all foreground classes together
    becomes background: nnU-Net's first post-processing step (one connected structure made of
    several classes, such as a kidney with its tumour). Ties as :func:`keep_largest_component`."""
    out = np.array(label, copy=True)
    out[_outside_largest(out > 0)] = 0
    return out


def _outside_largest(mask: np.ndarray) -> np.ndarray:
    """The voxels of the boolean ``mask`` outside its largest 26-connected component (the first
    found in C order on a tie); all False when it has one component or none."""
    if not mask.any():
        return mask
    comp, k = ndimage.label(mask, _FULL)
    if k < 2:
        return np.zeros_like(mask)
    return mask & (comp != np.bincount(comp.ravel())[1:].argmax() + 1)


def largest_component_share(mask: np.ndarray) -> float | None:
    """The share of the boolean ``mask``'s (X, Y, Z) voxels in its largest 26-connected component
    (1.0: one component), None when it is empty: how much :func:`keep_largest_foreground` would
    remove from a true label when ``mask`` is its foreground. Labelled inside its bounding box."""
    box = ndimage.find_objects(np.asarray(mask, dtype=np.int8))
    if not box:
        return None
    sizes = np.bincount(ndimage.label(mask[box[0]], _FULL)[0].ravel())[1:]
    return float(sizes.max() / sizes.sum())


def largest_component_shares(label: np.ndarray, num_classes: int) -> list[float | None]:
    """For each foreground class 1..K-1 of the label map ``label`` (X, Y, Z; integer classes), the
    share of its voxels in its largest 26-connected component (1.0: one component), or None where
    the class is absent: how much :func:`keep_largest_component` would remove from a true label.
    Each class is labelled inside its bounding box only."""
    out: list[float | None] = []
    for c, box in enumerate(ndimage.find_objects(np.asarray(label, dtype=np.int64), max_label=num_classes - 1), 1):
        out.append(None if box is None else largest_component_share(label[box] == c))
    return out


def largest_component_per_class(label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """:func:`keep_largest_component` for every sample of a batch (N, X, Y, Z), on its device."""
    arr = label.detach().cpu().numpy()
    out = np.stack([keep_largest_component(a, num_classes) for a in arr]) if len(arr) else arr.copy()
    return torch.from_numpy(out).to(label.device)


def check_classes(classes: Sequence[int] | None, num_classes: int, where: str) -> None:
    """Refuse, naming ``where``, a ``classes`` list (``inference.largest_component_classes``) with a
    class that is not one of the model's foreground classes 1..K-1."""
    bad = [c for c in classes or () if not 1 <= c < num_classes]
    if bad:
        raise InputError(where, f"class {bad[0]} is not a foreground class of this model (1..{num_classes - 1})")


POSTPROCESS = {"none": lambda label, num_classes, classes=None: label, "largest_component": keep_largest_component}


def postprocess_label(label: np.ndarray, num_classes: int, postprocess: str = "none",
                      classes: Sequence[int] | None = None, largest_foreground: bool = False) -> np.ndarray:
    """The label map ``label`` (X, Y, Z) post-processed as a model's ``inference`` block says:
    with ``largest_foreground`` first :func:`keep_largest_foreground`, then ``postprocess``
    (``"none"`` or ``"largest_component"``, for ``classes``: ``largest_component_classes``)."""
    if largest_foreground:
        label = keep_largest_foreground(label)
    return POSTPROCESS[postprocess](label, num_classes, classes)
