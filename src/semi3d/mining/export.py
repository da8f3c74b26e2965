"""The 3D route: mined slice pseudo-labels stacked into volumes, written as extra 3D targets.

**Pseudo-label volumes** (:func:`write_pseudo_volumes`, every round unless ``save_pseudo: none``),
inside the mining run folder (the source data are only read). For every unlabelled case,
``<out>/labels/<case>.nii.gz`` (or ``.npy``) holds the refined slice labels stacked along the
slicing axis on the case's (preprocessed) grid with its affine, and ``<out>/kept/<case>.npy`` a
bool vector: which slices passed the selection (slices that were not mined hold 0 and are not
kept). ``<out>/index.json`` lists, per case, the files, the number of slices and of kept slices.
For 2D image datasets, kept pseudo-masks are written as ``<out>/<image>.png`` (0 / 255).

A 3D training dataset of real + accepted pseudo-labels in the source's layout is
:mod:`semi3d.mining.dataset3d`; it maps the stacked labels back to each file's grid with
:func:`label_to_original_grid`.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_file
from ..data.case import Case
from ..data.preprocess import restore_probabilities, safe_name
from ..data.volumes import write_volume
from ..errors import InputError
from ..losses import class_argmax, one_hot
from .data2d import stack_slices

__all__ = ["label_to_original_grid", "stack_case_label", "write_masks_png", "write_pseudo_volumes"]


def stack_case_label(shape: Sequence[int], by_index: Mapping[int, np.ndarray], axis: int = 2) -> np.ndarray:
    """Slice labels ``{index: (A, B)}`` of a case of spatial ``shape`` -> ``(X, Y, Z)`` uint8; missing slices are 0."""
    n = shape[axis % 3]
    shape2d = tuple(s for i, s in enumerate(shape) if i != axis % 3)
    slices = [np.asarray(by_index.get(i, np.zeros(shape2d, np.uint8)), np.uint8) for i in range(n)]
    return stack_slices(slices, axis % 3)


def label_to_original_grid(label: np.ndarray, shape: Sequence[int], num_classes: int,
                           affine: np.ndarray | None = None, orientation: str | None = None) -> np.ndarray:
    """A label ``(X, Y, Z)`` on the preprocessed grid -> the original grid ``shape`` of the file
    stored with ``affine``, as predictions are mapped back: one-hot,
    :func:`~semi3d.data.preprocess.restore_probabilities` (trilinear, ``align_corners=False``, then
    the inverse of the reorientation to ``orientation`` when one is set), argmax. Returned
    unchanged (uint8) when no orientation is set and the shapes match."""
    label = np.asarray(label)
    shape = tuple(int(s) for s in shape)
    if orientation is None and tuple(label.shape) == shape:
        return label.astype(np.uint8)
    k = max(int(num_classes), int(label.max(initial=0)) + 1)
    probs = one_hot(torch.from_numpy(label.astype(np.int64))[None], k)[0]
    restored = restore_probabilities(probs, shape, np.eye(4) if affine is None else affine, orientation)
    return class_argmax(restored, 0).numpy().astype(np.uint8)


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
        vol = stack_case_label(spatial, labels.get(cid, {}), axis)
        flags = np.array([bool(kept.get(cid, {}).get(i, False)) for i in range(n)])
        name = safe_name(cid)
        label_path = write_volume(out / "labels" / f"{name}{suffix}", vol, affine=case.affine)
        kept_path = write_volume(out / "kept" / f"{name}.npy", flags.astype(np.uint8))
        index[cid] = {"label": str(label_path.relative_to(out)), "kept": str(kept_path.relative_to(out)),
                      "slices": int(n), "kept_slices": int(flags.sum())}
    out.mkdir(parents=True, exist_ok=True)
    (out / "index.json").write_text(json.dumps({"axis": axis, "cases": index}, indent=1))
    return index


def write_masks_png(out_dir: str | Path, masks: Sequence[tuple[str, np.ndarray]]) -> list[Path]:
    """Write ``(id, (H, W) label)`` pairs as 8-bit PNGs ``<out_dir>/<id>.png``, each atomically
    (foreground 255 for binary labels, else the class index)."""
    from PIL import Image

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(out, f"cannot create the output folder: {e.strerror or e}") from None
    paths = []
    for sid, lab in masks:
        lab = np.asarray(lab, np.uint8)
        img = lab * 255 if lab.max(initial=0) <= 1 else lab
        path = out / f"{sid}.png"
        with atomic_file(path, suffix=".png") as tmp:
            Image.fromarray(img).save(tmp)
        paths.append(path)
    return paths
