"""DICOM series folders: which series a folder holds and their files in slice order (SimpleITK /
GDCM). GDCM reads every file's header to answer, so the answers are kept per folder while the
folder is unchanged: a case is listed, checked and read without scanning its files again."""
from __future__ import annotations

import functools
import os
from pathlib import Path

from ..errors import InputError

__all__ = ["dicom_modality", "dicom_series", "series_files"]


def _folder_key(folder: str | os.PathLike) -> tuple:
    """A folder's identity for the series caches: its path, mtime, and each entry's name, size and
    mtime (a file added, removed, renamed or rewritten in place changes it; a stat per file, no
    header read)."""
    folder = Path(folder).resolve()
    try:
        with os.scandir(folder) as it:
            entries = tuple(sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in it))
        return str(folder), folder.stat().st_mtime_ns, entries
    except OSError:
        return str(folder), -1, ()


def dicom_series(folder: Path) -> tuple[str, ...]:
    """The UIDs of the DICOM series whose files lie in ``folder`` (not its subfolders). GDCM reads
    every file's header for it, so the answer is kept per folder while the folder is unchanged."""
    return _series_ids(_folder_key(folder))


@functools.lru_cache(maxsize=64)
def _series_ids(key: tuple) -> tuple[str, ...]:
    import SimpleITK as sitk

    return tuple(sitk.ImageSeriesReader.GetGDCMSeriesIDs(key[0]))


def series_files(folder: Path) -> list[str]:
    """The files of the one DICOM series in ``folder``, in slice order (GDCM: by position); the
    slice order of the volume :func:`~semi3d.data.volumes.read_volume` reads from the folder.
    Kept per folder, as :func:`dicom_series`."""
    key = _folder_key(folder)
    series = _series_ids(key)
    if len(series) != 1:
        raise InputError(folder, "no DICOM series in this folder" if not series else
                         f"{len(series)} DICOM series in this folder ({', '.join(series[:3])}"
                         f"{' ...' if len(series) > 3 else ''}); give one folder per series")
    return list(_series_files(key, series[0]))


@functools.lru_cache(maxsize=64)
def _series_files(key: tuple, uid: str) -> tuple[str, ...]:
    import SimpleITK as sitk

    return tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(key[0], uid))


def dicom_modality(folder: Path) -> str | None:
    """The Modality (0008,0060) of the one series in ``folder``, e.g. ``"CT"`` or ``"MR"``, from
    its first file's header; None when the tag is missing or empty."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(series_files(folder)[0])
    reader.ReadImageInformation()
    tag = "0008|0060"
    return (reader.GetMetaData(tag).strip() or None) if reader.HasMetaDataKey(tag) else None
