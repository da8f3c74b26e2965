"""Resampling and intensity normalisation of whole cases, with an in-memory / on-disk cache.

Axis order everywhere is the :class:`~semi3d.data.case.Case` one: image (C, X, Y, Z), label
(X, Y, Z), spacing in mm along (X, Y, Z). Resampling uses ``align_corners=False`` semantics: the
volume's outer corners (voxel coordinate -0.5 and ``shape - 0.5``) are kept fixed in world space.
"""
from __future__ import annotations

import hashlib
import json
import re
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..atomic import atomic_file
from ..config import axis_codes
from ..errors import InputError
from .case import Case
from .orientation import apply_ornt, invert_ornt, reorientation, source_axes

__all__ = ["Preprocessor", "resample_probabilities", "restore_probabilities", "resample_affine", "PreprocessedCache"]

_NORMALISATIONS = ("zscore", "minmax", "ct", "none")
_ONEHOT_MAX_CLASSES = 8  # labels with more classes are resampled with nearest neighbour
_VERSION = 2  # bump when the algorithm changes, so on-disk caches are invalidated (2: label ties)


def _triple(value: float | Sequence[float], name: str) -> tuple[float, float, float]:
    vals = (value,) * 3 if np.isscalar(value) else tuple(value)  # type: ignore[arg-type]
    try:
        out = tuple(float(v) for v in vals)
    except (TypeError, ValueError):
        raise InputError(name, f"expected a number or 3 numbers, got {value!r}") from None
    if len(out) != 3 or not all(np.isfinite(v) and v > 0 for v in out):
        raise InputError(name, f"expected a positive number or 3 positive numbers, got {value!r}")
    return out  # type: ignore[return-value]


def resample_affine(affine: np.ndarray, old_shape: Sequence[int], new_shape: Sequence[int]) -> np.ndarray:
    """Voxel-to-world affine of a volume resampled from ``old_shape`` to ``new_shape``.

    With ``align_corners=False`` new voxel ``j`` samples old continuous coordinate
    ``x = (j + 0.5) * r - 0.5`` with ``r = old / new`` per axis, hence
    ``world = A @ x + o = (A @ diag(r)) @ j + (o + A @ ((r - 1) / 2))``.
    The corner ``j = -0.5`` maps to ``x = -0.5``: the volume's extent is unchanged.

    Args:
        affine: 4x4 voxel-to-world matrix of the original grid.
        old_shape: original spatial shape (X, Y, Z).
        new_shape: resampled spatial shape (X, Y, Z).

    Returns:
        New 4x4 float64 affine.
    """
    r = np.asarray(old_shape, dtype=np.float64) / np.asarray(new_shape, dtype=np.float64)
    a = np.asarray(affine, dtype=np.float64)
    out = a.copy()
    out[:3, :3] = a[:3, :3] * r[None, :]
    out[:3, 3] = a[:3, 3] + a[:3, :3] @ ((r - 1.0) / 2.0)
    return out


def resample_probabilities(probs: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Trilinearly resample class probabilities (or logits) to a spatial ``shape``.

    Uses ``align_corners=False``, consistent with :class:`Preprocessor`, so predictions made at
    training resolution map back onto the original grid.

    Args:
        probs: float tensor (K, X, Y, Z) or (N, K, X, Y, Z).
        shape: target spatial shape (X', Y', Z').

    Returns:
        Tensor (K, X', Y', Z') or (N, K, X', Y', Z'), same dtype and device as ``probs``.
    """
    if not isinstance(probs, torch.Tensor) or probs.ndim not in (4, 5):
        raise InputError("resample_probabilities", "probs must be a tensor (K,X,Y,Z) or (N,K,X,Y,Z)")
    if not probs.is_floating_point():
        raise InputError("resample_probabilities", f"probs must be floating point, got {probs.dtype}")
    size = tuple(int(s) for s in shape)
    if len(size) != 3 or min(size) < 1:
        raise InputError("resample_probabilities", f"shape must be 3 positive ints, got {tuple(shape)}")
    if tuple(probs.shape[-3:]) == size:
        return probs.clone()
    x = probs if probs.ndim == 5 else probs[None]
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    out = F.interpolate(work, size=size, mode="trilinear", align_corners=False).to(probs.dtype)
    return out if probs.ndim == 5 else out[0]


def _resample_label(label: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """Label (X, Y, Z) int -> (X', Y', Z') int64: per-class linear + argmax with ties to the higher
    class (as nnU-Net breaks them: a class takes the voxels where its interpolated indicator is
    >= 0.5, the higher classes last), or nearest if many classes."""
    classes = torch.unique(label).tolist()
    if len(classes) > _ONEHOT_MAX_CLASSES:
        out = F.interpolate(label[None, None].float(), size=size, mode="nearest-exact")
        return out[0, 0].round().long()
    # one class at a time: memory is three output volumes whatever K is
    best = torch.full(size, -1.0)
    arg = torch.zeros(size, dtype=torch.long)
    for k in classes:
        p = F.interpolate((label == k).float()[None, None], size=size, mode="trilinear", align_corners=False)[0, 0]
        better = p >= best  # classes ascend, so a tie goes to the higher one
        best = torch.where(better, p, best)
        arg = torch.where(better, torch.tensor(k, dtype=torch.long), arg)
    return arg


class Preprocessor:
    """Resample a case to a target spacing (or by a scale factor) and normalise its intensities.

    Args:
        target_spacing: output voxel size in mm along (X, Y, Z) (a number means isotropic).
        scale: resolution factor per axis, e.g. 0.5 halves the number of voxels along each axis.
            Mutually exclusive with ``target_spacing``; with neither the grid is kept.
        normalisation: ``"zscore"`` (per channel mean/std; only mean-centred when std < 1e-8),
            ``"minmax"`` (per channel to [0, 1]; a constant channel becomes 0: A&D's reference code),
            ``"ct"`` (clip to ``ct_window`` in HU, then z-score with ``ct_stats`` = (mean, std) if
            given, else map the window linearly to [-1, 1]) or ``"none"``.
        ct_window: (low, high) HU clipping window for ``"ct"``.
        ct_stats: optional (mean, std) in HU for ``"ct"``, e.g. foreground statistics of the
            training set.
        orientation: None keeps each file's voxel order (nnU-Net); axis codes such as ``"RAS"``
            first reorder every case's voxel axes to point that way
            (:func:`~semi3d.data.orientation.reorientation`; MONAI's ``Orientationd``), so cases
            stored in different orientations show the network the anatomy the same way;
            :meth:`restore` maps predictions back to the file's own grid.

    The output shape is ``max(1, round(shape * factor))`` per axis, with ``factor = scale`` or
    ``spacing / target_spacing``. The new spacing is ``spacing * old_shape / new_shape`` (exact
    for the grid actually produced) and the affine is updated by :func:`resample_affine`. Images
    are resampled trilinearly; labels with at most 8 classes by trilinear interpolation of each
    class indicator followed by argmax (smoother boundaries; a tie, as where an exact 2x
    downsampling averages a block half of one class, goes to the higher class, as in nnU-Net),
    otherwise by nearest neighbour.
    """

    def __init__(
        self,
        target_spacing: float | Sequence[float] | None = None,
        scale: float | Sequence[float] | None = None,
        normalisation: str = "zscore",
        ct_window: tuple[float, float] = (-1000.0, 1000.0),
        ct_stats: tuple[float, float] | None = None,
        orientation: str | None = None,
    ):
        try:
            self.orientation = None if orientation is None else axis_codes(orientation)
        except ValueError as e:
            raise InputError("preprocess.orientation", str(e)) from None
        if target_spacing is not None and scale is not None:
            raise InputError("preprocess", "give either target_spacing or scale, not both")
        self.target_spacing = None if target_spacing is None else _triple(target_spacing, "preprocess.target_spacing")
        self.scale = None if scale is None else _triple(scale, "preprocess.scale")
        if normalisation not in _NORMALISATIONS:
            raise InputError("preprocess.normalisation", f"expected one of {_NORMALISATIONS}, got {normalisation!r}")
        self.normalisation = normalisation
        lo, hi = (float(v) for v in ct_window)
        if not lo < hi:
            raise InputError("preprocess.ct_window", f"low must be below high, got {tuple(ct_window)}")
        self.ct_window = (lo, hi)
        if ct_stats is not None:
            mean, std = (float(v) for v in ct_stats)
            if not std > 0:
                raise InputError("preprocess.ct_stats", f"std must be positive, got {std}")
            ct_stats = (mean, std)
        self.ct_stats = ct_stats

    def params(self) -> dict:
        """JSON-serialisable description (cache keys, run configs)."""
        return {
            "target_spacing": None if self.target_spacing is None else list(self.target_spacing),
            "scale": None if self.scale is None else list(self.scale),
            "normalisation": self.normalisation,
            "ct_window": list(self.ct_window),
            "ct_stats": None if self.ct_stats is None else list(self.ct_stats),
            "version": _VERSION,
            # only when set, so the cache keys of runs that keep the files' voxel order stay the same
            **({"orientation": self.orientation} if self.orientation else {}),
        }

    def output_shape(self, shape: Sequence[int], spacing: Sequence[float]) -> tuple[int, int, int]:
        """Spatial shape (X, Y, Z) produced for an input of ``shape`` with ``spacing`` mm."""
        if self.scale is not None:
            factor = self.scale
        elif self.target_spacing is not None:
            factor = tuple(float(s) / t for s, t in zip(spacing, self.target_spacing))
        else:
            return tuple(int(s) for s in shape)  # type: ignore[return-value]
        return tuple(max(1, int(round(s * f))) for s, f in zip(shape, factor))  # type: ignore[return-value]

    def normalise(self, image: torch.Tensor) -> torch.Tensor:
        """Normalise a float32 image (C, X, Y, Z) per channel; returns a new tensor."""
        if self.normalisation == "zscore":
            std, mean = torch.std_mean(image.reshape(image.shape[0], -1), dim=1, correction=0)
            std = torch.where(std < 1e-8, torch.ones_like(std), std)
            return (image - mean[:, None, None, None]) / std[:, None, None, None]
        if self.normalisation == "minmax":
            flat = image.reshape(image.shape[0], -1)
            lo, hi = flat.amin(1)[:, None, None, None], flat.amax(1)[:, None, None, None]
            return (image - lo) / torch.where(hi - lo < 1e-8, torch.ones_like(hi), hi - lo)
        if self.normalisation == "ct":
            lo, hi = self.ct_window
            x = image.clamp(lo, hi)
            if self.ct_stats is not None:
                return (x - self.ct_stats[0]) / self.ct_stats[1]
            return (x - lo) * (2.0 / (hi - lo)) - 1.0
        return image.clone()

    def __call__(self, case: Case) -> Case:
        """Return a new, preprocessed :class:`Case` (the input's arrays are left untouched).

        Output image: float32 contiguous (C, X', Y', Z'); label: uint8 (int16 when it has 256 or
        more classes) (X', Y', Z') or None; spacing and affine describe the new grid.
        """
        image = np.asarray(case.image)
        if image.ndim != 4 or min(image.shape) < 1:
            raise InputError(case.source or case.id, f"image must be (C,X,Y,Z), got shape {image.shape}")
        case = self.orient(case)
        image = np.asarray(case.image)
        shape = tuple(image.shape[1:])
        if case.label is not None and tuple(np.shape(case.label)) != shape:
            raise InputError(case.source or case.id, f"label shape {np.shape(case.label)} != image shape {shape}")
        spacing = _triple(case.spacing, f"{case.id}: spacing")
        new_shape = self.output_shape(shape, spacing)
        resize = new_shape != shape

        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        if resize:
            x = F.interpolate(x[None], size=new_shape, mode="trilinear", align_corners=False)[0]
        x = self.normalise(x).contiguous()
        out_image = x.numpy()
        if np.shares_memory(out_image, image):
            out_image = out_image.copy()

        out_label = None
        if case.label is not None:
            lab = np.asarray(case.label)
            if not np.issubdtype(lab.dtype, np.integer):
                if not np.all(np.mod(lab, 1) == 0):
                    raise InputError(case.source or case.id, "label must hold integer class indices")
            lab_t = torch.from_numpy(np.ascontiguousarray(lab).astype(np.int64))
            if lab_t.numel() and int(lab_t.min()) < 0:
                raise InputError(case.source or case.id, "label holds negative class indices")
            k = int(lab_t.max()) + 1 if lab_t.numel() else 1
            if k > 32768:
                raise InputError(case.source or case.id, f"label has {k} classes, at most 32768 supported")
            if resize:
                lab_t = _resample_label(lab_t, new_shape)
            out_label = lab_t.numpy().astype(np.uint8 if k < 256 else np.int16)

        ratio = np.asarray(shape, dtype=np.float64) / np.asarray(new_shape, dtype=np.float64)
        new_spacing = tuple(float(s * r) for s, r in zip(spacing, ratio))
        affine = resample_affine(case.affine, shape, new_shape)
        return Case(id=case.id, image=out_image, label=out_label, spacing=new_spacing,  # type: ignore[arg-type]
                    affine=affine, domain=case.domain, source=case.source)

    def orient(self, case: Case) -> Case:
        """``case`` with its voxel axes reordered to :attr:`orientation` (image, label, spacing and
        affine; the world position of every voxel is unchanged), or ``case`` itself when no
        orientation is set or it already has it."""
        ornt = None if self.orientation is None else reorientation(case.affine, self.orientation)
        if ornt is None:
            return case
        from nibabel.orientations import inv_ornt_aff

        shape = np.asarray(case.image.shape[1:])
        return Case(case.id, apply_ornt(np.asarray(case.image), ornt),
                    None if case.label is None else apply_ornt(np.asarray(case.label), ornt),
                    tuple(float(case.spacing[i]) for i in source_axes(ornt)),  # type: ignore[arg-type]
                    np.asarray(case.affine, dtype=float) @ inv_ornt_aff(ornt, shape), case.domain, case.source)

    def restore(self, probs: torch.Tensor, shape: Sequence[int], affine: np.ndarray) -> torch.Tensor:
        """Probabilities (K, X', Y', Z') on this preprocessor's output grid of a case -> (K, X, Y, Z)
        on the case's own grid (:func:`restore_probabilities` with this :attr:`orientation`)."""
        return restore_probabilities(probs, shape, affine, self.orientation)


def restore_probabilities(probs: torch.Tensor, shape: Sequence[int], affine: np.ndarray,
                          orientation: str | None) -> torch.Tensor:
    """Probabilities (K, X', Y', Z') on the preprocessed grid of a case -> (K, X, Y, Z) on the
    case's own grid (``shape`` (X, Y, Z) and ``affine`` as read): trilinear resampling
    (:func:`resample_probabilities`), then the inverse of :meth:`Preprocessor.orient` to
    ``orientation`` (axis codes, None: the files' voxel order was kept)."""
    ornt = None if orientation is None else reorientation(affine, orientation)
    if ornt is not None:
        shape = tuple(int(shape[i]) for i in source_axes(ornt))
    if tuple(probs.shape[1:]) != tuple(int(s) for s in shape):
        probs = resample_probabilities(probs, shape)
    return probs if ornt is None else apply_ornt(probs, invert_ornt(ornt))


def safe_name(case_id: str) -> str:
    """A file-name-safe form of ``case_id`` (other characters -> ``_`` plus a short hash, so two ids
    never share a name)."""
    name = re.sub(r"[^\w.-]", "_", case_id)
    if name != case_id or name.startswith("."):
        name = f"{name}-{hashlib.sha1(case_id.encode()).hexdigest()[:8]}"
    return name


class PreprocessedCache:
    """Preprocess each case once; keep it in memory and optionally on disk.

    Args:
        preprocessor: the :class:`Preprocessor` (or any callable ``Case -> Case`` with ``params()``).
        load: ``case_id -> Case`` reader of the raw case.
        cache_dir: if given, cases are also stored as ``<cache_dir>/<key>/<case_id>.npz`` (image,
            label, spacing, affine, id, domain, source) where ``key`` is a short hash of
            ``preprocessor.params()``, and reused by later runs. Unreadable files are recomputed.

    Cases returned by :meth:`get` are shared: callers must not modify their arrays in place.
    """

    def __init__(self, preprocessor: Preprocessor, load: Callable[[str], Case], cache_dir: Path | str | None = None):
        self.preprocessor = preprocessor
        self.load = load
        self.key = hashlib.sha1(json.dumps(preprocessor.params(), sort_keys=True).encode()).hexdigest()[:12]
        self.dir = None if cache_dir is None else Path(cache_dir) / self.key
        self._mem: dict[str, Case] = {}

    def __len__(self) -> int:
        return len(self._mem)

    def __contains__(self, case_id: str) -> bool:
        return case_id in self._mem

    def path(self, case_id: str) -> Path | None:
        """On-disk location of a case (None for a memory-only cache)."""
        return None if self.dir is None else self.dir / f"{safe_name(case_id)}.npz"

    def get(self, case_id: str) -> Case:
        """The preprocessed case ``case_id`` (computed on first use)."""
        case = self._mem.get(case_id)
        if case is not None:
            return case
        path = self.path(case_id)
        if path is not None and path.exists():
            try:
                case = self._read(path, case_id)
            except Exception as err:  # corrupt / truncated / foreign file: recompute
                warnings.warn(f"{path}: unreadable cache file ({err}); recomputing", stacklevel=2)
        if case is None:
            case = self.preprocessor(self.load(case_id))
            if path is not None:
                self._write(path, case)
        self._mem[case_id] = case
        return case

    @staticmethod
    def _read(path: Path, case_id: str) -> Case:
        with np.load(path, allow_pickle=False) as z:
            if str(z["id"]) != case_id:
                raise ValueError(f"holds case {str(z['id'])!r}")
            image = np.ascontiguousarray(z["image"], dtype=np.float32)
            label = z["label"] if "label" in z.files else None
            affine = z["affine"].astype(np.float64)
            spacing = tuple(float(s) for s in z["spacing"])
            if image.ndim != 4 or affine.shape != (4, 4) or len(spacing) != 3 or (
                label is not None and label.shape != image.shape[1:]
            ):
                raise ValueError("inconsistent arrays")
            return Case(id=case_id, image=image, label=label, spacing=spacing, affine=affine,  # type: ignore[arg-type]
                        domain=str(z["domain"]), source=str(z["source"]))

    @staticmethod
    def _write(path: Path, case: Case) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = dict(image=case.image, spacing=np.asarray(case.spacing, dtype=np.float64),
                      affine=np.asarray(case.affine, dtype=np.float64), id=np.str_(case.id),
                      domain=np.str_(case.domain), source=np.str_(case.source))
        if case.label is not None:
            arrays["label"] = case.label
        with atomic_file(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
