"""Voxel-axis orientation: reorder a volume's axes so they point along given world directions
(nibabel's orientation transforms; MONAI's ``Orientation``), and back.

An orientation transform ``ornt`` is nibabel's (3, 2) array: row i holds the output axis of input
axis i and -1 to flip it (else 1). Axis codes name the world direction (RAS: x right, y anterior,
z superior) each array axis X, Y, Z points to, e.g. ``"RAS"``, ``"LPS"``.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["reorientation", "codes_transform", "source_axes", "apply_ornt", "invert_ornt", "stored_in",
           "mixed_orientations"]


def reorientation(affine: np.ndarray, axcodes: str) -> np.ndarray | None:
    """The nibabel orientation transform (3, 2) that reorders a volume stored with ``affine`` so its
    voxel axes point, as nearly as the affine allows, along ``axcodes`` (e.g. ``"RAS"``: X to the
    right, Y anterior, Z superior; nibabel's ``as_closest_canonical`` for ``"RAS"``, MONAI's
    ``Orientation``), or None when the volume already has that orientation."""
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    ornt = ornt_transform(io_orientation(np.asarray(affine, dtype=float)), axcodes2ornt(tuple(axcodes)))
    return None if np.array_equal(ornt, [[0, 1], [1, 1], [2, 1]]) else ornt


def source_axes(ornt: np.ndarray) -> list[int]:
    """Per output axis j, the input axis that ``ornt`` moves there: reorders shapes and spacings."""
    return [int(i) for i in np.argsort(ornt[:, 0])]


def apply_ornt(x, ornt: np.ndarray):
    """Apply a :func:`reorientation` to the last three (spatial) axes of a numpy array or tensor
    (..., X, Y, Z): flip, then permute, as ``nibabel.apply_orientation`` does."""
    lead = x.ndim - 3
    flips = tuple(lead + i for i in range(3) if ornt[i, 1] < 0)
    perm = (*range(lead), *(lead + i for i in source_axes(ornt)))
    if isinstance(x, torch.Tensor):
        return (x.flip(flips) if flips else x).permute(perm).contiguous()
    return np.ascontiguousarray(np.flip(x, flips).transpose(perm))


def invert_ornt(ornt: np.ndarray) -> np.ndarray:
    """The orientation transform that undoes ``ornt``."""
    inv = np.zeros_like(ornt)
    for i, (j, flip) in enumerate(ornt):
        inv[int(j)] = (i, flip)
    return inv


def codes_transform(codes: str, target: str) -> np.ndarray:
    """The orientation transform from a volume stored ``codes`` (e.g. ``"PIL"``) to ``target``."""
    from nibabel.orientations import axcodes2ornt, ornt_transform

    return ornt_transform(axcodes2ornt(tuple(codes)), axcodes2ornt(tuple(target)))


def stored_in(counts: dict[str, int]) -> str:
    """``"the cases are stored in 2 orientations (RAS 60, LPS 4 cases)"``, most common first
    (``counts``: cases by axis codes)."""
    seen = ", ".join(f"{code} {n}" for code, n in sorted(counts.items(), key=lambda x: -x[1]))
    return f"the cases are stored in {len(counts)} orientations ({seen} cases)"


def mixed_orientations(cases) -> str | None:
    """A warning when ``cases`` (:class:`~semi3d.data.case.Case`, any grid) point their voxel axes in
    more than one orientation (:func:`stored_in`, then what to set); None when they agree (as they
    all do after ``data.preprocess.orientation``)."""
    from collections import Counter

    from nibabel.orientations import aff2axcodes

    counts = Counter("".join(aff2axcodes(c.affine)) for c in cases)
    if len(counts) <= 1:
        return None
    return (f"{stored_in(counts)}, so the network sees the anatomy in different orientations; set "
            "data.preprocess.orientation: RAS to reorient them")
