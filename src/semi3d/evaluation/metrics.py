"""Overlap and surface-distance metrics for 3D segmentations.

The definitions follow ``medpy.metric.binary`` exactly (``dc``, ``jc``,
``hd95(..., connectivity=1)`` and ``asd``) whenever both masks are non-empty:

- the surface of a mask is ``mask XOR binary_erosion(mask, generate_binary_structure(ndim, 1))``
  with the erosion's border value 0, so a mask touching the volume border has surface there;
- the directed surface distances from A to B are the Euclidean distances (with ``spacing``)
  from every surface voxel of A to the nearest surface voxel of B;
- ``hd95`` is the 95th percentile (linear interpolation) of both directed sets concatenated;
- ``asd`` is the mean of the directed distances from the prediction to the reference only.

Distances are computed on the bounding box of both masks grown by one voxel (clipped at the
volume border), which gives the same surfaces and distances as the full volume.

Empty-mask policy (medpy raises in these cases; here the result is never NaN and an empty
prediction of a present structure is never rewarded):

- reference present, prediction empty: dice 0, jaccard 0, hd95 and asd = worst distance;
- reference empty, prediction present: dice 0, jaccard 0, hd95 and asd = worst distance;
- both empty (correct absence): dice 1, jaccard 1, hd95 0, asd 0.

The worst distance is the diagonal of the volume's extent, ``sqrt(sum((shape_i * spacing_i) ** 2))``,
in the same units as the other distances (voxels when ``spacing`` is None).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure

from semi3d.errors import InputError
from semi3d.losses import without_ignored

__all__ = ["binary_metrics", "case_metrics", "overlap"]

def _check_spacing(spacing: Sequence[float] | float | None, ndim: int) -> np.ndarray | None:
    if spacing is None:
        return None
    arr = np.asarray(spacing, dtype=np.float64).ravel()
    if arr.size == 1:
        arr = np.repeat(arr, ndim)
    if arr.size != ndim:
        raise InputError("spacing", f"expected {ndim} values (one per axis), got {arr.size}")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise InputError("spacing", f"values must be finite and > 0, got {arr.tolist()}")
    return arr


def _worst_distance(shape: Sequence[int], spacing: np.ndarray | None) -> float:
    extent = np.asarray(shape, dtype=np.float64)
    if spacing is not None:
        extent = extent * spacing
    return float(np.sqrt(np.sum(extent**2)))


def _crop_union(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to the bounding box of their union grown by one voxel (clipped at the border).

    Inside the box the erosion sees the same neighbours as in the full volume (real zeros on the
    one-voxel margin, border value 0 where the box reaches the volume border), and all surface
    voxels lie inside it, so surfaces and exact Euclidean distances are unchanged.
    """
    union = pred | ref
    slices = []
    for axis in range(union.ndim):
        other = tuple(a for a in range(union.ndim) if a != axis)
        idx = np.flatnonzero(union.any(axis=other) if other else union)
        lo = max(int(idx[0]) - 1, 0)
        hi = min(int(idx[-1]) + 2, union.shape[axis])
        slices.append(slice(lo, hi))
    box = tuple(slices)
    return pred[box], ref[box]


def _surface(mask: np.ndarray) -> np.ndarray:
    footprint = generate_binary_structure(mask.ndim, 1)
    return mask ^ binary_erosion(mask, structure=footprint, iterations=1)


def _distances(
    pred_surf: np.ndarray, ref_surf: np.ndarray, spacing: np.ndarray | None, tolerance: float | None = None
) -> tuple[float, float, float | None]:
    """hd95 and asd from two (cropped) surface masks, as medpy computes them, and the normalised
    surface Dice at ``tolerance`` (None when not asked for)."""
    d_pred_to_ref = distance_transform_edt(~ref_surf, sampling=spacing)[pred_surf]
    d_ref_to_pred = distance_transform_edt(~pred_surf, sampling=spacing)[ref_surf]
    both = np.hstack((d_pred_to_ref, d_ref_to_pred))
    hd95 = float(np.percentile(both, 95))
    asd = float(d_pred_to_ref.mean())
    return hd95, asd, None if tolerance is None else float(np.count_nonzero(both <= tolerance) / both.size)


def _as_bool_pair(pred: np.ndarray, ref: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    pred = np.atleast_1d(np.asarray(pred)).astype(bool, copy=False)
    ref = np.atleast_1d(np.asarray(ref)).astype(bool, copy=False)
    if pred.shape != ref.shape:
        raise InputError(where, f"prediction shape {pred.shape} != reference shape {ref.shape}")
    return pred, ref


def overlap(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """Dice and Jaccard of two boolean masks of the same shape, with the module's empty-mask policy
    (both empty: 1, 1; one empty: 0, 0)."""
    n_pred, n_ref = int(np.count_nonzero(pred)), int(np.count_nonzero(ref))
    if n_pred == 0 or n_ref == 0:
        return (1.0, 1.0) if n_pred == n_ref else (0.0, 0.0)
    inter = int(np.count_nonzero(pred & ref))
    return 2.0 * inter / float(n_pred + n_ref), float(inter) / float(n_pred + n_ref - inter)


def _overlap_and_distances(
    pred: np.ndarray, ref: np.ndarray, spacings: Sequence[np.ndarray | None], tolerance: float | None = None
) -> tuple[float, float, list[tuple[float, float, float | None]]]:
    """Dice, Jaccard and one (hd95, asd, nsd) triple per entry of ``spacings`` (nsd None without a
    ``tolerance``); masks are boolean."""
    dice, jaccard = overlap(pred, ref)
    if not pred.any() and not ref.any():
        return dice, jaccard, [(0.0, 0.0, None if tolerance is None else 1.0) for _ in spacings]
    if not pred.any() or not ref.any():
        worst = [_worst_distance(pred.shape, s) for s in spacings]
        return dice, jaccard, [(w, w, None if tolerance is None else 0.0) for w in worst]
    pred_c, ref_c = _crop_union(pred, ref)
    pred_surf, ref_surf = _surface(pred_c), _surface(ref_c)
    return dice, jaccard, [_distances(pred_surf, ref_surf, s, tolerance) for s in spacings]


def binary_metrics(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] | None = None
) -> dict[str, float]:
    """Dice, Jaccard, HD95 and ASD of one binary prediction against its reference.

    Args:
        pred: predicted mask, shape (X, Y, Z) (any ndim >= 1); non-zero means foreground.
        ref: reference mask, same shape and axis order as ``pred``.
        spacing: voxel size per axis in the same order (e.g. mm, ``(0.625, 0.625, 2.5)``);
            None means 1 per axis, i.e. distances in voxels; one number is used for every axis.

    Returns:
        ``{"dice", "jaccard", "hd95", "asd"}`` as floats; dice/jaccard in [0, 1], distances in
        the units of ``spacing``. Equal to medpy's ``dc``, ``jc``, ``hd95`` and ``asd`` when both
        masks are non-empty; see the module docstring for the empty-mask policy.

    Raises:
        InputError: shapes differ, or ``spacing`` has the wrong length or a non-positive value.
    """
    pred, ref = _as_bool_pair(pred, ref, "binary_metrics")
    sp = _check_spacing(spacing, pred.ndim)
    dice, jaccard, [(hd95, asd, _)] = _overlap_and_distances(pred, ref, [sp])
    return {"dice": dice, "jaccard": jaccard, "hd95": hd95, "asd": asd}


def _foreground_names(num_classes: int, class_names: Sequence[str] | None) -> list[str]:
    if class_names is None:
        return [f"class{c}" for c in range(1, num_classes)]
    names = [str(n) for n in class_names]
    if len(names) == num_classes:  # includes background: drop it
        names = names[1:]
    if len(names) != num_classes - 1:
        raise InputError(
            "class_names",
            f"expected {num_classes - 1} foreground names (or {num_classes} with background), "
            f"got {len(class_names)}",
        )
    if len(set(names)) != len(names):
        raise InputError("class_names", f"names must be unique, got {names}")
    return names


def _tolerances(tolerance: float | Sequence[float] | None, n: int) -> list[float | None]:
    """One NSD tolerance per foreground class (``n``) from one value or ``n`` values."""
    if tolerance is None:
        return [None] * n
    values = [float(t) for t in np.atleast_1d(np.asarray(tolerance, dtype=float))]
    if len(values) == 1:
        values *= n
    if len(values) != n or not all(np.isfinite(t) and t >= 0 for t in values):
        raise InputError("nsd_tolerance", f"expected one distance >= 0 or one per foreground class ({n}), "
                                          f"got {tolerance}")
    return values


def case_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    num_classes: int,
    spacing: Sequence[float] | None,
    class_names: Sequence[str] | None = None,
    nsd_tolerance: float | Sequence[float] | None = None,
) -> dict[str, dict[str, float]]:
    """Per-class metrics of one case from integer label maps.

    Args:
        pred: predicted label map, shape (X, Y, Z), integer values in ``0..num_classes-1``
            (0 is background).
        ref: reference label map, same shape, axis order and value range; voxels holding
            :data:`semi3d.losses.IGNORE_INDEX` (nnU-Net's ignore label) are set to background in
            both maps first: they add no true or false positive (as nnU-Net's masked evaluation).
        num_classes: number of classes K including background (K >= 2).
        spacing: voxel size per axis in (X, Y, Z) order, e.g. in mm; None if unknown.
        class_names: names of the foreground classes 1..K-1 (K-1 names), or of all K classes
            including background (the first is then dropped). Default ``"class1"...``.
        nsd_tolerance: when given, also the normalised surface Dice (``"nsd"``, Nikolov et al.
            2021; MONAI's ``compute_surface_dice``): the share of both masks' surface voxels that
            lie within this distance of the other mask's surface, in the units of ``spacing``
            (voxels when it is None): one distance for every class, or one per foreground class
            (K-1, in class order; the Decathlon's per-class tolerances). 1 when both masks are
            empty, 0 when one is.

    Returns:
        ``{name: {"dice", "jaccard", "hd95", "asd", "hd95_mm", "asd_mm"[, "nsd"]}}`` for each
        foreground class in order. ``hd95``/``asd`` are in voxels (spacing 1), ``hd95_mm``/``asd_mm``
        use ``spacing`` (equal to the voxel values when ``spacing`` is None). Empty masks follow the
        module's empty-mask policy.

    Raises:
        InputError: shapes differ, ``num_classes`` < 2, labels outside ``0..K-1``, bad
            ``spacing`` or ``class_names``.
    """
    pred = np.atleast_1d(np.asarray(pred))
    ref = np.atleast_1d(np.asarray(ref))
    if pred.shape != ref.shape:
        raise InputError("case_metrics", f"prediction shape {pred.shape} != reference shape {ref.shape}")
    pred, ref = without_ignored(pred, ref)  # nnU-Net's ignore label: those voxels are left out
    if int(num_classes) != num_classes or num_classes < 2:
        raise InputError("num_classes", f"must be an integer >= 2, got {num_classes}")
    num_classes = int(num_classes)
    for name, arr in (("prediction", pred), ("reference", ref)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise InputError(
                "case_metrics",
                f"{name} labels must lie in 0..{num_classes - 1}, got {arr.min()}..{arr.max()}",
            )
    names = _foreground_names(num_classes, class_names)
    sp = _check_spacing(spacing, pred.ndim)
    spacings = [None] if sp is None else [None, sp]

    out: dict[str, dict[str, float]] = {}
    tolerances = _tolerances(nsd_tolerance, len(names))
    for c, name in enumerate(names, start=1):
        dice, jaccard, dists = _overlap_and_distances(pred == c, ref == c, spacings, tolerances[c - 1])
        (hd95, asd, _), (hd95_mm, asd_mm, nsd) = dists[0], dists[-1]
        out[name] = {
            "dice": dice,
            "jaccard": jaccard,
            "hd95": hd95,
            "asd": asd,
            "hd95_mm": hd95_mm,
            "asd_mm": asd_mm,
            **({} if nsd is None else {"nsd": nsd}),
        }
    return out
