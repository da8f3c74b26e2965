"""The 3D route: mined slice pseudo-labels stacked into volumes, written as extra 3D targets.

For every unlabelled case, ``<out>/labels/<case>.nii.gz`` (or ``.npy``) holds the refined slice
labels stacked along the slicing axis on the case's (preprocessed) grid with its affine, and
``<out>/kept/<case>.npy`` a bool vector: which slices passed the selection (slices that were not
mined hold 0 and are not kept). ``<out>/index.json`` lists, per case, the files, the number of
slices and of kept slices. A 3D trainer can read the labels and mask its loss with the kept slices.
For 2D image datasets, kept pseudo-masks are written as ``<out>/<image>.png`` (0 / 255).
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..data.case import Case
from ..data.preprocess import _safe_name
from ..data.readers import write_volume
from ..errors import InputError
from .data2d import stack_slices

__all__ = ["write_pseudo_masks_png", "write_pseudo_volumes"]


def write_pseudo_volumes(out_dir: str | Path, cases: Mapping[str, Case], labels: Mapping[str, dict[int, np.ndarray]],
                         kept: Mapping[str, dict[int, bool]], axis: int = 2, suffix: str = ".nii.gz") -> dict:
    """Write stacked pseudo-label volumes (see the module docstring).

    Args:
        out_dir: target folder (created).
        cases: case id -> :class:`Case` (its image gives the grid ``(C, X, Y, Z)``, its affine the geometry).
        labels: case id -> {slice index: ``(A, B)`` refined label}; missing slices are written as 0.
        kept: case id -> {slice index: kept by the selection}.
        axis: the slicing axis (0, 1, 2).
        suffix: ``".nii.gz"`` or ``".npy"``.

    Returns:
        the index written to ``index.json``: ``{case: {"label", "kept", "slices", "kept_slices"}}``.
    """
    if suffix not in (".nii.gz", ".npy"):
        raise InputError("save_pseudo", f"unsupported suffix {suffix!r}; use .nii.gz or .npy")
    out = Path(out_dir)
    index = {}
    for cid, case in cases.items():
        spatial = case.image.shape[1:]
        n = spatial[axis % 3]
        by_index = labels.get(cid, {})
        shape2d = tuple(s for i, s in enumerate(spatial) if i != axis % 3)
        slices = [np.asarray(by_index.get(i, np.zeros(shape2d, np.uint8)), np.uint8) for i in range(n)]
        vol = stack_slices(slices, axis)
        flags = np.array([bool(kept.get(cid, {}).get(i, False)) for i in range(n)])
        name = _safe_name(cid)
        label_path = write_volume(out / "labels" / f"{name}{suffix}", vol, affine=case.affine)
        kept_path = write_volume(out / "kept" / f"{name}.npy", flags.astype(np.uint8))
        index[cid] = {"label": str(label_path.relative_to(out)), "kept": str(kept_path.relative_to(out)),
                      "slices": int(n), "kept_slices": int(flags.sum())}
    out.mkdir(parents=True, exist_ok=True)
    (out / "index.json").write_text(json.dumps({"axis": axis, "cases": index}, indent=1))
    return index


def write_pseudo_masks_png(out_dir: str | Path, masks: Sequence[tuple[str, np.ndarray]]) -> list[Path]:
    """Write ``(id, (H, W) label)`` pairs as 8-bit PNGs (foreground 255 for binary labels, else the class index)."""
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for sid, lab in masks:
        lab = np.asarray(lab, np.uint8)
        img = lab * 255 if lab.max(initial=0) <= 1 else lab
        path = out / f"{sid}.png"
        Image.fromarray(img).save(path)
        paths.append(path)
    return paths
