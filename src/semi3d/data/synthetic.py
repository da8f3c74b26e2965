"""Embedded synthetic 3D segmentation dataset, deterministic by seed (the default for demos/tests).

Each case holds a large rotated ellipsoid "organ" (class 1), a smaller "lesion" sphere inside it
(class 2) and, for K > 3 classes, further blobs placed away from the organ (classes 3..K-1). The
image is piecewise constant per class (class means jittered per case), blurred (partial volume),
multiplied by a smooth bias field and corrupted by Gaussian noise. Positions, sizes, orientation,
intensities and bias vary with the seed.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.ndimage import gaussian_filter

from ..errors import InputError
from .case import Case
from .volumes import write_h5, write_volume
from .readers import PathLike, UAMTH5Reader

FORMATS = ("nnunet", "uamt_h5")


def class_names(num_classes: int) -> list[str]:
    """Names of the synthetic classes: background, organ, lesion, blob3, blob4, ..."""
    return ["background", "organ", "lesion", *[f"blob{k}" for k in range(3, num_classes)]][:num_classes]


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q * np.linalg.det(q)  # proper rotation (det +1)


def _ellipsoid(coords: np.ndarray, centre: np.ndarray, semi: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """Boolean (X, Y, Z) mask; coords (X, Y, Z, 3) in mm, rot's columns are the ellipsoid axes."""
    local = (coords - centre) @ rot
    return ((local / semi) ** 2).sum(-1) <= 1.0


def make_case(seed: int, shape: Sequence[int] = (64, 64, 40), num_classes: int = 3,
              spacing: Sequence[float] = (1.0, 1.0, 1.5), noise: float = 0.1, bias: bool = True,
              class_scale: Sequence[float] | None = None) -> Case:
    """Generate one synthetic case.

    Args:
        seed: random seed; the same seed gives the same case.
        shape: spatial shape (X, Y, Z) in voxels, each at least 8.
        num_classes: K >= 2 classes including background; every class is present.
        spacing: voxel size in mm along (X, Y, Z); structures are round in mm, not in voxels.
        noise: standard deviation of the additive Gaussian noise (class means lie in 0.1..1.0).
        bias: multiply by a smooth random bias field (up to about +-30 %).
        class_scale: K factors (index = class; index 0 unused) multiplying the linear size of each
            structure: the organ's semi-axes (class 1), the lesion's radius (class 2), the blobs'
            semi-axes (classes 3..K-1). None (default) = all 1, the unchanged dataset; small factors
            make rare classes (see :func:`imbalanced_class_scale`). The random draws do not depend
            on it, so only the sizes change.

    Returns:
        a :class:`Case` with id ``syn_<seed>``, image float32 (1, X, Y, Z), label uint8 (X, Y, Z)
        in 0..K-1 and affine diag(spacing, 1) with the volume centred on the world origin.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise InputError("shape", f"expected three sizes >= 8, got {shape}")
    if num_classes < 2:
        raise InputError("num_classes", f"needs at least 2 classes, got {num_classes}")
    if class_scale is None:
        scale = np.ones(num_classes)
    else:
        scale = np.asarray(class_scale, dtype=float)
        if scale.shape != (num_classes,) or not (scale[1:] > 0).all():
            raise InputError("class_scale", f"expected {num_classes} positive factors, got {list(class_scale)}")
    rng = np.random.default_rng(seed)
    sp = np.asarray(spacing, dtype=float)
    extent = np.asarray(shape) * sp
    coords = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, sp)], indexing="ij"), -1)
    label = np.zeros(shape, np.uint8)
    centres = []

    # class 1: a large rotated ellipsoid
    centre = extent * rng.uniform(0.4, 0.6, 3)
    semi = extent * rng.uniform(0.2, 0.3, 3) * scale[1]
    rot = _rotation(rng)
    label[_ellipsoid(coords, centre, semi, rot)] = 1
    centres.append(centre)
    # class 2: a smaller sphere inside it, off-centre
    if num_classes > 2:
        direction = rng.normal(size=3)
        offset = rot @ (direction / np.linalg.norm(direction) * semi * rng.uniform(0.2, 0.45))
        radius = max(semi.min() / scale[1] * rng.uniform(0.4, 0.6) * scale[2], min(1.5, 1.5 * scale[2]) * sp.max())
        label[_ellipsoid(coords, centre + offset, np.full(3, radius), np.eye(3))] = 2
        centres.append(centre + offset)
    # classes 3..K-1: blobs away from the organ (best of a few random positions)
    for k in range(3, num_classes):
        semi_k = np.maximum(extent.min() * rng.uniform(0.07, 0.11) * rng.uniform(0.8, 1.2, 3) * scale[k],
                            min(1.5, 1.5 * scale[k]) * sp)
        best = None
        for _ in range(20):
            c = rng.uniform(semi_k, np.maximum(extent - semi_k, semi_k + 1e-3))
            mask = _ellipsoid(coords, c, semi_k, np.eye(3))
            overlap = float((label[mask] != 0).mean()) if mask.any() else 1.0
            if best is None or overlap < best[0]:
                best = (overlap, mask, c)
            if overlap == 0.0:
                break
        label[best[1]] = k
        centres.append(best[2])
    for k, c in enumerate(centres, start=1):  # guarantee presence on tiny grids
        if not (label == k).any():
            label[tuple(np.clip((c / sp).astype(int), 0, np.asarray(shape) - 1))] = k

    means = np.concatenate([[0.1], np.linspace(0.5, 1.0, num_classes - 1)]) + rng.uniform(-0.04, 0.04, num_classes)
    image = gaussian_filter(means[label], sigma=0.8)
    lin, quad = rng.uniform(-0.15, 0.15, 3), rng.uniform(-0.1, 0.1, 3)  # drawn even without bias
    if bias:  # log-field = per-axis quadratic polynomial of coordinates normalised to [-1, 1]
        u = np.meshgrid(*[np.linspace(-1.0, 1.0, n) for n in shape], indexing="ij", sparse=True)
        image = image * np.exp(sum(lin[a] * u[a] + quad[a] * u[a] ** 2 for a in range(3)))
    image = image + noise * rng.normal(size=shape)
    affine = np.diag([*sp, 1.0])
    affine[:3, 3] = -extent / 2
    return Case(f"syn_{seed:03d}", image[None].astype(np.float32), label, tuple(float(s) for s in sp),
                affine, "default", f"synthetic(seed={seed})")


def imbalanced_class_scale(num_classes: int, smallest: float = 0.35) -> list[float]:
    """Size factors for a class-imbalanced dataset: 1 for the organ (class 1), then decreasing
    geometrically to ``smallest`` for the last class (the rarest; its volume shrinks by about
    ``smallest ** 3``). For ``make_case(class_scale=...)`` / ``write_dataset(class_scale=...)``."""
    if num_classes < 2 or not 0 < smallest <= 1:
        raise InputError("imbalanced_class_scale", f"needs num_classes >= 2 and 0 < smallest <= 1, got {num_classes}, {smallest}")
    n = num_classes - 2
    return [1.0, 1.0] + [float(smallest ** ((i + 1) / n)) for i in range(n)]


def make_cases(n: int, seed: int = 0, **kwargs) -> list[Case]:
    """``n`` cases with ids ``syn_000``, ``syn_001``...; case i uses a seed derived from (seed, i).

    ``kwargs`` go to :func:`make_case`.
    """
    out = []
    for i in range(n):
        case_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        case = make_case(case_seed, **kwargs)
        case.id = f"syn_{i:03d}"
        out.append(case)
    return out


def write_dataset(root: PathLike, n_labelled: int = 6, n_unlabelled: int = 6, n_test: int = 0, seed: int = 0,
                  shape: Sequence[int] = (64, 64, 40), num_classes: int = 3, format: str = "nnunet",
                  spacing: Sequence[float] = (1.0, 1.0, 1.5), noise: float = 0.1,
                  class_scale: Sequence[float] | None = None) -> Path:
    """Write a synthetic dataset on disk.

    Cases ``syn_000``... are the :func:`make_cases` of ``seed``: first the labelled, then the
    unlabelled, then the test cases (test cases are labelled).

    Args:
        root: dataset folder (created if needed; existing files of the same names are replaced).
        n_labelled, n_unlabelled, n_test: number of cases of each role.
        seed, shape, num_classes, spacing, noise, class_scale: see :func:`make_case` (a
            ``class_scale`` from :func:`imbalanced_class_scale` gives the class-imbalanced dataset).
        format: ``"nnunet"``: a valid nnU-Net v2 raw dataset (``dataset.json``, ``imagesTr`` /
            ``labelsTr`` with the labelled cases, ``imagesTs``/``labelsTs``) plus the unlabelled
            images in ``imagesUnlabelled/`` (:mod:`semi3d.data.nnunet`), ``.nii.gz`` with the case affine; ``"uamt_h5"``: ``2018LA_Seg_Training Set/<id>/mri_norm2.h5``
            (``label`` only for labelled and test cases), ``train.list`` (labelled then unlabelled
            ids) and ``test.list``.

    Returns:
        the root folder.
    """
    if format not in FORMATS:
        raise InputError(format, f"unknown synthetic dataset format; choose one of {', '.join(FORMATS)}")
    if min(n_labelled, n_unlabelled, n_test) < 0:
        raise InputError("write_dataset", "case counts must be >= 0")
    root = Path(root)
    n_train = n_labelled + n_unlabelled
    extra = {} if class_scale is None else {"class_scale": class_scale}
    cases = make_cases(n_train + n_test, seed, shape=shape, num_classes=num_classes, spacing=spacing, noise=noise,
                       **extra)
    for i, case in enumerate(cases):
        labelled = i < n_labelled or i >= n_train
        if format == "nnunet":
            tr = "Ts" if i >= n_train else "Tr" if labelled else "Unlabelled"
            write_volume(root / f"images{tr}" / f"{case.id}_0000.nii.gz", case.image[0], case.affine)
            if labelled:
                write_volume(root / f"labels{tr}" / f"{case.id}.nii.gz", case.label, case.affine)
        else:
            data = {"image": case.image[0], **({"label": case.label} if labelled else {})}
            write_h5(root / UAMTH5Reader.SUBDIR / case.id / "mri_norm2.h5", data)
    ids = [c.id for c in cases]
    if format == "nnunet":
        meta = {"name": "Synthetic", "description": "semi3d synthetic dataset",
                "channel_names": {"0": "MRI"}, "labels": {n: k for k, n in enumerate(class_names(num_classes))},
                "numTraining": n_labelled, "file_ending": ".nii.gz"}
        _write_text(root / "dataset.json", json.dumps(meta, indent=2) + "\n")
    else:
        _write_text(root / "train.list", "".join(f"{i}\n" for i in ids[:n_train]))
        _write_text(root / "test.list", "".join(f"{i}\n" for i in ids[n_train:]))
    return root


def _write_text(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as e:
        raise InputError(path, f"cannot write: {e.strerror or e}") from None
