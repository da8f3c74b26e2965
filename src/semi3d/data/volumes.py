"""Volume files: read and write NIfTI, NRRD, MHA, h5 and npy with their geometry, atomically.

Arrays keep the voxel order stored in the file (NIfTI i, j, k; no reorientation). SimpleITK formats
(NRRD, MHA) store arrays as (Z, Y, X) and world coordinates in LPS: they are transposed to
(X, Y, Z) and their affine converted to RAS, as nibabel and nnU-Net do. Files are opened read-only;
every bad input raises :class:`~semi3d.errors.InputError` naming the file and the problem.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..atomic import atomic_file
from ..errors import InputError
from .dicom import series_files

PathLike = str | os.PathLike
SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".h5", ".hdf5", ".npy")
_LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # flips x and y; its own inverse


# ----------------------------------------------------------------------------------------------
# low-level volume I/O
# ----------------------------------------------------------------------------------------------
@dataclass
class Volume:
    """One 3D array as read from a file.

    Attributes:
        array: (X, Y, Z) array in the file's dtype.
        affine: 4x4 voxel-to-world matrix (RAS, mm) stored in the file, or None when the format
            stores none (h5 without an ``affine`` attribute, npy).
        spacing: voxel size in mm along (X, Y, Z), or None when the file stores none.
        path: the file it came from.
    """

    array: np.ndarray
    affine: np.ndarray | None
    spacing: tuple[float, float, float] | None
    path: Path


def split_suffix(path: PathLike, suffixes: Sequence[str] = SUFFIXES) -> tuple[str, str | None]:
    """Split a file name into (stem, suffix) for the longest matching suffix (case-insensitive).

    ``"a.nii.gz"`` -> ``("a", ".nii.gz")``; the suffix is None when none matches.
    """
    name = Path(path).name
    for s in sorted(suffixes, key=len, reverse=True):
        if name.lower().endswith(s.lower()):
            return name[: -len(s)], s.lower()
    return name, None


def short_error(exc: BaseException) -> str:
    """A one-line reason from a library exception (SimpleITK/h5py messages span several lines)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if "ERROR:" in ln:
            return ln.split("ERROR:", 1)[1].strip()[:200]
    return (lines[0] if lines else type(exc).__name__)[:200]


def spacing_of(affine: np.ndarray | None) -> tuple[float, float, float] | None:
    """Voxel size (X, Y, Z) in mm: the lengths of the affine's first three columns."""
    if affine is None:
        return None
    return tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))  # type: ignore[return-value]


def _read_nifti(path: Path, key: str | None):
    import nibabel as nib

    img = nib.load(str(path), mmap=False)
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return np.asanyarray(img.dataobj), np.asarray(img.affine, dtype=float), zooms


def itk_affine(img: Any) -> np.ndarray:
    """RAS voxel-to-world 4x4 affine of a 3D SimpleITK image (whose origin/direction are LPS)."""
    lps = np.eye(4)
    lps[:3, :3] = np.reshape(img.GetDirection(), (3, 3)) @ np.diag(img.GetSpacing())
    lps[:3, 3] = img.GetOrigin()
    return _LPS_RAS @ lps


def _read_itk(path: Path, key: str | None):
    import SimpleITK as sitk

    return _from_itk(sitk.ReadImage(str(path)), path)


def _read_dicom(path: Path, key: str | None):
    """A folder holding one DICOM series (SimpleITK / GDCM: slices ordered by position, rescale
    slope and intercept applied, e.g. CT in HU)."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(series_files(path))
    return _from_itk(reader.Execute(), path)


def _from_itk(img: Any, path: Path):
    """(array (X, Y, Z), or (X, Y, Z, C) for a vector image, RAS affine, spacing) of a SimpleITK
    image read from ``path``."""
    import SimpleITK as sitk

    if img.GetDimension() != 3:
        raise InputError(path, f"expected a 3D image, got {img.GetDimension()}D")
    array = sitk.GetArrayFromImage(img)  # (Z, Y, X) or, with components, (Z, Y, X, C)
    array = np.ascontiguousarray(array.transpose(2, 1, 0, *range(3, array.ndim)))
    return array, itk_affine(img), tuple(float(s) for s in img.GetSpacing())


def h5_keys(path: PathLike) -> list[str]:
    """Names of the top-level datasets of an h5 file (InputError when unreadable)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return [k for k in f if isinstance(f[k], h5py.Dataset)]
    except Exception as e:  # h5py raises OSError/KeyError/... on garbage
        raise InputError(path, f"cannot read: {short_error(e)}") from None


def h5_dataset(path: PathLike, name: str) -> str | None:
    """``name`` when ``path`` is an h5 file holding a dataset of that name (a UA-MT file holds
    ``image`` and ``label``), else None: the key :func:`read_volume` then needs (the file's only
    dataset, or a format without datasets)."""
    return name if split_suffix(path)[1] in (".h5", ".hdf5") and name in h5_keys(path) else None


def _read_h5(path: Path, key: str | None):
    import h5py

    with h5py.File(path, "r") as f:
        names = [k for k in f if isinstance(f[k], h5py.Dataset)]
        if key is None and len(names) == 1:
            key = names[0]
        if key not in names:
            raise InputError(path, f"no dataset {key!r} (has: {', '.join(names) or 'none'})")
        ds = f[key]
        affine = np.asarray(ds.attrs["affine"], dtype=float) if "affine" in ds.attrs else None
        return ds[()], affine, spacing_of(affine)


def _read_npy(path: Path, key: str | None):
    with open(path, "rb") as fh:
        if fh.read(6) != b"\x93NUMPY":
            raise InputError(path, "cannot read: not a .npy file")
    return np.load(path, allow_pickle=False), None, None


_READERS: dict[str, Callable[[Path, str | None], tuple]] = {
    ".nii.gz": _read_nifti, ".nii": _read_nifti, ".nrrd": _read_itk, ".mha": _read_itk,
    ".h5": _read_h5, ".hdf5": _read_h5, ".npy": _read_npy,
}


def read_volume(path: PathLike, key: str | None = None) -> Volume:
    """Read one 3D volume, read-only.

    Args:
        path: a ``.nii.gz``/``.nii`` (nibabel), ``.nrrd``/``.mha`` (SimpleITK), ``.h5``/``.hdf5``
            or ``.npy`` file, or a folder holding one DICOM series (SimpleITK / GDCM).
        key: h5 dataset name; None takes the file's only dataset. Ignored for other formats.

    Returns:
        a :class:`Volume` whose array is (X, Y, Z) (trailing singleton axes are dropped).

    Raises:
        InputError: missing, unsupported, unreadable or truncated file, or not 3D.
    """
    path = Path(path)
    array, affine, spacing = _read(path, key)
    if array.ndim != 3:
        raise InputError(path, f"expected a 3D volume (X, Y, Z), got shape {array.shape}")
    return Volume(array, affine, spacing, path)


def read_channels(path: PathLike, key: str | None = None) -> list[Volume]:
    """Read an image of one or more channels: a 3D volume (:func:`read_volume`), or a 4D NIfTI
    whose 4th axis holds the channels (the Medical Segmentation Decathlon's multi-modal images,
    MONAI's channel-last NIfTI; or its 5th, after a singleton 4th, as ITK writes a vector image) or a
    vector NRRD / MHA (one channel per component), as :func:`write_volume` writes a (C, X, Y, Z) array.

    Returns:
        one :class:`Volume` (X, Y, Z) per channel, sharing the file's affine and spacing.

    Raises:
        InputError: as :func:`read_volume`; a 4D h5 / npy array (their channel axis is not defined).
    """
    path = Path(path)
    array, affine, spacing = _read(path, key)
    if array.ndim == 5 and array.shape[3] == 1:  # a NIfTI vector image as ITK writes it: (X, Y, Z, 1, C)
        array = array[:, :, :, 0]
    if array.ndim == 4 and split_suffix(path)[1] in (".nii.gz", ".nii", ".nrrd", ".mha"):
        return [Volume(array[..., c], affine, spacing, path) for c in range(array.shape[-1])]
    if array.ndim != 3:
        raise InputError(path, f"expected a 3D volume (X, Y, Z) or, for NIfTI / NRRD / MHA, channels on a 4th "
                               f"axis (X, Y, Z, C), got shape {array.shape}")
    return [Volume(array, affine, spacing, path)]


def _read(path: Path, key: str | None) -> tuple[np.ndarray, np.ndarray | None, tuple | None]:
    """(array with trailing singleton axes beyond the 3rd dropped, affine, spacing) of a volume file."""
    if path.is_dir():
        reader = _read_dicom
    elif not path.is_file():
        raise InputError(path, "no such file")
    else:
        reader = _READERS.get(split_suffix(path)[1] or "")
    if reader is None:
        raise InputError(path, f"unsupported file type; expected one of {', '.join(SUFFIXES)}")
    try:
        array, affine, spacing = reader(path, key)
    except InputError:
        raise
    except Exception as e:  # any library error (OSError, EOFError, zlib.error, RuntimeError, ...)
        raise InputError(path, f"cannot read: {short_error(e)}") from None
    array = np.asarray(array)
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.dtype.kind not in "biuf":
        raise InputError(path, f"unsupported data type {array.dtype}")
    return array, affine, spacing


# ----------------------------------------------------------------------------------------------
# writers
# ----------------------------------------------------------------------------------------------
def _storage(array: np.ndarray, path: Path) -> np.ndarray:
    """bool/int -> the smallest of uint8/int16/int32 that holds the values; float -> float32."""
    if array.dtype.kind == "b":
        return array.astype(np.uint8)
    if array.dtype.kind in "iu":
        lo, hi = (int(array.min()), int(array.max())) if array.size else (0, 0)
        for dt in (np.uint8, np.int16, np.int32):
            if np.iinfo(dt).min <= lo and hi <= np.iinfo(dt).max:
                return array.astype(dt, copy=False)
        raise InputError(path, f"integer values {lo}..{hi} do not fit int32")
    if array.dtype.kind == "f":
        return array.astype(np.float32, copy=False)
    raise InputError(path, f"cannot write data type {array.dtype}")


def _write_nifti(tmp: Path, array: np.ndarray, affine: np.ndarray, key: str | None) -> None:
    import nibabel as nib

    if array.ndim == 4:  # (C, X, Y, Z) -> NIfTI's (X, Y, Z, C)
        array = np.moveaxis(array, 0, -1)
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(tmp))


def _write_itk(tmp: Path, array: np.ndarray, affine: np.ndarray, key: str | None) -> None:
    import SimpleITK as sitk

    lps = _LPS_RAS @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    if array.ndim == 4:  # (C, X, Y, Z) -> a vector image, (Z, Y, X, C) in SimpleITK's array order
        img = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(3, 2, 1, 0)), isVector=True)
    else:  # (X, Y, Z) -> (Z, Y, X)
        img = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    img.SetSpacing(spacing.tolist())
    img.SetOrigin(lps[:3, 3].tolist())
    img.SetDirection((lps[:3, :3] / spacing).ravel().tolist())
    sitk.WriteImage(img, str(tmp), True)


def _write_h5_datasets(tmp: Path, datasets: Mapping[str, np.ndarray], affine: np.ndarray | None) -> None:
    import h5py

    with h5py.File(tmp, "w") as f:
        for name, arr in datasets.items():
            ds = f.create_dataset(name, data=arr, compression="gzip", compression_opts=4)
            if affine is not None:
                ds.attrs["affine"] = affine


def _write_npy(tmp: Path, array: np.ndarray, affine: np.ndarray, key: str | None) -> None:
    with open(tmp, "wb") as fh:
        np.save(fh, array)


_WRITERS = {".nii.gz": (_write_nifti, (3, 4)), ".nii": (_write_nifti, (3, 4)), ".nrrd": (_write_itk, (3, 4)),
            ".mha": (_write_itk, (3, 4)), ".npy": (_write_npy, None)}


def _atomic(path: Path, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp)`` on a temp file next to ``path``, then move it into place."""
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        reason = "a file of that name exists" if folder.is_file() else short_error(e)
        raise InputError(folder, f"cannot create folder: {reason}") from None
    try:
        with atomic_file(path, suffix=split_suffix(path)[1] or ".tmp") as tmp:
            write(tmp)
    except InputError:
        raise
    except Exception as e:
        raise InputError(folder, f"cannot write {path.name}: {short_error(e)}") from None
    return path


def _resolve_affine(affine, spacing, reference) -> np.ndarray:
    if affine is None and reference is not None:
        affine = reference.affine
    if affine is None:
        affine = np.diag([*(spacing if spacing is not None else (1.0, 1.0, 1.0)), 1.0])
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4):
        raise InputError("affine", f"expected a 4x4 matrix, got shape {affine.shape}")
    return affine


def write_volume(path: PathLike, array: np.ndarray, affine: np.ndarray | None = None,
                 spacing: Sequence[float] | None = None, reference: Any = None, key: str | None = None) -> Path:
    """Write a volume atomically (temp file in the same folder, then ``os.replace``).

    Args:
        path: target file; the suffix picks the format: ``.nii.gz``/``.nii`` (nibabel; (X, Y, Z) or
            (C, X, Y, Z), stored as (X, Y, Z, C)), ``.nrrd``/``.mha`` (SimpleITK; (X, Y, Z)
            written as the inverse of the reading conversion, or (C, X, Y, Z) as a C-component
            vector image), ``.h5``/``.hdf5``, ``.npy`` (any shape).
        array: the data; bool/int arrays are stored as uint8 (or int16/int32 when needed), float
            as float32.
        affine: 4x4 voxel-to-world (RAS, mm). Defaults to ``reference.affine``, then
            diag(spacing, 1), then the identity.
        spacing: voxel size in mm (X, Y, Z), used only when no affine is known.
        reference: any object with an ``affine`` attribute (e.g. the input :class:`Case`).
        key: h5 dataset name; default ``"label"`` for integer arrays, ``"prob"`` otherwise. The
            affine is stored as its ``affine`` attribute.

    Returns:
        the written path.

    Raises:
        InputError: unsupported suffix or shape, or the folder cannot be created or written.
    """
    path = Path(path)
    suffix = split_suffix(path)[1]
    arr = _storage(np.asarray(array), path)
    aff = _resolve_affine(affine, spacing, reference)
    if suffix in (".h5", ".hdf5"):
        name = key or ("label" if arr.dtype.kind in "iu" else "prob")
        return _atomic(path, lambda tmp: _write_h5_datasets(tmp, {name: arr}, aff))
    if suffix not in _WRITERS:
        raise InputError(path, f"unsupported file type; expected one of {', '.join(SUFFIXES)}")
    writer, ndims = _WRITERS[suffix]
    if ndims is not None and arr.ndim not in ndims:
        need = " or ".join(f"{n}D" for n in ndims)
        raise InputError(path, f"cannot write a {arr.ndim}D array as {suffix} (needs {need})")
    return _atomic(path, lambda tmp: writer(tmp, arr, aff, key))


def write_h5(path: PathLike, datasets: Mapping[str, np.ndarray], affine: np.ndarray | None = None) -> Path:
    """Write several arrays into one h5 file atomically (e.g. the UA-MT ``image`` + ``label``).

    Arrays are stored with the dtype rules of :func:`write_volume`; ``affine`` (if given) is
    attached to each dataset as an ``affine`` attribute.
    """
    path = Path(path)
    data = {k: _storage(np.asarray(v), path) for k, v in datasets.items()}
    aff = None if affine is None else _resolve_affine(affine, None, None)
    return _atomic(path, lambda tmp: _write_h5_datasets(tmp, data, aff))
