import json
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from semi3d.data.nnunet import NnUNetRawReader
from semi3d.data.formats import build_reader
from semi3d.data.volumes import itk_affine, read_channels, read_volume, write_h5, write_volume
from semi3d.data.readers import FolderReader, UAMTH5Reader
from semi3d.errors import InputError

SHAPE = (24, 20, 12)
LA_ROOT = Path(__file__).resolve().parents[3] / "shared" / "data" / "LA"


def _affine() -> np.ndarray:
    """Oblique, anisotropic, with an origin: exercises every part of the conversions."""
    c, s = np.cos(0.3), np.sin(0.3)
    a = np.eye(4)
    a[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([0.8, 0.9, 2.0])
    a[:3, 3] = [-10.0, 5.5, 30.0]
    return a


def _image(seed=0):
    return np.random.default_rng(seed).normal(size=SHAPE).astype(np.float32)


def _label(k=3):
    lab = np.zeros(SHAPE, np.uint8)
    lab[4:12, 5:10, 2:8] = 1
    lab[14:20, 2:6, 6:10] = k - 1
    return lab


def _nnunet(root: Path, channels=1, labels=None, cases=("a", "b"), labelled=("a",), pool="imagesUnlabelled") -> Path:
    """An nnU-Net raw dataset; the unlabelled cases in ``pool`` (``imagesTr``: the old layout)."""
    meta = {"channel_names": {str(i): f"ch{i}" for i in range(channels)},
            "labels": labels or {"background": 0, "organ": 1, "lesion": 2},
            "numTraining": len(labelled), "file_ending": ".nii.gz"}
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps(meta))
    for i, cid in enumerate(cases):
        for c in range(channels):
            folder = "imagesTr" if cid in labelled else pool
            write_volume(root / folder / f"{cid}_{c:04d}.nii.gz", _image(i + c), _affine())
        if cid in labelled:
            write_volume(root / "labelsTr" / f"{cid}.nii.gz", _label(), _affine())
    return root


def _snapshot(path: Path):
    return path.read_bytes(), path.stat().st_mtime_ns


# ---------------------------------------------------------------- writers / round trips
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_round_trip_geometry(tmp_path, suffix):
    img, lab = _image(), _label()
    write_volume(tmp_path / f"img{suffix}", img, affine=_affine())
    write_volume(tmp_path / f"lab{suffix}", lab, affine=_affine())
    v, l = read_volume(tmp_path / f"img{suffix}"), read_volume(tmp_path / f"lab{suffix}")
    np.testing.assert_array_equal(v.array, img)
    np.testing.assert_array_equal(l.array, lab)
    assert l.array.dtype == np.uint8
    np.testing.assert_allclose(v.affine, _affine(), atol=1e-5)
    np.testing.assert_allclose(v.spacing, (0.8, 0.9, 2.0), atol=1e-5)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_multichannel_images_read_as_written(tmp_path, suffix):
    """A (C, X, Y, Z) array written as a 4D NIfTI (channels last) or a vector NRRD / MHA reads back
    as C channels; a 3D volume as one; where one volume is expected a 4D file is named."""
    img = np.stack([_image(0), _image(1)])
    path = write_volume(tmp_path / f"two{suffix}", img, affine=_affine())
    chans = read_channels(path)
    assert len(chans) == 2
    for c, v in enumerate(chans):
        np.testing.assert_array_equal(v.array, img[c])
        np.testing.assert_allclose(v.affine, _affine(), atol=1e-5)
    assert len(read_channels(write_volume(tmp_path / f"one{suffix}", _image(), affine=_affine()))) == 1
    if suffix == ".nii.gz":  # ITK writes a vector image to NIfTI as (X, Y, Z, 1, C)
        itk = sitk.GetImageFromArray(np.ascontiguousarray(img.transpose(3, 2, 1, 0)), isVector=True)
        sitk.WriteImage(itk, str(tmp_path / "itk.nii.gz"))
        assert nib.load(tmp_path / "itk.nii.gz").shape == (*SHAPE, 1, 2)
        assert [np.array_equal(v.array, img[c]) for c, v in enumerate(read_channels(tmp_path / "itk.nii.gz"))] == [True, True]
    with pytest.raises(InputError, match=rf"two{suffix}: expected a 3D volume \(X, Y, Z\), got shape \(24, 20, 12, 2\)"):
        read_volume(path)
    with pytest.raises(InputError, match="two.h5: expected a 3D volume .* or, for NIfTI / NRRD / MHA, channels"):
        read_channels(write_volume(tmp_path / "two.h5", img))  # h5 / npy: no defined channel axis


def test_itk_and_nibabel_agree_on_axes_and_affine(tmp_path):
    """SimpleITK reading a NIfTI must give nibabel's array and affine after our conversion."""
    path = write_volume(tmp_path / "x.nii.gz", _image(), affine=_affine())
    itk = sitk.ReadImage(str(path))
    np.testing.assert_allclose(itk_affine(itk), nib.load(path).affine, atol=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(itk).transpose(2, 1, 0), _image())


def test_h5_npy_and_defaults(tmp_path):
    lab = _label()
    write_volume(tmp_path / "p.h5", lab, spacing=(2.0, 2.0, 3.0))
    with h5py.File(tmp_path / "p.h5") as f:
        assert list(f) == ["label"]
    v = read_volume(tmp_path / "p.h5")
    np.testing.assert_array_equal(v.array, lab)
    np.testing.assert_allclose(v.affine, np.diag([2.0, 2.0, 3.0, 1.0]))
    write_volume(tmp_path / "q.h5", np.ones((2, *SHAPE), np.float64))
    with h5py.File(tmp_path / "q.h5") as f:
        assert f["prob"].dtype == np.float32 and f["prob"].shape == (2, *SHAPE)
    write_volume(tmp_path / "n.npy", lab.astype(np.int64) * 300)
    assert np.load(tmp_path / "n.npy").dtype == np.int16
    image = read_volume(write_volume(tmp_path / "c.nii.gz", _image(), affine=_affine()))
    write_volume(tmp_path / "ref.nii.gz", lab, reference=image)
    np.testing.assert_allclose(read_volume(tmp_path / "ref.nii.gz").affine, _affine(), atol=1e-5)


def test_write_into_unwritable_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="file: cannot create folder"):
        write_volume(blocker / "out.nii.gz", _label())
    with pytest.raises(InputError, match="unsupported file type"):
        write_volume(tmp_path / "out.png", _label())


# ---------------------------------------------------------------- nnU-Net
def test_nnunet_reader(tmp_path):
    root = _nnunet(tmp_path / "ds", channels=2, cases=("a", "b", "c"), labelled=("a", "c"))
    write_volume(root / "imagesTs" / "t_0000.nii.gz", _image(), _affine())
    write_volume(root / "imagesTs" / "t_0001.nii.gz", _image(1), _affine())
    write_volume(root / "labelsTs" / "t.nii.gz", _label(), _affine())
    r = build_reader("nnunet", root)
    assert r.case_ids() == ["a", "c", "b"] and r.test_case_ids() == ["t"]  # training cases, then the pool
    assert r.labelled_ids() == ["a", "c"] and r.unlabelled_ids() == ["b"] and r.has_label("t")
    assert r.channel_names == ["ch0", "ch1"] and r.num_classes == 3
    assert r.class_names == ["background", "organ", "lesion"]
    case = r.load("a")
    assert case.image.shape == (2, *SHAPE) and case.image.dtype == np.float32
    assert case.label.dtype == np.uint8 and case.shape == SHAPE
    np.testing.assert_array_equal(case.image[1], _image(1))
    np.testing.assert_allclose(case.affine, _affine(), atol=1e-5)
    np.testing.assert_allclose(case.spacing, (0.8, 0.9, 2.0), atol=1e-5)
    assert r.load("b").label is None and r.load("t").label is not None


def test_nnunet_unlabelled_pool_outside_nnunets_folders(tmp_path):
    root = _nnunet(tmp_path / "ds", cases=("a", "b", "c"), labelled=("a",), pool="elsewhere")
    r = NnUNetRawReader(root)  # imagesTr/labelsTr alone: a valid nnU-Net dataset with no unlabelled case
    assert r.case_ids() == ["a"]
    r = build_reader("nnunet", root, unlabelled="elsewhere")
    assert r.case_ids() == ["a", "b", "c"] and r.unlabelled_ids() == ["b", "c"] and r.load("b").label is None
    with pytest.raises(InputError, match="no such folder"):
        NnUNetRawReader(root, unlabelled="nope")
    write_volume(root / "elsewhere" / "a_0000.nii.gz", _image(), _affine())
    with pytest.raises(InputError, match="'a' is also a training case"):
        NnUNetRawReader(root, unlabelled=root / "elsewhere")


def test_nnunet_old_layout_is_read_with_a_warning(tmp_path):
    root = _nnunet(tmp_path / "ds", cases=("a", "b"), labelled=("a",), pool="imagesTr")
    with pytest.warns(UserWarning, match="imagesTr have no label.*imagesUnlabelled"):
        r = NnUNetRawReader(root)
    assert r.unlabelled_ids() == ["b"]


def test_nnunet_dataset_key_lists_the_files(tmp_path):
    root = _nnunet(tmp_path / "ds", cases=("a",), labelled=("a",))
    write_volume(root / "other" / "x_img.nii.gz", _image(3), _affine())
    write_volume(root / "other" / "x_seg.nii.gz", _label(), _affine())
    meta = json.loads((root / "dataset.json").read_text())
    meta["dataset"] = {"x": {"images": ["other/x_img.nii.gz"], "label": str(root / "other" / "x_seg.nii.gz")}}
    (root / "dataset.json").write_text(json.dumps(meta))
    r = NnUNetRawReader(root)
    assert r.case_ids() == ["x"] and r.labelled_ids() == ["x"]  # the list replaces imagesTr
    np.testing.assert_array_equal(r.load("x").image[0], _image(3))
    meta["dataset"] = {"x": {"images": ["other/missing.nii.gz"], "label": "other/x_seg.nii.gz"}}
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="dataset\\['x'\\] names other/missing.nii.gz, which does not exist"):
        NnUNetRawReader(root)


def test_nnunet_missing_channel(tmp_path):
    root = _nnunet(tmp_path / "ds", channels=2)
    (root / "imagesUnlabelled" / "b_0001.nii.gz").unlink()
    with pytest.raises(InputError, match=r"imagesUnlabelled: case 'b' lacks channel file\(s\) b_0001.nii.gz"):
        NnUNetRawReader(root).load("b")


def test_nnunet_bad_dataset_json(tmp_path):
    with pytest.raises(InputError, match="dataset.json: missing"):
        NnUNetRawReader(tmp_path)
    _nnunet(tmp_path / "r", labels={"background": 0, "whole": [1, 2], "core": 2})
    with pytest.raises(InputError, match="region-based labels are not supported"):
        NnUNetRawReader(tmp_path / "r")


# ---------------------------------------------------------------- validation
def test_shape_mismatch(tmp_path):
    root = _nnunet(tmp_path / "ds")
    write_volume(root / "labelsTr" / "a.nii.gz", np.zeros((24, 20, 11), np.uint8), _affine())
    with pytest.raises(InputError, match=r"a.nii.gz: label shape \(24, 20, 11\) does not match"):
        NnUNetRawReader(root).load("a")


def test_affine_mismatch(tmp_path):
    root = _nnunet(tmp_path / "ds")
    shifted = _affine()
    shifted[0, 3] += 0.01
    write_volume(root / "labelsTr" / "a.nii.gz", _label(), shifted)
    with pytest.raises(InputError, match="label affine differs"):
        NnUNetRawReader(root).load("a")
    shifted[0, 3] = _affine()[0, 3] + 1e-4  # within tolerance
    write_volume(root / "labelsTr" / "a.nii.gz", _label(), shifted)
    NnUNetRawReader(root).load("a")


def test_channel_shape_mismatch(tmp_path):
    root = _nnunet(tmp_path / "ds", channels=2)
    write_volume(root / "imagesTr" / "a_0001.nii.gz", np.zeros((24, 20, 10), np.float32), _affine())
    with pytest.raises(InputError, match="a_0001.nii.gz: channel shape"):
        NnUNetRawReader(root).load("a")


def test_label_out_of_range_names_values(tmp_path):
    root = _nnunet(tmp_path / "ds")
    write_volume(root / "labelsTr" / "a.nii.gz", _label(k=6), _affine())
    with pytest.raises(InputError, match=r"a.nii.gz: label values 5 are not in 0..2"):
        NnUNetRawReader(root).load("a")


def test_non_integer_label(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    np.save(tmp_path / "img" / "x.npy", _image())
    np.save(tmp_path / "lab" / "x.npy", _label().astype(np.float32) * 0.5)
    with pytest.raises(InputError, match="x.npy: label has non-integer values: 0.5"):
        FolderReader(tmp_path / "img", tmp_path / "lab").load("x")


def test_nan_image(tmp_path):
    img = _image()
    img[1, 2, 3] = np.nan
    img[2, 2, 3] = np.inf
    write_volume(tmp_path / "x.nrrd", img)
    with pytest.raises(InputError, match="x.nrrd: image has 2 NaN/inf voxel"):
        FolderReader(tmp_path).load("x")


def test_truncated_and_garbage_files_untouched(tmp_path):
    full = write_volume(tmp_path / "full.nii.gz", _image())
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    full.unlink()
    garbage = tmp_path / "g.h5"
    garbage.write_bytes(b"\x00not an hdf5 file" * 50)
    before = {p: _snapshot(p) for p in (cut, garbage)}
    reader = FolderReader(tmp_path)
    for cid, name in (("cut", "cut.nii.gz"), ("g", "g.h5")):
        with pytest.raises(InputError, match=rf"{name}: cannot read: ") as err:
            reader.load(cid)
        assert "\n" not in str(err.value) and err.value.__cause__ is None
    assert {p: _snapshot(p) for p in (cut, garbage)} == before


def test_missing_id_and_bad_factory_args(tmp_path):
    root = _nnunet(tmp_path / "ds")
    with pytest.raises(InputError, match="no case 'zz'"):
        NnUNetRawReader(root).load("zz")
    with pytest.raises(InputError, match="unknown dataset format"):
        build_reader("dicom", root)
    with pytest.raises(InputError, match="nope: no such folder"):
        build_reader("nnunet", tmp_path / "nope")
    with pytest.raises(InputError, match="unknown option"):
        build_reader("folder", root, colour="red")


# ---------------------------------------------------------------- folder and UA-MT readers
def test_folder_reader_mixed_formats(tmp_path):
    img, lab = tmp_path / "img", tmp_path / "lab"
    write_volume(img / "a.nii.gz", _image(0), _affine())
    write_volume(img / "b.nrrd", _image(1), _affine())
    write_volume(img / "c.npy", _image(2))
    (img / "notes.txt").write_text("ignored")
    write_volume(lab / "a.nii.gz", _label(), _affine())
    write_volume(lab / "c.npy", _label())
    r = build_reader("folder", img, labels=lab, num_classes=3)
    assert r.case_ids() == ["a", "b", "c"] and r.labelled_ids() == ["a", "c"]
    b = r.load("b")
    np.testing.assert_array_equal(b.image[0], _image(1))
    np.testing.assert_allclose(b.affine, _affine(), atol=1e-5)
    assert b.label is None and r.load("c").label.dtype == np.uint8
    np.testing.assert_allclose(r.load("c").affine, np.eye(4))


def test_folder_reader_multimodal_4d_nifti_as_the_decathlon_stores_it(tmp_path):
    """A Medical Segmentation Decathlon multi-modal task: imagesTr/<case>.nii.gz of shape
    (X, Y, Z, C), labelsTr/<case>.nii.gz. A case with another channel count is named."""
    img, lab = tmp_path / "imagesTr", tmp_path / "labelsTr"
    img.mkdir()
    for i, cid in enumerate(("prostate_00", "prostate_01")):  # written by nibabel, as the Decathlon's files
        nib.save(nib.Nifti1Image(np.stack([_image(i), _image(i + 5)], axis=-1), _affine()), img / f"{cid}.nii.gz")
        write_volume(lab / f"{cid}.nii.gz", _label(), _affine())
    r = build_reader("folder", img, labels=lab, num_classes=3)
    assert r.channel_names == ["channel0", "channel1"] and r.labelled_ids() == ["prostate_00", "prostate_01"]
    case = r.load("prostate_01")
    assert case.image.shape == (2, *SHAPE)
    np.testing.assert_array_equal(case.image[1], _image(6))
    np.testing.assert_array_equal(case.label, _label())
    write_volume(img / "prostate_02.nii.gz", _image(9), _affine())
    with pytest.raises(InputError, match="prostate_02.nii.gz: 1 image channel.*first case .prostate_00.nii.gz. has 2"):
        build_reader("folder", img, labels=lab, num_classes=3).load("prostate_02")


def test_folder_reader_dicom_series_images_with_nifti_labels(tmp_path):
    """Scanner images as DICOM series folders, labels exported as NIfTI on the series' grid: the
    common clinical layout, read without conversion."""
    from dicom_series import write_series

    img, lab = tmp_path / "img", tmp_path / "lab"
    series = write_series(img / "p01", np.round(_image(0) * 10).astype(np.int16))
    write_series(img / "p02", np.round(_image(1) * 10).astype(np.int16), uid="1.2.826.0.1.3680043.2.1125.9")
    (img / ".hidden").mkdir()
    write_volume(lab / "p01.nii.gz", _label(), itk_affine(series))
    r = build_reader("folder", img, labels=lab, num_classes=3)
    assert r.case_ids() == ["p01", "p02"] and r.labelled_ids() == ["p01"]
    assert r.channel_names == ["CT"]  # the series' Modality tag (semi3d plan normalises it as CT)
    assert build_reader("folder", img, labels=lab, channel_names=["MR"]).channel_names == ["MR"]  # given wins
    case = r.load("p01")
    np.testing.assert_array_equal(case.image[0], np.round(_image(0) * 10))
    np.testing.assert_array_equal(case.label, _label())
    np.testing.assert_allclose(case.affine, itk_affine(series), atol=1e-5)
    write_volume(lab / "p02.nii.gz", _label(), _affine())  # exported on another grid: named, not trained on
    with pytest.raises(InputError, match="p02.nii.gz: label affine differs"):
        build_reader("folder", img, labels=lab, num_classes=3).load("p02")


def _uamt(root: Path, labelled=("p", "q"), unlabelled=("u",), direct=()):
    for cid in (*labelled, *unlabelled):
        data = {"image": _image(), **({"label": _label(2)} if cid in labelled else {})}
        base = root if cid in direct else root / UAMTH5Reader.SUBDIR
        write_h5(base / cid / "mri_norm2.h5", data)
    return root


def test_uamt_reader(tmp_path):
    root = _uamt(tmp_path, direct=("q",))
    (root / "train.list").write_text("u\np\n\nq\n")
    r = build_reader("uamt_h5", root, list_file="train.list", spacing=(0.5, 0.5, 1.0))
    assert r.case_ids() == ["u", "p", "q"] and r.unlabelled_ids() == ["u"]
    assert UAMTH5Reader(root).case_ids() == ["p", "q", "u"]
    case = r.load("q")
    assert case.image.shape == (1, *SHAPE) and case.image.dtype == np.float32
    np.testing.assert_array_equal(case.label, _label(2))
    np.testing.assert_allclose(case.affine, np.diag([0.5, 0.5, 1.0, 1.0]))
    assert case.spacing == (0.5, 0.5, 1.0) and r.load("u").label is None


def test_uamt_list_with_missing_id(tmp_path):
    root = _uamt(tmp_path)
    (root / "train.list").write_text("p\nghost\n")
    with pytest.raises(InputError, match=r"train.list: lists case 'ghost'"):
        UAMTH5Reader(root, list_file=root / "train.list")


def test_uamt_label_out_of_range(tmp_path):
    root = _uamt(tmp_path)
    write_h5(root / UAMTH5Reader.SUBDIR / "p" / "mri_norm2.h5", {"image": _image(), "label": _label(4)})
    with pytest.raises(InputError, match=r"mri_norm2.h5: label values 3 are not in 0..1"):
        UAMTH5Reader(root).load("p")


@pytest.mark.skipif(not (LA_ROOT / "train.list").is_file(), reason="real LA data not present")
def test_real_la_cases():
    r = UAMTH5Reader(LA_ROOT, list_file=LA_ROOT / "train.list")
    assert len(r.case_ids()) == 80
    for cid in r.case_ids()[:2]:
        case = r.load(cid)
        assert case.image.ndim == 4 and case.image.shape[0] == 1 and case.image.dtype == np.float32
        assert case.label.shape == case.shape and case.label.dtype == np.uint8
        assert set(np.unique(case.label).tolist()) == {0, 1}
        assert case.spacing == (0.625, 0.625, 0.625)


def test_a_dicom_series_folder_reads_as_one_volume(tmp_path):
    """Slices in any file order, the geometry from the DICOM position / orientation / spacing tags."""
    from dicom_series import write_series

    array = np.arange(5 * 6 * 4, dtype=np.int16).reshape(5, 6, 4) - 100  # (X, Y, Z), CT-like negatives
    img = write_series(tmp_path / "series", array)
    for i, f in enumerate(sorted((tmp_path / "series").iterdir())):  # names no longer in slice order
        f.rename(f.with_name(f"{(7 * i) % 4}x{f.name}"))
    v = read_volume(tmp_path / "series")
    np.testing.assert_array_equal(v.array, array)
    np.testing.assert_allclose(v.affine, itk_affine(img), atol=1e-5)
    np.testing.assert_allclose(v.spacing, (0.8, 0.7, 2.5), atol=1e-5)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty: no DICOM series in this folder"):
        read_volume(tmp_path / "empty")
    write_series(tmp_path / "series", array, uid="1.2.826.0.1.3680043.2.1125.8")
    with pytest.raises(InputError, match="series: 2 DICOM series in this folder .*give one folder per series"):
        read_volume(tmp_path / "series")
