"""DICOM SEG labels: written over a series and read back, partial SEGs as viewers save them, the
folder format training on DICOM series with SEG labels, and the refusals."""
import sys

import numpy as np
import pytest

from semi3d.data.dicom_seg import read_dicom_seg, require_highdicom, write_dicom_seg
from semi3d.data.formats import build_reader
from semi3d.errors import InputError

SHAPE = (12, 10, 5)  # (X, Y, Z): columns, rows, slices


def _label():
    lab = np.zeros(SHAPE, np.uint8)
    lab[2:6, 3:8, 1:3] = 1
    lab[7:11, 1:4, 2:5] = 2
    return lab


def _series(folder, seed=0, uid=None):
    from dicom_series import UID, write_series

    image = (np.random.default_rng(seed).normal(size=SHAPE) * 100).astype(np.int16)
    write_series(folder, image, uid=uid or UID)
    return image


def test_a_label_round_trips_through_a_dicom_seg(tmp_path):
    pytest.importorskip("highdicom")
    _series(tmp_path / "p01")
    path = write_dicom_seg(tmp_path / "p01.seg.dcm", _label(), tmp_path / "p01", ["background", "organ", "lesion"],
                           "semi3d", "0")
    vol = read_dicom_seg(path, tmp_path / "p01")
    assert vol.array.dtype == np.uint8 and np.array_equal(vol.array, _label())


def test_a_seg_of_some_slices_reads_as_zero_elsewhere(tmp_path):
    """Viewers save SEGs of the annotated slices only (empty frames omitted)."""
    hd = pytest.importorskip("highdicom")
    import pydicom
    from pydicom.sr.codedict import codes

    _series(tmp_path / "p01")
    sources = sorted((pydicom.dcmread(f) for f in (tmp_path / "p01").iterdir()), key=lambda d: float(d.ImagePositionPatient[2]))
    lab = _label()
    lab[:, :, 3:] = 0  # annotated on slices 1 and 2 only
    desc = hd.seg.SegmentDescription(1, "organ", codes.SCT.Tissue, codes.SCT.Tissue, "MANUAL")
    seg = hd.seg.Segmentation(sources[1:3], (lab[:, :, 1:3] == 1).transpose(2, 1, 0).astype(np.uint8), "BINARY",
                              [desc], hd.UID(), 1, hd.UID(), 1, "x", "x", "0", "0")
    seg.save_as(tmp_path / "partial.dcm")
    assert np.array_equal(read_dicom_seg(tmp_path / "partial.dcm", tmp_path / "p01").array, (lab == 1).astype(np.uint8))
    both = np.stack([(lab == 1), (lab > 0)], -1).transpose(2, 1, 0, 3)[1:3].astype(np.uint8)  # segment 2 covers 1
    descs = [hd.seg.SegmentDescription(k, n, codes.SCT.Tissue, codes.SCT.Tissue, "MANUAL") for k, n in ((1, "a"), (2, "b"))]
    hd.seg.Segmentation(sources[1:3], both, "BINARY", descs, hd.UID(), 1, hd.UID(), 1, "x", "x", "0", "0"
                        ).save_as(tmp_path / "overlap.dcm")
    with pytest.raises(InputError, match="overlap.dcm: cannot read its segments as one label map"):
        read_dicom_seg(tmp_path / "overlap.dcm", tmp_path / "p01")
    _series(tmp_path / "other", uid="1.2.826.0.1.3680043.2.1125.9")
    write_dicom_seg(tmp_path / "o.seg.dcm", _label(), tmp_path / "other", ["background", "organ", "lesion"], "semi3d", "0")
    with pytest.raises(InputError, match="o.seg.dcm: references none of the slices of the series in"):
        read_dicom_seg(tmp_path / "o.seg.dcm", tmp_path / "p01")
    (tmp_path / "junk.dcm").write_bytes(b"not dicom")
    with pytest.raises(InputError, match="junk.dcm: cannot read as a DICOM SEG"):
        read_dicom_seg(tmp_path / "junk.dcm", tmp_path / "p01")


def test_dicom_series_with_seg_labels_train_as_the_folder_format(tmp_path):
    pytest.importorskip("highdicom")
    from semi3d.config import load_config
    from semi3d.engine.trainer import train

    img, lab = tmp_path / "images", tmp_path / "labels"
    for i, case in enumerate(("p01", "p02", "p03")):
        _series(img / case, seed=i, uid=f"1.2.826.0.1.3680043.2.1125.{10 + i}")
        write_dicom_seg(lab / f"{case}.seg.dcm", _label(), img / case, ["background", "organ", "lesion"], "x", "0")
    r = build_reader("folder", img, labels=lab, num_classes=3)
    assert r.labelled_ids() == ["p01", "p02", "p03"] and np.array_equal(r.load("p02").label, _label())
    tree = {"name": "seg", "output_dir": str(tmp_path / "runs"), "threads": 1,
            "data": {"format": "folder", "root": str(img), "options": {"labels": str(lab)}, "num_classes": 3,
                     "splits": {"labelled": {"first": 2}, "validation": {"last": 1}}, "patch_size": [8, 8, 4]},
            "model": {"net3d": {"name": "unet3d", "options": {"levels": 2, "base": 4}}},
            "train": {"iterations": 2, "batch_size": 1, "val_every": 2, "progress_bar": False}}
    assert train(load_config(tree=tree))["iterations"] == 2


def test_refusals(tmp_path):
    pytest.importorskip("highdicom")
    _series(tmp_path / "s")
    with pytest.raises(InputError, match=r"s: label shape \(10, 12, 5\) is not the series' .* \(12, 10, 5\)"):
        write_dicom_seg(tmp_path / "o" / "x.seg.dcm", np.zeros((10, 12, 5), np.uint8), tmp_path / "s",
                        ["background", "organ"], "semi3d", "0")
    assert not (tmp_path / "o").exists()
    from semi3d.data.volumes import write_volume

    write_volume(tmp_path / "img" / "a.nii.gz", np.zeros(SHAPE, np.float32))
    write_dicom_seg(tmp_path / "lab" / "a.seg.dcm", _label(), tmp_path / "s", ["background", "organ", "lesion"], "x", "0")
    with pytest.raises(InputError, match="a.seg.dcm: a DICOM SEG label needs its image as a DICOM series folder"):
        build_reader("folder", tmp_path / "img", labels=tmp_path / "lab", num_classes=3).load("a")
    import pydicom

    from semi3d.data.dicom_seg import check_seg_source

    check_seg_source(tmp_path / "s")
    for f in (tmp_path / "s").iterdir():  # a series without a frame of reference (not a scanner's)
        ds = pydicom.dcmread(f)
        del ds.FrameOfReferenceUID
        ds.save_as(f)
    with pytest.raises(InputError, match="s: its DICOM files lack FrameOfReferenceUID: no DICOM SEG can reference them"):
        check_seg_source(tmp_path / "s")


def test_without_highdicom_the_option_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "highdicom", None)  # as if not installed: its import and find_spec fail
    with pytest.raises(InputError, match="--dicom-seg: needs the highdicom package: pip install highdicom"):
        require_highdicom()
    with pytest.raises(InputError, match="a.seg.dcm: needs the highdicom package"):
        read_dicom_seg(tmp_path / "a.seg.dcm", tmp_path)
