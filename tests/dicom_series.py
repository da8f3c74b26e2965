"""A DICOM series for the tests, written as scanners write one: a file per axial slice (SimpleITK /
GDCM), shared across test folders (on ``sys.path`` through pyproject's pytest ``pythonpath``)."""
import locale
from pathlib import Path

import numpy as np
import SimpleITK as sitk

UID = "1.2.826.0.1.3680043.2.1125.7"  # a series instance UID (SimpleITK's example root)


def write_series(folder: Path, array: np.ndarray, spacing=(0.8, 0.7, 2.5), origin=(10.0, -5.0, 3.0),
                 uid: str = UID) -> sitk.Image:
    """``array`` (X, Y, Z) int16 -> ``folder/s<z>.dcm``; the geometry in DICOM's patient frame (LPS),
    identity direction. Returns the image written, for its geometry."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array, np.int16).transpose(2, 1, 0)))
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(tuple(float(o) for o in origin))
    Path(folder).mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    saved = locale.setlocale(locale.LC_ALL)  # GDCM's DICOM writer resets the process locale to "C"
    try:
        _write_slices(writer, img, folder, spacing, uid)
    finally:
        locale.setlocale(locale.LC_ALL, saved)
    return img


def _write_slices(writer, img, folder, spacing, uid) -> None:
    for z in range(img.GetDepth()):
        s = img[:, :, z]
        position = "\\".join(str(v) for v in img.TransformIndexToPhysicalPoint((0, 0, z)))
        for tag, value in (("0008|0060", "CT"), ("0020|000e", uid), ("0020|000d", uid + ".1"),
                           ("0008|0018", f"{uid}.2.{z}"), ("0020|0013", str(z + 1)), ("0020|0032", position),
                           ("0020|0037", "1\\0\\0\\0\\1\\0"), ("0020|0052", uid + ".3"), ("0028|0030", f"{spacing[1]}\\{spacing[0]}"),
                           ("0018|0050", str(spacing[2]))):
            s.SetMetaData(tag, value)
        writer.SetFileName(str(Path(folder) / f"s{z:03d}.dcm"))
        writer.Execute(s)
