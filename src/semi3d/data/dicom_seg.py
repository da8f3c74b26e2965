"""A label map of a DICOM series written back as a DICOM Segmentation object (DICOM SEG), the form
PACS viewers and clinical tools (3D Slicer, OHIF) load over the images.

Written with ``highdicom`` (optional extra ``dicom``): one segment per foreground class, labelled by
the class name (generic property codes, "Tissue"), algorithm type AUTOMATIC with the algorithm's
name and version; the patient, study and frame of reference are the source series'. The label's
(X, Y, Z) axes are the series' as :func:`~semi3d.data.volumes.read_volume` reads it: Z the slices in
GDCM's order, one frame per source slice of (rows = Y, columns = X).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..atomic import atomic_file
from ..errors import InputError
from .volumes import _short

__all__ = ["require_highdicom", "write_dicom_seg"]


def require_highdicom() -> None:
    """InputError unless ``highdicom`` (which brings pydicom) is installed."""
    import importlib.util

    if importlib.util.find_spec("highdicom") is None:
        raise InputError("--dicom-seg", "needs the highdicom package: pip install highdicom "
                                        "(or semi3d's extra: pip install 'semi3d[dicom]')")


def write_dicom_seg(path: Path, label: np.ndarray, series: Path, class_names: Sequence[str],
                    algorithm: str, version: str) -> Path:
    """Write ``label`` (X, Y, Z) integer 0..K-1 over the DICOM series in folder ``series`` as the
    DICOM SEG file ``path`` (atomically); ``class_names`` (K, background first) name the segments,
    ``algorithm`` / ``version`` identify what produced them. Returns ``path``."""
    import highdicom as hd
    import pydicom
    import SimpleITK as sitk
    from pydicom.sr.codedict import codes

    from .volumes import dicom_series

    uids = dicom_series(series)
    if len(uids) != 1:
        raise InputError(series, f"expected one DICOM series, found {len(uids)}")
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(series), uids[0])  # read_volume's slice order
    try:
        sources = [pydicom.dcmread(f) for f in files]
    except Exception as e:  # pydicom raises InvalidDicomError / OSError / ...
        raise InputError(series, f"cannot read the DICOM files: {_short(e)}") from None
    shape = (int(sources[0].Columns), int(sources[0].Rows), len(sources))
    if tuple(label.shape) != shape:
        raise InputError(series, f"label shape {tuple(label.shape)} is not the series' (columns, rows, slices) {shape}")
    frames = np.ascontiguousarray(np.transpose(label, (2, 1, 0))).astype(np.uint8)  # (slices, rows, columns)
    algo = hd.AlgorithmIdentificationSequence(name=algorithm, family=codes.DCM.ArtificialIntelligence, version=version)
    segments = [hd.seg.SegmentDescription(segment_number=k, segment_label=str(class_names[k]),
                                          segmented_property_category=codes.SCT.Tissue,
                                          segmented_property_type=codes.SCT.Tissue,
                                          algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                                          algorithm_identification=algo)
                for k in range(1, len(class_names))]
    try:
        seg = hd.seg.Segmentation(source_images=sources, pixel_array=frames, segmentation_type="BINARY",
                                  segment_descriptions=segments, series_instance_uid=hd.UID(), series_number=100,
                                  sop_instance_uid=hd.UID(), instance_number=1, manufacturer="semi3d",
                                  manufacturer_model_name=algorithm, software_versions=version,
                                  device_serial_number="none", omit_empty_frames=False)
    except (ValueError, AttributeError, TypeError) as e:  # highdicom: what the source series lacks
        raise InputError(series, f"cannot make a DICOM SEG of this series: {_short(e)}") from None
    with atomic_file(path, suffix=".dcm") as tmp:
        seg.save_as(tmp)
    return Path(path)
