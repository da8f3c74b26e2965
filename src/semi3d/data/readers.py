"""The reader interface, the UA-MT h5 and plain-folder readers, and the validation every reader
shares (nnU-Net v2 raw: :mod:`semi3d.data.nnunet`; the format registry: :mod:`semi3d.data.formats`;
file I/O: :mod:`semi3d.data.volumes`).

Every reader lists its cases and returns validated :class:`~semi3d.data.case.Case` objects:
image float32 (C, X, Y, Z), label integer (X, Y, Z) or None, spacing in mm along (X, Y, Z) and a
4x4 voxel-to-world affine (RAS, mm).
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError
from ..losses import IGNORE_INDEX
from .case import Case
from .dicom import dicom_modality
from .dicom_seg import SEG_SUFFIXES, read_dicom_seg
from .volumes import PathLike, Volume, short_error, h5_keys, read_channels, read_volume, split_suffix

AFFINE_TOL = 1e-3  # max absolute difference (mm) between the affines of an image and its label
_MAX_LISTED = 10


# ----------------------------------------------------------------------------------------------
# validation, shared by every reader
# ----------------------------------------------------------------------------------------------
def _fmt_values(values: np.ndarray) -> str:
    shown = ", ".join(f"{v:g}" for v in values[:_MAX_LISTED].tolist())
    return shown + (f", ... ({values.size} values)" if values.size > _MAX_LISTED else "")


def check_grid(ref: Volume, vol: Volume, what: str) -> None:
    """``vol`` (a channel, label or prediction: ``what``) on ``ref``'s grid: the same shape, and the same
    affine (within AFFINE_TOL) when both files store one; else an error naming ``vol``'s file."""
    if vol.array.shape != ref.array.shape:
        raise InputError(vol.path, f"{what} shape {vol.array.shape} does not match the shape "
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


def check_ignore_value(ignore_value: int | None, num_classes: int, where: str) -> None:
    """An error naming ``where`` when the ignore label's value is one of the K class values."""
    if ignore_value is not None and ignore_value < num_classes:
        raise InputError(where, f"{ignore_value} is a class value (classes 0..{num_classes - 1}); "
                                "the ignore label needs a value above them")


def as_label(vol: Volume, num_classes: int | None, ignore_value: int | None = None) -> np.ndarray:
    """``vol``'s label map (X, Y, Z), uint8 (int32 above 255): integer values in 0..K-1 (non-negative
    when ``num_classes`` is None), voxels of ``ignore_value`` as :data:`semi3d.losses.IGNORE_INDEX`;
    else an error naming the file and the wrong values."""
    label = vol.array
    ignored = None if ignore_value is None else label == ignore_value
    if ignored is not None and ignored.any():
        label = np.where(ignored, 0, label)  # validated without them, marked IGNORE_INDEX below
    else:
        ignored = None
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
    out = label.astype(np.uint8 if hi < 256 else np.int32, copy=False)
    if ignored is not None:
        out[ignored] = IGNORE_INDEX
    return out


def assemble_case(case_id: str, channels: Sequence[Volume], label: Volume | None = None,
                  num_classes: int | None = None, spacing: Sequence[float] | None = None,
                  domain: str = "default", ignore_value: int | None = None) -> Case:
    """Validate volumes and build a :class:`Case`.

    Args:
        case_id: the case identifier.
        channels: one (X, Y, Z) volume per image channel, in channel order.
        label: (X, Y, Z) label volume, or None for an unlabelled case.
        num_classes: K; label values must lie in 0..K-1 (only non-negative when None).
        spacing: voxel size in mm (X, Y, Z) used when the first channel's file stores none;
            the affine is then diag(spacing, 1).
        domain: domain tag copied to the case.
        ignore_value: the label value of nnU-Net's ``ignore`` label, stored as
            :data:`semi3d.losses.IGNORE_INDEX` (excluded from losses and metrics).

    Raises:
        InputError: channels or label on a different grid (shape, or affine beyond AFFINE_TOL),
            NaN/inf in the image, non-integer or out-of-range label values.
    """
    ref = channels[0]
    for vol in channels[1:]:
        check_grid(ref, vol, "channel")
    image = np.stack([_as_image(v) for v in channels])
    lab = None
    if label is not None:
        check_grid(ref, label, "label")
        lab = as_label(label, num_classes, ignore_value)
    sp = tuple(float(s) for s in (ref.spacing or spacing or (1.0, 1.0, 1.0)))
    affine = ref.affine if ref.affine is not None else np.diag([*sp, 1.0])
    return Case(case_id, image, lab, sp, affine, domain, str(ref.path))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------
# readers
# ----------------------------------------------------------------------------------------------
def under_root(root: Path, path: PathLike) -> Path:
    """``path`` as given when absolute, else relative to the dataset folder ``root`` (how the file
    lists of a ``dataset.json`` and a dataset's options name files)."""
    return Path(path) if Path(path).is_absolute() else Path(root) / path


def existing_dir(path: PathLike) -> Path:
    """``path`` as a Path, after checking it is a folder."""
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
    ignore_value: int | None = None  # nnU-Net's ignore label value (mapped to IGNORE_INDEX)

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
        return assemble_case(case_id, channels, label, self.num_classes, self.spacing, self.domain, self.ignore_value)

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
        self.root = existing_dir(root)
        self.spacing = tuple(float(s) for s in spacing)  # type: ignore[assignment]
        self.image_key, self.label_key, self.filename = image_key, label_key, filename
        self.num_classes, self.domain = num_classes, domain
        self.channel_names = ["MRI"]
        self._ids = self._read_list(list_file) if list_file is not None else self._scan()
        self._labelled: dict[str, bool] = {}

    def case_file(self, case_id: str) -> Path | None:
        """The case's h5 file (``<root>/2018LA_Seg_Training Set/<id>/<filename>`` or
        ``<root>/<id>/<filename>``), None when there is none."""
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
            raise InputError(path, f"cannot read: {short_error(e)}") from None
        ids = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        for cid in ids:
            if self.case_file(cid) is None:
                raise InputError(path, f"lists case {cid!r} but {self.root} has no {cid}/{self.filename}")
        return list(dict.fromkeys(ids))

    def case_ids(self) -> list[str]:
        return list(self._ids)

    def has_label(self, case_id: str) -> bool:
        if case_id not in self._labelled:
            self._require(case_id)
            self._labelled[case_id] = self.label_key in h5_keys(self.case_file(case_id))  # type: ignore[arg-type]
        return self._labelled[case_id]

    def _volumes(self, case_id: str) -> tuple[list[Volume], Volume | None]:
        path = self.case_file(case_id)
        if path is None:
            raise InputError(self.root / case_id / self.filename, "no such file")
        image = read_volume(path, self.image_key)
        image.affine = image.spacing = None  # the layout defines its geometry by `spacing` alone
        label = read_volume(path, self.label_key) if self.has_label(case_id) else None
        if label is not None:
            label.affine = None
        return [image], label


def index_cases(folder: Path, suffixes: Sequence[str], series: bool = False) -> dict[str, Path]:
    """``{case id: path}`` for the volume files of ``folder`` named ``<case id><suffix>`` (and, with
    ``series``, its subfolders, DICOM series named by case); hidden entries are skipped, two files of
    one case id are an error naming the folder."""
    out: dict[str, Path] = {}
    for p in sorted(Path(folder).iterdir()):
        stem, suffix = split_suffix(p, suffixes)
        if p.name.startswith(".") or not ((series and p.is_dir()) or (suffix is not None and p.is_file())):
            continue
        if stem in out:
            raise InputError(folder, f"two files for case {stem!r}: {out[stem].name} and {p.name}")
        out[stem] = p
    return out


class IndexedReader(Reader):
    """A reader whose cases are the keys of ``self._images`` (in its order) and whose labelled cases
    are the keys of ``self._labels``."""

    _images: dict
    _labels: dict

    def case_ids(self) -> list[str]:
        return list(self._images)

    def has_label(self, case_id: str) -> bool:
        self._require(case_id)
        return case_id in self._labels


class FolderReader(IndexedReader):
    """A folder of images (case id = file name without suffix) or of DICOM series folders (case id =
    folder name; each subfolder must hold one series), and an optional labels folder holding files
    of the same case ids: e.g. a Medical Segmentation Decathlon task's ``imagesTr`` and ``labelsTr``;
    over a DICOM series, a label may be a DICOM SEG file ``<case>.seg.dcm`` / ``<case>.dcm``
    (:func:`~semi3d.data.dicom_seg.read_dicom_seg`).
    An image is one channel, or several on a 4th axis (a 4D NIfTI as the Decathlon's multi-modal
    tasks store them, a vector NRRD / MHA; :func:`~semi3d.data.volumes.read_channels`), as many in
    every case as in the first (``channel_names``: ``image``, or ``channel0``, ``channel1``, ...).

    Args:
        images: folder of images.
        labels: folder of labels, or None (every case unlabelled).
        num_classes: K when known, used to validate label values.
        suffixes: file suffixes to pick up (others and hidden files are ignored).
        image_key, label_key: h5 dataset names (None: the file's only dataset).
        domain: domain tag of the cases.
        channel_names: the modality of each channel (e.g. ``["CT"]``, as nnU-Net's ``dataset.json``
            ``channel_names``; ``semi3d plan`` normalises a ``CT`` channel as CT); default ``image``,
            or ``channel0``, ``channel1``, ...
        ignore_value: the label value of unannotated voxels (e.g. 255), read as nnU-Net's ignore
            label (:data:`semi3d.losses.IGNORE_INDEX`: in no loss and no metric); above every class
            value; None: every label value is a class.
    """

    def __init__(self, images: PathLike, labels: PathLike | None = None, num_classes: int | None = None,
                 suffixes: Sequence[str] = (".nii.gz", ".nii", ".nrrd", ".mha", ".h5", ".npy"),
                 image_key: str | None = None, label_key: str | None = None, domain: str = "default",
                 channel_names: Sequence[str] | None = None, ignore_value: int | None = None):
        if ignore_value is not None and (isinstance(ignore_value, bool) or not isinstance(ignore_value, int)
                                         or ignore_value < 1):
            raise InputError("data.options.ignore_value",
                             f"must be a label value >= 1 (0 is background), got {ignore_value!r}")
        self.ignore_value = ignore_value
        self._given_names = None if channel_names is None else [str(c) for c in channel_names]
        self.root = existing_dir(images)
        self.labels_dir = existing_dir(labels) if labels is not None else None
        self.num_classes, self.domain = num_classes, domain
        self.image_key, self.label_key = image_key, label_key
        self.suffixes = tuple(suffixes)
        self._images = index_cases(self.root, self.suffixes, series=True)
        self._labels = index_cases(self.labels_dir, (*self.suffixes, *SEG_SUFFIXES)) if self.labels_dir is not None else {}

    def entry(self, case_id: str) -> tuple[Path, Path | None]:
        """The case's image (a file or a DICOM series folder) and label file or None; KeyError for
        an unknown id."""
        return self._images[case_id], self._labels.get(case_id)

    @property
    def options(self) -> dict:
        """The reading options given (file suffixes, h5 keys, channel names and ignore value when
        given): what a copy of the dataset needs to be read the same way."""
        return {"suffixes": list(self.suffixes), "image_key": self.image_key, "label_key": self.label_key,
                "channel_names": self._given_names, "ignore_value": self.ignore_value}

    @functools.cached_property
    def channel_names(self) -> list[str]:  # type: ignore[override]
        """The ``channel_names`` given, else, over DICOM series, the first series' Modality tag
        (e.g. ``["CT"]``), else ``["image"]``, or one name per channel when the first case's image
        has several."""
        first = next(iter(self._images.values()), None)
        n = len(read_channels(first, self.image_key)) if first is not None else 1
        if self._given_names is not None:
            if len(self._given_names) != n:
                raise InputError(first, f"{n} image channel(s), but channel_names names {len(self._given_names)}: "
                                        f"{', '.join(self._given_names)}")
            return self._given_names
        if n == 1 and first is not None and first.is_dir() and (modality := dicom_modality(first)):
            return [modality]
        return ["image"] if n == 1 else [f"channel{c}" for c in range(n)]

    def _volumes(self, case_id: str) -> tuple[list[Volume], Volume | None]:
        label, path = self._labels.get(case_id), self._images[case_id]
        channels = read_channels(path, self.image_key)
        if len(channels) != len(self.channel_names):
            first = next(iter(self._images.values()))
            raise InputError(path, f"{len(channels)} image channel(s); the first case ({first.name}) has "
                                   f"{len(self.channel_names)}: every case needs the same channels")
        if label is not None and split_suffix(label, SEG_SUFFIXES)[1]:
            if not path.is_dir():
                raise InputError(label, "a DICOM SEG label needs its image as a DICOM series folder")
            return channels, read_dicom_seg(label, path)
        return channels, read_volume(label, self.label_key) if label is not None else None

