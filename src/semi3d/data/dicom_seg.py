"""Label maps of a DICOM series as DICOM Segmentation objects (DICOM SEG), the form PACS viewers and
clinical tools (3D Slicer, OHIF) load over the images and many public collections (TCIA) ship
annotations in; with ``highdicom`` (optional extra ``dicom``).

Written (:func:`write_dicom_seg`): one segment per foreground class, labelled by the class name
(generic property codes, "Tissue"), algorithm type AUTOMATIC with the algorithm's name and version;
the patient, study and frame of reference are the source series'. Read (:func:`read_dicom_seg`): the
segment numbers are the class values, each frame placed on the source slice it references. The
label's (X, Y, Z) axes are the series' as :func:`~semi3d.data.volumes.read_volume` reads it: Z the
slices in GDCM's order, one frame per source slice of (rows = Y, columns = X).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..atomic import atomic_file
from ..errors import InputError
from .dicom import series_files
from .volumes import Volume, short_error

__all__ = ["SEG_SUFFIXES", "check_seg_source", "read_dicom_seg", "require_highdicom", "write_dicom_seg"]

SEG_SUFFIXES = (".seg.dcm", ".dcm")  # label files read as DICOM SEG (over the case's DICOM series)


def require_highdicom(where: str = "--dicom-seg") -> None:
    """InputError naming ``where`` (what needs it) unless ``highdicom`` (which brings pydicom) is installed."""
    import importlib.util

    if importlib.util.find_spec("highdicom") is None:
        raise InputError(where, "needs the highdicom package: pip install highdicom "
                                "(or semi3d's extra: pip install 'semi3d[dicom]')")


def _sources(series: Path, pixels: bool) -> list:
    """The pydicom datasets of the one series in folder ``series``, in read_volume's slice order."""
    import pydicom

    files = series_files(series)
    try:
        return [pydicom.dcmread(f, stop_before_pixels=not pixels) for f in files]
    except Exception as e:  # pydicom raises InvalidDicomError / OSError / ...
        raise InputError(series, f"cannot read the DICOM files: {short_error(e)}") from None


def check_seg_source(series: Path) -> None:
    """InputError naming ``series`` when a DICOM SEG cannot be made over it: what highdicom
    requires of the source images and scanners' series carry (headers only; before any output)."""
    require_highdicom()
    for d in _sources(series, pixels=False):
        missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")
                   if not d.get(k)]
        if missing:
            raise InputError(series, f"its DICOM files lack {', '.join(missing)}: no DICOM SEG can reference them")


def _shape(sources: list) -> tuple[int, int, int]:
    """(X, Y, Z) = (columns, rows, slices) of a series."""
    return int(sources[0].Columns), int(sources[0].Rows), len(sources)


def read_dicom_seg(path: Path, series: Path) -> Volume:
    """The label map (X, Y, Z) uint8 that the DICOM SEG file ``path`` draws over the DICOM series in
    folder ``series``: segment number k -> value k, 0 where no segment is (slices without a frame
    included). Its affine is None (the image's applies: the frames are placed by the slices they
    reference). Raises InputError: not a SEG, a SEG of none of the series' slices, overlapping
    segments."""
    require_highdicom(str(path))
    import highdicom as hd

    sources = _sources(series, pixels=False)
    try:
        seg = hd.seg.segread(path)
    except Exception as e:  # pydicom / highdicom: not a file, not a SEG
        raise InputError(path, f"cannot read as a DICOM SEG: {short_error(e)}") from None
    uids = [str(d.SOPInstanceUID) for d in sources]
    referenced = {str(sop) for _, _, sop in seg.get_source_image_uids()}
    covered = [i for i, u in enumerate(uids) if u in referenced]
    if not covered:
        raise InputError(path, f"references none of the slices of the series in {series}")
    x, y, z = _shape(sources)
    frames = np.zeros((z, y, x), np.uint8)
    try:
        frames[covered] = seg.get_pixels_by_source_instance([uids[i] for i in covered], combine_segments=True,
                                                            assert_missing_frames_are_empty=True)
    except (ValueError, KeyError, RuntimeError) as e:  # e.g. overlapping segments
        raise InputError(path, f"cannot read its segments as one label map: {short_error(e)}") from None
    return Volume(np.ascontiguousarray(frames.transpose(2, 1, 0)), None, None, Path(path))


def write_dicom_seg(path: Path, label: np.ndarray, series: Path, class_names: Sequence[str],
                    algorithm: str, version: str) -> Path:
    """Write ``label`` (X, Y, Z) integer 0..K-1 over the DICOM series in folder ``series`` as the
    DICOM SEG file ``path`` (atomically); ``class_names`` (K, background first) name the segments,
    ``algorithm`` / ``version`` identify what produced them. Returns ``path``."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    sources = _sources(series, pixels=True)
    shape = _shape(sources)
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
        raise InputError(series, f"cannot make a DICOM SEG of this series: {short_error(e)}") from None
    with atomic_file(path, suffix=".dcm") as tmp:
        seg.save_as(tmp)
    return Path(path)
