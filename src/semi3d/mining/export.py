"""The 3D route: mined slice pseudo-labels stacked into volumes, written as extra 3D targets.

Two outputs, both inside the mining run folder (the source data are only read):

**Pseudo-label volumes** (:func:`write_pseudo_volumes`, every round unless ``save_pseudo: none``).
For every unlabelled case, ``<out>/labels/<case>.nii.gz`` (or ``.npy``) holds the refined slice
labels stacked along the slicing axis on the case's (preprocessed) grid with its affine, and
``<out>/kept/<case>.npy`` a bool vector: which slices passed the selection (slices that were not
mined hold 0 and are not kept). ``<out>/index.json`` lists, per case, the files, the number of
slices and of kept slices. For 2D image datasets, kept pseudo-masks are written as
``<out>/<image>.png`` (0 / 255).

**A 3D training dataset** (:func:`write_pseudo_dataset`, mining config ``dataset_3d: {enabled:
true}``; by default after the last round only, ``every_round: true`` for every round) in
``<run>/pseudo/round<r>/dataset/``, in the layout of the source so that ``semi3d train`` with any
3D method reads it like the original:

- ``uamt_h5``: ``2018LA_Seg_Training Set/<id>/mri_norm2.h5`` (the source's file name and h5 keys);
  ``nnunet``: ``dataset.json`` (the source's, ``numTraining`` updated), ``imagesTr``, ``labelsTr``.
  Other formats are refused (:class:`~semi3d.errors.InputError`).
- Real labelled cases (mining split ``labelled``) and the validation cases (``validation``) are
  copied byte for byte, with their real labels. Validation cases never get a pseudo-label.
- An unlabelled case that was mined is included when the fraction of its slices kept by the
  selection (over ALL its slices: with ``slice_step > 1`` the slices not mined count as not kept)
  is ``>= min_kept_fraction`` (default 1.0: every slice kept). Its image is the source's image
  array as stored (h5: the same values, float64 written as float32; nnU-Net: the channel files
  copied), its label the stacked refined slices (slices not mined: 0) mapped from the
  preprocessed grid back to the original grid the way predictions are (one-hot ->
  :func:`~semi3d.data.preprocess.restore_probabilities`: trilinear with ``align_corners=False``
  like the preprocessing, then the reorientation undone when ``data.preprocess.orientation`` is
  set -> argmax; identity when the grids are equal). A 3D label has no "ignore" value: with
  ``min_kept_fraction < 1`` an included case's slices that were NOT kept carry their refined
  mask anyway. The clean choice is ``select.unit: case`` (a case is kept or rejected as a whole,
  so every included case has all its slices kept) with ``slice_step: 1``; slice-unit selection
  works with the default threshold 1.0 too, but then only cases whose every slice passed are
  included.
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

import numpy as np
import torch
from pydantic import Field

from ..atomic import atomic_file
from ..data.case import Case
from ..data.preprocess import restore_probabilities, safe_name
from ..data.nnunet import NnUNetRawReader
from ..data.volumes import read_volume, write_h5, write_volume
from ..data.readers import Reader, UAMTH5Reader
from ..errors import InputError
from ..losses import class_argmax, one_hot
from .base import Strict
from .data2d import stack_slices

__all__ = ["Dataset3DOptions", "label_to_original_grid", "stack_case_label", "write_pseudo_dataset",
           "write_masks_png", "write_pseudo_volumes"]

DATASET_FORMATS = ("uamt_h5", "nnunet")


class Dataset3DOptions(Strict):
    """``dataset_3d`` of the mining config: write a 3D training dataset of real labels + accepted
    pseudo-labels (:func:`write_pseudo_dataset`). ``min_kept_fraction``: a mined case is included
    when at least this fraction of its slices was kept by the selection; ``every_round``: write it
    after every round (default: after the last round only)."""

    enabled: bool = False
    min_kept_fraction: float = Field(1.0, ge=0, le=1)
    every_round: bool = False


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


# ------------------------------------------------------------------------------ 3D training dataset
def _inside(a: Path, b: Path) -> bool:
    """Whether ``a`` is ``b`` or lies inside it."""
    return a == b or b in a.parents


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copyfile(src, dst)
    except OSError as e:
        raise InputError(dst.parent, f"cannot copy {src.name}: {e.strerror or e}") from None


def _write_uamt_case(tmp: Path, reader: UAMTH5Reader, cid: str, stacked: np.ndarray | None,
                     num_classes: int, orientation: str | None) -> None:
    """Copy a real case's file, or write image (as stored) + pseudo-label."""
    src = reader.case_file(cid)
    if src is None:
        raise InputError(reader.root / cid / reader.filename, "no such file")
    dst = tmp / UAMTH5Reader.SUBDIR / cid / reader.filename
    if stacked is None:
        _copy(src, dst)
        return
    image = read_volume(src, reader.image_key).array  # the stored values (float64 written as float32)
    # the reader ignores a stored affine (the layout's geometry is its spacing alone), so do we
    lab = label_to_original_grid(stacked, image.shape, num_classes, None, orientation)
    write_h5(dst, {reader.image_key: image, reader.label_key: lab})


def _write_nnunet_case(tmp: Path, reader: NnUNetRawReader, cid: str, stacked: np.ndarray | None,
                       num_classes: int, orientation: str | None) -> None:
    """Copy a case's channel files (and its real label file, or write the pseudo-label on the image grid)."""
    chans, label_path = reader.entry(cid)
    for i in range(len(reader.channel_names)):
        if i not in chans:
            raise InputError(reader.root / "imagesTr", f"case {cid!r} lacks channel {i}")
        _copy(chans[i], tmp / "imagesTr" / chans[i].name)
    dst = tmp / "labelsTr" / f"{cid}{reader.file_ending}"
    if stacked is None:
        if label_path is None:
            raise InputError(reader.root / "labelsTr", f"case {cid!r} has no label file")
        _copy(label_path, dst)
        return
    ref = read_volume(chans[0])
    lab = label_to_original_grid(stacked, ref.array.shape, num_classes, ref.affine, orientation)
    write_volume(dst, lab, affine=ref.affine)


def _write_list(path: Path, ids: Sequence[str]) -> None:
    path.write_text("".join(f"{i}\n" for i in ids))


def write_pseudo_dataset(out_dir: str | Path, reader: Reader, splits: Mapping[str, Sequence[str]],
                         cases: Mapping[str, Case], labels: Mapping[str, dict[int, np.ndarray]],
                         kept: Mapping[str, dict[int, bool]], num_classes: int, axis: int = 2,
                         min_kept_fraction: float = 1.0, info: Mapping | None = None,
                         orientation: str | None = None) -> dict:
    """Write a 3D training dataset: real labelled + dev cases and the accepted pseudo-labelled cases
    (see the module docstring for the layout and the inclusion rule).

    Args:
        out_dir: the dataset folder to create (replaced if it exists); must not overlap the source.
        reader: the source's :class:`~semi3d.data.readers.UAMTH5Reader` or
            :class:`~semi3d.data.readers.NnUNetRawReader`.
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

    Returns:
        the content of ``pseudo_cases.json`` (plus ``"path"``: the dataset folder).
    """
    if isinstance(reader, UAMTH5Reader):
        fmt = "uamt_h5"
    elif isinstance(reader, NnUNetRawReader):
        fmt = "nnunet"
    else:
        raise InputError("dataset_3d", "a 3D pseudo-label dataset can be written for the "
                                       f"{' and '.join(DATASET_FORMATS)} formats, not {type(reader).__name__}")
    out = Path(out_dir).resolve()
    src_root = Path(reader.root).resolve()
    if _inside(out, src_root) or _inside(src_root, out):
        raise InputError(out, f"the pseudo-label dataset must lie outside the source data ({src_root}) "
                              "and must not contain it")
    real, dev = list(splits.get("labelled", [])), list(splits.get("validation", []))
    overlap = sorted(set(cases) & (set(real) | set(dev)))
    if overlap:
        raise InputError("dataset_3d", f"case {overlap[0]!r} is both mined and labelled / validation")
    fractions, pseudo, rejected = {}, [], []
    for cid, case in cases.items():
        n = case.image.shape[1:][axis % 3]
        f = sum(bool(kept.get(cid, {}).get(i, False)) for i in range(n)) / n
        fractions[cid] = f
        (pseudo if f >= min_kept_fraction else rejected).append(cid)

    write_case = _write_uamt_case if isinstance(reader, UAMTH5Reader) else _write_nnunet_case
    tmp = out.parent / f".{out.name}.tmp{os.getpid()}"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        for cid in real + dev:
            if not reader.has_label(cid):
                raise InputError(reader.root, f"case {cid!r} of the labelled / validation split has no label")
            write_case(tmp, reader, cid, None, num_classes, orientation)
        for cid in pseudo:
            write_case(tmp, reader, cid, stack_case_label(cases[cid].image.shape[1:], labels.get(cid, {}), axis),
                       num_classes, orientation)
        all_ids = real + pseudo + dev
        if fmt == "nnunet":
            meta = json.loads((src_root / "dataset.json").read_text())
            meta["numTraining"] = len(all_ids)
            (tmp / "dataset.json").write_text(json.dumps(meta, indent=1))
        _write_list(tmp / "train.list", all_ids)
        _write_list(tmp / "labelled_real.list", real)
        _write_list(tmp / "pseudo.list", pseudo)
        _write_list(tmp / "labelled.list", real + pseudo)
        if dev:
            _write_list(tmp / "dev.list", dev)
        options: dict = {}
        if isinstance(reader, UAMTH5Reader):
            options = {"list_file": str(out / "train.list"), "spacing": list(reader.spacing or ()),
                       "image_key": reader.image_key, "label_key": reader.label_key, "filename": reader.filename}
        data = {"format": fmt, "root": str(out), "options": options, "num_classes": int(num_classes),
                "splits": {"labelled": {"list": str(out / "labelled.list")},
                           "validation": {"list": str(out / "dev.list")} if dev else None, "unlabelled": "none"}}
        record = {**dict(info or {}), "format": fmt, "source_root": str(src_root), "axis": axis % 3,
                  "min_kept_fraction": min_kept_fraction, "real": real, "pseudo": pseudo, "validation": dev,
                  "rejected": rejected, "kept_fraction": fractions, "data": data}
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
