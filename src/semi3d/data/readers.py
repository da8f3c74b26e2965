"""Volume I/O, the reader interface, the UA-MT h5 and plain-folder readers, atomic volume writers
(nnU-Net v2 raw: :mod:`semi3d.data.nnunet`; the format registry: :mod:`semi3d.data.formats`).

Every reader lists its cases and returns validated :class:`~semi3d.data.case.Case` objects:
image float32 (C, X, Y, Z), label integer (X, Y, Z) or None, spacing in mm along (X, Y, Z) and a
4x4 voxel-to-world affine (RAS, mm). Spatial axes keep the voxel order stored in the file (NIfTI
i, j, k; no reorientation). SimpleITK formats (NRRD, MHA) store arrays as (Z, Y, X) and world
coordinates in LPS: they are transposed to (X, Y, Z) and their affine converted to RAS, as nibabel
and nnU-Net do. Files are opened read-only; every bad input raises
:class:`~semi3d.errors.InputError` naming the file and the problem.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..atomic import atomic_file
from ..errors import InputError
from .case import Case

PathLike = str | os.PathLike
SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".h5", ".hdf5", ".npy")
AFFINE_TOL = 1e-3  # max absolute difference (mm) between the affines of an image and its label
_LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # flips x and y; its own inverse
_MAX_LISTED = 10


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


def _short(exc: BaseException) -> str:
    """A one-line reason from a library exception (SimpleITK/h5py messages span several lines)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if "ERROR:" in ln:
            return ln.split("ERROR:", 1)[1].strip()[:200]
    return (lines[0] if lines else type(exc).__name__)[:200]


def _spacing_of(affine: np.ndarray | None) -> tuple[float, float, float] | None:
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

    img = sitk.ReadImage(str(path))
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(path, f"expected a 3D single-component image, got {img.GetDimension()}D "
                               f"with {img.GetNumberOfComponentsPerPixel()} component(s)")
    array = np.ascontiguousarray(sitk.GetArrayFromImage(img).transpose(2, 1, 0))  # (Z,Y,X) -> (X,Y,Z)
    return array, itk_affine(img), tuple(float(s) for s in img.GetSpacing())


def h5_keys(path: PathLike) -> list[str]:
    """Names of the top-level datasets of an h5 file (InputError when unreadable)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return [k for k in f if isinstance(f[k], h5py.Dataset)]
    except Exception as e:  # h5py raises OSError/KeyError/... on garbage
        raise InputError(path, f"cannot read: {_short(e)}") from None


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
        return ds[()], affine, _spacing_of(affine)


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
            or ``.npy`` file.
        key: h5 dataset name; None takes the file's only dataset. Ignored for other formats.

    Returns:
        a :class:`Volume` whose array is (X, Y, Z) (trailing singleton axes are dropped).

    Raises:
        InputError: missing, unsupported, unreadable or truncated file, or not 3D.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file")
    reader = _READERS.get(split_suffix(path)[1] or "")
    if reader is None:
        raise InputError(path, f"unsupported file type; expected one of {', '.join(SUFFIXES)}")
    try:
        array, affine, spacing = reader(path, key)
    except InputError:
        raise
    except Exception as e:  # any library error (OSError, EOFError, zlib.error, RuntimeError, ...)
        raise InputError(path, f"cannot read: {_short(e)}") from None
    array = np.asarray(array)
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise InputError(path, f"expected a 3D volume (X, Y, Z), got shape {array.shape}")
    if array.dtype.kind not in "biuf":
        raise InputError(path, f"unsupported data type {array.dtype}")
    return Volume(array, affine, spacing, path)


# ----------------------------------------------------------------------------------------------
# validation, shared by every reader
# ----------------------------------------------------------------------------------------------
def _fmt_values(values: np.ndarray) -> str:
    shown = ", ".join(f"{v:g}" for v in values[:_MAX_LISTED].tolist())
    return shown + (f", ... ({values.size} values)" if values.size > _MAX_LISTED else "")


def _check_grid(ref: Volume, vol: Volume, what: str) -> None:
    """Same shape, and same affine (within AFFINE_TOL) when both files store one."""
    if vol.array.shape != ref.array.shape:
        raise InputError(vol.path, f"{what} shape {vol.array.shape} does not match image shape "
                                   f"{ref.array.shape} of {ref.path.name}")
    if ref.affine is not None and vol.affine is not None:
        diff = float(np.abs(ref.affine - vol.affine).max())
        if diff > AFFINE_TOL:
            raise InputError(vol.path, f"{what} affine differs from the affine of {ref.path.name} "
                                       f"by {diff:.3g} mm (tolerance {AFFINE_TOL})")


def _as_image(vol: Volume) -> np.ndarray:
    image = vol.array.astype(np.float32, copy=False)
    bad = image.size - int(np.count_nonzero(np.isfinite(image)))
    if bad:
        raise InputError(vol.path, f"image has {bad} NaN/inf voxel(s)")
    return image


def _as_label(vol: Volume, num_classes: int | None) -> np.ndarray:
    label = vol.array
    if label.dtype.kind == "b":
        label = label.astype(np.uint8)
    elif label.dtype.kind == "f":
        bad = ~np.isfinite(label) | (label != np.round(label))
        if bad.any():
            raise InputError(vol.path, f"label has non-integer values: {_fmt_values(np.unique(label[bad]))}")
    lo, hi = (label.min(), label.max()) if label.size else (0, 0)
    top = np.inf if num_classes is None else num_classes - 1
    if lo < 0 or hi > top:
        wrong = np.unique(label[(label < 0) | (label > top)])
        allowed = "non-negative" if num_classes is None else f"in 0..{num_classes - 1}"
        raise InputError(vol.path, f"label values {_fmt_values(wrong)} are not {allowed}")
    return label.astype(np.uint8 if hi < 256 else np.int32, copy=False)


def assemble_case(case_id: str, channels: Sequence[Volume], label: Volume | None = None,
                  num_classes: int | None = None, spacing: Sequence[float] | None = None,
                  domain: str = "default") -> Case:
    """Validate volumes and build a :class:`Case`.

    Args:
        case_id: the case identifier.
        channels: one (X, Y, Z) volume per image channel, in channel order.
        label: (X, Y, Z) label volume, or None for an unlabelled case.
        num_classes: K; label values must lie in 0..K-1 (only non-negative when None).
        spacing: voxel size in mm (X, Y, Z) used when the first channel's file stores none;
            the affine is then diag(spacing, 1).
        domain: domain tag copied to the case.

    Raises:
        InputError: channels or label on a different grid (shape, or affine beyond AFFINE_TOL),
            NaN/inf in the image, non-integer or out-of-range label values.
    """
    ref = channels[0]
    for vol in channels[1:]:
        _check_grid(ref, vol, "channel")
    image = np.stack([_as_image(v) for v in channels])
    lab = None
    if label is not None:
        _check_grid(ref, label, "label")
        lab = _as_label(label, num_classes)
    sp = tuple(float(s) for s in (ref.spacing or spacing or (1.0, 1.0, 1.0)))
    affine = ref.affine if ref.affine is not None else np.diag([*sp, 1.0])
    return Case(case_id, image, lab, sp, affine, domain, str(ref.path))  # type: ignore[arg-type]


def read_case(image_paths: PathLike | Sequence[PathLike], label_path: PathLike | None = None,
              case_id: str | None = None, num_classes: int | None = None) -> Case:
    """Read and validate one case from explicit files (one per channel), e.g. for prediction.

    The case id defaults to the first image's file name without its suffix.
    """
    paths = [image_paths] if isinstance(image_paths, (str, os.PathLike)) else list(image_paths)
    channels = [read_volume(p) for p in paths]
    label = read_volume(label_path) if label_path is not None else None
    return assemble_case(case_id or split_suffix(paths[0])[0], channels, label, num_classes)


# ----------------------------------------------------------------------------------------------
# readers
# ----------------------------------------------------------------------------------------------
def _existing_dir(path: PathLike) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise InputError(path, "no such folder")
    return path


class Reader:
    """Common interface of the dataset readers.

    Attributes:
        root: the dataset folder.
        num_classes: K (background included) when the dataset declares it, else None.
        class_names: K names when the dataset declares them, else None.
        channel_names: one name per image channel.
        domain: tag given to every case.
    """

    root: Path
    num_classes: int | None = None
    class_names: list[str] | None = None
    channel_names: list[str]
    domain: str = "default"
    spacing: tuple[float, float, float] | None = None  # used when the files store none

    def case_ids(self) -> list[str]:
        """All training cases, sorted (or in list-file order)."""
        raise NotImplementedError

    def has_label(self, case_id: str) -> bool:
        """Whether the case has a label."""
        raise NotImplementedError

    def _volumes(self, case_id: str) -> tuple[list[Volume], Volume | None]:
        raise NotImplementedError

    def _known_ids(self) -> list[str]:
        return self.case_ids()

    def _require(self, case_id: str) -> None:
        if case_id not in self._known_ids():
            raise InputError(self.root, f"no case {case_id!r}")

    def load(self, case_id: str) -> Case:
        """Read and validate one case: image (C, X, Y, Z) float32, label (X, Y, Z) or None."""
        self._require(case_id)
        channels, label = self._volumes(case_id)
        return assemble_case(case_id, channels, label, self.num_classes, self.spacing, self.domain)

    def labelled_ids(self) -> list[str]:
        return [c for c in self.case_ids() if self.has_label(c)]

    def unlabelled_ids(self) -> list[str]:
        return [c for c in self.case_ids() if not self.has_label(c)]

    def __len__(self) -> int:
        return len(self.case_ids())


class UAMTH5Reader(Reader):
    """The UA-MT / LA h5 layout: ``<root>/2018LA_Seg_Training Set/<id>/mri_norm2.h5``.

    Each h5 file holds ``image`` float (X, Y, Z) and, for labelled cases, ``label`` {0..K-1}
    (X, Y, Z). Files directly under ``<root>/<id>/`` are accepted too. The format stores no
    geometry: the affine is diag(spacing, 1) with a zero origin.

    Args:
        root: dataset folder.
        list_file: text file of case ids, one per line (relative paths are tried from the current
            folder, then from root); None lists every case folder holding ``filename``.
        spacing: voxel size in mm along (X, Y, Z); 0.625 mm isotropic for LA.
        image_key, label_key: h5 dataset names.
        num_classes: K, used to validate label values.
        filename: the h5 file name inside each case folder.
        domain: domain tag of the cases.
    """

    SUBDIR = "2018LA_Seg_Training Set"

    def __init__(self, root: PathLike, list_file: PathLike | None = None,
                 spacing: Sequence[float] = (0.625, 0.625, 0.625), image_key: str = "image",
                 label_key: str = "label", num_classes: int | None = 2, filename: str = "mri_norm2.h5",
                 domain: str = "default"):
        self.root = _existing_dir(root)
        self.spacing = tuple(float(s) for s in spacing)  # type: ignore[assignment]
        self.image_key, self.label_key, self.filename = image_key, label_key, filename
        self.num_classes, self.domain = num_classes, domain
        self.channel_names = ["MRI"]
        self._ids = self._read_list(list_file) if list_file is not None else self._scan()
        self._labelled: dict[str, bool] = {}

    def _file(self, case_id: str) -> Path | None:
        for base in (self.root / self.SUBDIR, self.root):
            path = base / case_id / self.filename
            if path.is_file():
                return path
        return None

    def _scan(self) -> list[str]:
        ids: set[str] = set()
        for base in (self.root / self.SUBDIR, self.root):
            if base.is_dir():
                ids |= {d.name for d in base.iterdir() if (d / self.filename).is_file()}
        return sorted(ids)

    def _read_list(self, list_file: PathLike) -> list[str]:
        path = Path(list_file)
        if not path.is_absolute() and not path.exists():
            path = self.root / path
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(path, f"cannot read: {_short(e)}") from None
        ids = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        for cid in ids:
            if self._file(cid) is None:
                raise InputError(path, f"lists case {cid!r} but {self.root} has no {cid}/{self.filename}")
        return list(dict.fromkeys(ids))

    def case_ids(self) -> list[str]:
        return list(self._ids)

    def has_label(self, case_id: str) -> bool:
        if case_id not in self._labelled:
            self._require(case_id)
            self._labelled[case_id] = self.label_key in h5_keys(self._file(case_id))  # type: ignore[arg-type]
        return self._labelled[case_id]

    def _volumes(self, case_id: str) -> tuple[list[Volume], Volume | None]:
        path = self._file(case_id)
        if path is None:
            raise InputError(self.root / case_id / self.filename, "no such file")
        image = read_volume(path, self.image_key)
        image.affine = image.spacing = None  # the layout defines its geometry by `spacing` alone
        label = read_volume(path, self.label_key) if self.has_label(case_id) else None
        if label is not None:
            label.affine = None
        return [image], label


class FolderReader(Reader):
    """A folder of single-channel volumes (case id = file name without suffix) and an optional
    labels folder holding files of the same case ids.

    Args:
        images: folder of images.
        labels: folder of labels, or None (every case unlabelled).
        num_classes: K when known, used to validate label values.
        suffixes: file suffixes to pick up (others and hidden files are ignored).
        image_key, label_key: h5 dataset names (None: the file's only dataset).
        domain: domain tag of the cases.
    """

    def __init__(self, images: PathLike, labels: PathLike | None = None, num_classes: int | None = None,
                 suffixes: Sequence[str] = (".nii.gz", ".nii", ".nrrd", ".mha", ".h5", ".npy"),
                 image_key: str | None = None, label_key: str | None = None, domain: str = "default"):
        self.root = _existing_dir(images)
        self.labels_dir = _existing_dir(labels) if labels is not None else None
        self.num_classes, self.domain = num_classes, domain
        self.image_key, self.label_key = image_key, label_key
        self.suffixes = tuple(suffixes)
        self.channel_names = ["image"]
        self._images = self._index(self.root)
        self._labels = self._index(self.labels_dir) if self.labels_dir is not None else {}

    def _index(self, folder: Path) -> dict[str, Path]:
        out: dict[str, Path] = {}
        for p in sorted(folder.iterdir()):
            stem, suffix = split_suffix(p, self.suffixes)
            if suffix is None or p.name.startswith(".") or not p.is_file():
                continue
            if stem in out:
                raise InputError(folder, f"two files for case {stem!r}: {out[stem].name} and {p.name}")
            out[stem] = p
        return out

    def case_ids(self) -> list[str]:
        return list(self._images)

    def has_label(self, case_id: str) -> bool:
        self._require(case_id)
        return case_id in self._labels

    def _volumes(self, case_id: str) -> tuple[list[Volume], Volume | None]:
        label = self._labels.get(case_id)
        return ([read_volume(self._images[case_id], self.image_key)],
                read_volume(label, self.label_key) if label is not None else None)


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
    img = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))  # (X,Y,Z) -> (Z,Y,X)
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


_WRITERS = {".nii.gz": (_write_nifti, (3, 4)), ".nii": (_write_nifti, (3, 4)), ".nrrd": (_write_itk, (3,)),
            ".mha": (_write_itk, (3,)), ".npy": (_write_npy, None)}


def _atomic(path: Path, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp)`` on a temp file next to ``path``, then move it into place."""
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        reason = "a file of that name exists" if folder.is_file() else _short(e)
        raise InputError(folder, f"cannot create folder: {reason}") from None
    try:
        with atomic_file(path, suffix=split_suffix(path)[1] or ".tmp") as tmp:
            write(tmp)
    except InputError:
        raise
    except Exception as e:
        raise InputError(folder, f"cannot write {path.name}: {_short(e)}") from None
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
            (C, X, Y, Z), stored as (X, Y, Z, C)), ``.nrrd``/``.mha`` (SimpleITK; (X, Y, Z),
            written as the inverse of the reading conversion), ``.h5``/``.hdf5``, ``.npy`` (any shape).
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
