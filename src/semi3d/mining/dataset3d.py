"""A 3D training dataset of real labels + accepted mined pseudo-labels, in the source's layout.

Written by :func:`write_pseudo_dataset` (mining config ``dataset_3d: {enabled: true}``; by default
after the last round only, ``every_round: true`` for every round) in
``<run>/pseudo/round<r>/dataset/``, so that ``semi3d train`` with any 3D method reads it like the
original (the source data are only read):

- ``uamt_h5``: ``2018LA_Seg_Training Set/<id>/mri_norm2.h5`` (the source's file name and h5 keys).
- ``nnunet``: ``dataset.json`` (the source's, ``numTraining`` updated, a ``dataset`` file list
  dropped), ``imagesTr/<id>_<cccc><ending>``, ``labelsTr/<id><ending>``.
- ``msd`` (a Decathlon task): ``dataset.json`` (the source's, ``training`` = the written cases,
  ``test`` empty), the image files at the paths the source lists them (nnU-Net v1's channel files
  beside them), real labels at their listed paths, pseudo-labels as ``labelsTr/<id>.nii.gz``.
- ``folder``: ``images/`` (each image file or DICOM series folder copied), ``labels/`` (real label
  files copied, DICOM SEG included; pseudo-labels as ``<id>.nii.gz`` with the image's affine).

Which cases:

- Real labelled cases (mining split ``labelled``) and the validation cases (``validation``) are
  copied byte for byte, with their real labels. Validation cases never get a pseudo-label.
- An unlabelled case that was mined is included when the fraction of its slices kept by the
  selection (over ALL its slices: with ``slice_step > 1`` the slices not mined count as not kept)
  is ``>= min_kept_fraction`` (default 1.0: every slice kept). Its image is the source's as stored
  (h5: the same values, float64 written as float32; other formats: the files copied), its label
  the stacked refined slices (slices not mined: 0) mapped from the preprocessed grid back to the
  original grid the way predictions are (:func:`~semi3d.mining.export.label_to_original_grid`).
  With ``min_kept_fraction < 1`` an included case has slices that were NOT kept; ``not_kept``
  says what they hold: ``refined`` (default) their refined mask anyway (slices not mined: 0), or,
  for an ``nnunet`` or ``folder`` source, ``ignore``: nnU-Net's ignore label (nnunet: the value K
  after the K classes, ``dataset.json`` gets ``"ignore": K`` when it has none; folder: the source's
  ``ignore_value``, else K, written into the ``data.options`` that read the copy), so that training
  leaves them out of every loss and only the kept slices teach (slice-unit selection,
  ``select.unit: slice``). Without it the clean choice is ``select.unit: case`` (a case is kept or
  rejected as a whole) with ``slice_step: 1``.
- Unlabelled cases that were rejected, not mined (``unlabelled_max``) and the test split are left
  out; the hidden labels of the unlabelled cases are never copied.

Beside the cases: ``train.list`` (every case), ``labelled_real.list``, ``pseudo.list``,
``labelled.list`` (real + pseudo), ``dev.list`` (only when the mining config had a validation
split) and ``pseudo_cases.json`` (``real``, ``pseudo``, ``validation``, ``rejected``, the kept
fraction of every mined case, and ``data``: a ``data:`` block for a 3D run config that reads the
dataset with labelled = real + pseudo and validation = the dev cases). The folder is built next to
its target and moved into place at the end; a previous dataset of the same round is replaced.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from ..data.case import Case
from ..data.msd import MSDReader
from ..data.nnunet import NnUNetRawReader
from ..data.readers import FolderReader, Reader, UAMTH5Reader
from ..data.volumes import read_channels, read_volume, split_suffix, write_h5, write_volume
from ..errors import InputError
from .base import Strict
from .export import label_to_original_grid, stack_case_label

__all__ = ["DATASET_FORMATS", "IGNORE_FORMATS", "Dataset3DOptions", "cannot_ignore", "write_pseudo_dataset"]

DATASET_FORMATS = ("uamt_h5", "nnunet", "msd", "folder")
IGNORE_FORMATS = ("nnunet", "folder")  # the formats with an ignore label (dataset_3d.not_kept: ignore)


def cannot_ignore(fmt: str) -> str | None:
    """Why ``not_kept: ignore`` cannot be written for a source of format ``fmt`` (None: it can);
    the mining config checks it before mining, :func:`write_pseudo_dataset` for API callers."""
    return None if fmt in IGNORE_FORMATS else f"'ignore' needs an {' or '.join(IGNORE_FORMATS)} source " \
                                              f"(an ignore label), not {fmt}"


class Dataset3DOptions(Strict):
    """``dataset_3d`` of the mining config: write a 3D training dataset of real labels + accepted
    pseudo-labels (:func:`write_pseudo_dataset`). ``min_kept_fraction``: a mined case is included
    when at least this fraction of its slices was kept by the selection; ``not_kept``: the label of
    its slices that were not (``refined``: their refined mask; ``ignore``: nnU-Net's ignore label,
    ``nnunet`` and ``folder`` sources); ``every_round``: write it after every round (default: after
    the last round only)."""

    enabled: bool = False
    min_kept_fraction: float = Field(1.0, ge=0, le=1)
    not_kept: Literal["refined", "ignore"] = "refined"
    every_round: bool = False


def _inside(a: Path, b: Path) -> bool:
    """Whether ``a`` is ``b`` or lies inside it."""
    return a == b or b in a.parents


def _copy(src: Path, dst: Path) -> None:
    """Copy a file, or a folder (a DICOM series) with its files."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copytree(src, dst) if src.is_dir() else shutil.copyfile(src, dst)
    except OSError as e:
        raise InputError(dst.parent, f"cannot copy {src.name}: {e.strerror or e}") from None


class _Layout:
    """How one source format is written: each case's files (:meth:`case`: ``stacked`` None copies
    the real label), then the dataset's own files and the ``data:`` block (:meth:`finish`)."""

    format = ""

    def __init__(self, reader, num_classes: int, orientation: str | None, ignore: int | None = None):
        self.reader, self.num_classes, self.orientation = reader, num_classes, orientation
        self.ignore = ignore  # the label value of slices not kept, when they are ignored

    def pseudo_label(self, ref, stacked: np.ndarray) -> np.ndarray:
        """The stacked label on the grid of ``ref`` (the case's first image volume)."""
        return label_to_original_grid(stacked, ref.array.shape, self.num_classes, ref.affine, self.orientation)

    def case(self, tmp: Path, cid: str, stacked: np.ndarray | None) -> None:
        raise NotImplementedError

    def finish(self, tmp: Path, out: Path, ids: list[str]) -> tuple[Path, dict]:
        """Write the dataset's own files; returns the ``data.root`` and ``data.options`` that read it."""
        return out, {}


class _UAMT(_Layout):
    format = "uamt_h5"

    def case(self, tmp, cid, stacked):
        r: UAMTH5Reader = self.reader
        src = r.case_file(cid)
        if src is None:
            raise InputError(r.root / cid / r.filename, "no such file")
        dst = tmp / UAMTH5Reader.SUBDIR / cid / r.filename
        if stacked is None:
            return _copy(src, dst)
        image = read_volume(src, r.image_key).array  # the stored values (float64 written as float32)
        # the reader ignores a stored affine (the layout's geometry is its spacing alone), so do we
        lab = label_to_original_grid(stacked, image.shape, self.num_classes, None, self.orientation)
        write_h5(dst, {r.image_key: image, r.label_key: lab})

    def finish(self, tmp, out, ids):
        r: UAMTH5Reader = self.reader
        return out, {"list_file": str(out / "train.list"), "spacing": list(r.spacing or ()),
                     "image_key": r.image_key, "label_key": r.label_key, "filename": r.filename}


class _NnUNet(_Layout):
    format = "nnunet"

    def case(self, tmp, cid, stacked):
        r: NnUNetRawReader = self.reader
        chans, label_path = r.entry(cid)
        for i in range(len(r.channel_names)):
            if i not in chans:
                raise InputError(r.root / "imagesTr", f"case {cid!r} lacks channel {i}")
            _copy(chans[i], tmp / "imagesTr" / f"{cid}_{i:04d}{r.file_ending}")
        dst = tmp / "labelsTr" / f"{cid}{r.file_ending}"
        if stacked is None:
            if label_path is None:
                raise InputError(r.root / "labelsTr", f"case {cid!r} has no label file")
            return _copy(label_path, dst)
        ref = read_volume(chans[0])
        write_volume(dst, self.pseudo_label(ref, stacked), affine=ref.affine)

    def finish(self, tmp, out, ids):
        meta = json.loads(self.reader.meta_path.read_text())
        meta.pop("dataset", None)  # its file list names the source's files; the copy has the standard layout
        if self.ignore is not None:
            meta["labels"] = {**meta["labels"], "ignore": self.ignore}  # K: the highest value, as nnU-Net wants
        meta["numTraining"] = len(ids)
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=1))
        return out, {}


def _relative(path: Path, root: Path, folder: str) -> Path:
    """``path`` relative to ``root``, or ``folder/<name>`` when it lies outside (an absolute path in
    ``dataset.json``, or one through ``..``); compared as written (``..`` folded, links not followed)."""
    path, root = Path(os.path.normpath(path)), Path(os.path.normpath(root))
    return path.relative_to(root) if _inside(path, root) and path != root else Path(folder) / path.name


class _MSD(_Layout):
    format = "msd"

    def __init__(self, *args):
        super().__init__(*args)
        self.label_files: dict[str, Path] = {}  # case id -> its label file, relative to the dataset (for dataset.json)

    def case(self, tmp, cid, stacked):
        r: MSDReader = self.reader
        _, files, label = r.entry(cid)
        for f in files:
            _copy(f, tmp / _relative(f, r.root, "imagesTr"))
        if stacked is None:
            self.label_files[cid] = _relative(label, r.root, "labelsTr")
            return _copy(label, tmp / self.label_files[cid])
        self.label_files[cid] = Path("labelsTr") / f"{cid}.nii.gz"
        ref = read_channels(files[0])[0]
        write_volume(tmp / self.label_files[cid], self.pseudo_label(ref, stacked), affine=ref.affine)

    def finish(self, tmp, out, ids):
        r: MSDReader = self.reader
        meta = json.loads((r.root / "dataset.json").read_text())
        meta["training"] = [{"image": f"./{_relative(r.entry(cid)[0], r.root, 'imagesTr').as_posix()}",
                             "label": f"./{self.label_files[cid].as_posix()}"} for cid in ids]
        meta.update(test=[], numTraining=len(ids), numTest=0)
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=1))
        return out, {}


class _Folder(_Layout):
    format = "folder"

    def case(self, tmp, cid, stacked):
        r: FolderReader = self.reader
        image, label = r.entry(cid)
        _copy(image, tmp / "images" / image.name)
        if stacked is None:
            return _copy(label, tmp / "labels" / label.name)
        ref = read_channels(image, r.image_key)[0]
        lab = self.pseudo_label(ref, stacked)
        if self.ignore is not None and self.ignore != self.file_ignore:  # the source's own ignore value
            lab = np.where(lab == self.ignore, self.file_ignore, lab).astype(np.min_scalar_type(self.file_ignore))
        write_volume(tmp / "labels" / f"{cid}.nii.gz", lab, affine=ref.affine)

    @property
    def file_ignore(self) -> int | None:
        """The ignore value in the copy's label files: the source's, else K when slices are ignored."""
        return self.reader.ignore_value if self.reader.ignore_value is not None else self.ignore

    def finish(self, tmp, out, ids):
        opts = {k: v for k, v in {**self.reader.options, "ignore_value": self.file_ignore}.items() if v is not None}
        if split_suffix("x.nii.gz", opts["suffixes"])[1] is None:  # the pseudo-labels' suffix
            opts["suffixes"] = [*opts["suffixes"], ".nii.gz"]
        return out / "images", {"labels": str(out / "labels"), **opts}


LAYOUTS: dict[type[Reader], type[_Layout]] = {UAMTH5Reader: _UAMT, NnUNetRawReader: _NnUNet, MSDReader: _MSD,
                                              FolderReader: _Folder}


def _write_list(path: Path, ids: Sequence[str]) -> None:
    path.write_text("".join(f"{i}\n" for i in ids))


def write_pseudo_dataset(out_dir: str | Path, reader: Reader, splits: Mapping[str, Sequence[str]],
                         cases: Mapping[str, Case], labels: Mapping[str, dict[int, np.ndarray]],
                         kept: Mapping[str, dict[int, bool]], num_classes: int, axis: int = 2,
                         min_kept_fraction: float = 1.0, info: Mapping | None = None,
                         orientation: str | None = None, not_kept: str = "refined") -> dict:
    """Write a 3D training dataset: real labelled + dev cases and the accepted pseudo-labelled cases
    (see the module docstring for the layouts and the inclusion rule).

    Args:
        out_dir: the dataset folder to create (replaced if it exists); must not overlap the source.
        reader: the source's reader: :class:`~semi3d.data.readers.UAMTH5Reader`,
            :class:`~semi3d.data.nnunet.NnUNetRawReader`, :class:`~semi3d.data.msd.MSDReader` or
            :class:`~semi3d.data.readers.FolderReader`.
        splits: the mining splits; ``labelled`` and ``validation`` are copied with their real labels.
        cases: the mined unlabelled cases, id -> preprocessed :class:`Case` (the grid of the slices).
        labels: case id -> {slice index: ``(A, B)`` refined label} (slices not given are 0).
        kept: case id -> {slice index: kept by the selection}.
        num_classes: K.
        axis: the slicing axis.
        min_kept_fraction: include a mined case when ``kept slices / all slices >= min_kept_fraction``.
        info: extra entries for ``pseudo_cases.json`` (e.g. the mining run and round).
        orientation: the ``data.preprocess.orientation`` the cases were reoriented to (None: the
            files' voxel order), undone when the pseudo-labels are written on the files' grids.
        not_kept: the label of an included case's slices that were not kept: ``"refined"`` (their
            refined mask) or ``"ignore"`` (nnU-Net's ignore label; ``nnunet`` and ``folder`` sources).

    Returns:
        the content of ``pseudo_cases.json`` (plus ``"path"``: the dataset folder).
    """
    layout_cls = next((lay for cls, lay in LAYOUTS.items() if isinstance(reader, cls)), None)
    if layout_cls is None:
        raise InputError("dataset_3d", "a 3D pseudo-label dataset can be written for the formats "
                                       f"{', '.join(DATASET_FORMATS)}, not {type(reader).__name__}")
    if not_kept not in ("refined", "ignore"):
        raise InputError("dataset_3d.not_kept", f"unknown {not_kept!r}; choose refined or ignore")
    if not_kept == "ignore" and (why := cannot_ignore(layout_cls.format)):
        raise InputError("dataset_3d.not_kept", why)
    layout = layout_cls(reader, num_classes, orientation, int(num_classes) if not_kept == "ignore" else None)
    out = Path(out_dir).resolve()
    src_root = Path(reader.root).resolve()
    sources = [src_root] + ([Path(reader.labels_dir).resolve()] if getattr(reader, "labels_dir", None) else [])
    if any(_inside(out, s) or _inside(s, out) for s in sources):
        raise InputError(out, f"the pseudo-label dataset must lie outside the source data "
                              f"({', '.join(map(str, sources))}) and must not contain it")
    real, dev = list(splits.get("labelled", [])), list(splits.get("validation", []))
    overlap = sorted(set(cases) & (set(real) | set(dev)))
    if overlap:
        raise InputError("dataset_3d", f"case {overlap[0]!r} is both mined and labelled / validation")
    flags = {cid: np.array([bool(kept.get(cid, {}).get(i, False)) for i in range(case.image.shape[1:][axis % 3])])
             for cid, case in cases.items()}  # per slice along the axis: kept by the selection
    fractions = {cid: float(f.mean()) for cid, f in flags.items()}
    pseudo = [cid for cid in cases if fractions[cid] >= min_kept_fraction]
    rejected = [cid for cid in cases if fractions[cid] < min_kept_fraction]

    tmp = out.parent / f".{out.name}.tmp{os.getpid()}"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        for cid in real + dev:
            if not reader.has_label(cid):
                raise InputError(reader.root, f"case {cid!r} of the labelled / validation split has no label")
            layout.case(tmp, cid, None)
        for cid in pseudo:
            stacked = stack_case_label(cases[cid].image.shape[1:], labels.get(cid, {}), axis)
            if layout.ignore is not None:
                np.moveaxis(stacked, axis % 3, 0)[~flags[cid]] = layout.ignore
            layout.case(tmp, cid, stacked)
        all_ids = real + pseudo + dev
        root, options = layout.finish(tmp, out, all_ids)
        _write_list(tmp / "train.list", all_ids)
        _write_list(tmp / "labelled_real.list", real)
        _write_list(tmp / "pseudo.list", pseudo)
        _write_list(tmp / "labelled.list", real + pseudo)
        if dev:
            _write_list(tmp / "dev.list", dev)
        data = {"format": layout.format, "root": str(root), "options": options, "num_classes": int(num_classes),
                "splits": {"labelled": {"list": str(out / "labelled.list")},
                           "validation": {"list": str(out / "dev.list")} if dev else None, "unlabelled": "none"}}
        record = {**dict(info or {}), "format": layout.format, "source_root": str(src_root), "axis": axis % 3,
                  "min_kept_fraction": min_kept_fraction, "not_kept": not_kept, "real": real, "pseudo": pseudo,
                  "validation": dev, "rejected": rejected, "kept_fraction": fractions, "data": data}
        (tmp / "pseudo_cases.json").write_text(json.dumps(record, indent=1))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except OSError as e:
        raise InputError(out, f"cannot write the pseudo-label dataset: {e.strerror or e}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return {**record, "path": str(out)}
