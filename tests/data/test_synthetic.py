import json

import numpy as np
import pytest

from semi3d.data.nnunet import NnUNetRawReader
from semi3d.data.readers import UAMTH5Reader
from semi3d.data.synthetic import make_case, make_cases, write_dataset
from semi3d.errors import InputError

SHAPE = (24, 20, 12)


def test_deterministic_by_seed():
    a, b, c = make_case(7, SHAPE), make_case(7, SHAPE), make_case(8, SHAPE)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    assert not np.array_equal(a.label, c.label) and not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_every_class_present(num_classes):
    for seed in range(4):
        case = make_case(seed, SHAPE, num_classes=num_classes)
        assert case.image.shape == (1, *SHAPE) and case.image.dtype == np.float32
        assert case.label.dtype == np.uint8 and case.label.shape == SHAPE
        assert np.unique(case.label).tolist() == list(range(num_classes))
        assert np.isfinite(case.image).all()


def test_geometry_and_intensity():
    case = make_case(1, SHAPE, spacing=(1.0, 1.0, 1.5), noise=0.0, bias=False)
    np.testing.assert_allclose(np.diag(case.affine), (1.0, 1.0, 1.5, 1.0))
    np.testing.assert_allclose(case.affine[:3, 3], (-12.0, -10.0, -9.0))
    img, lab = case.image[0], case.label
    assert img[lab == 2].mean() > img[lab == 1].mean() > img[lab == 0].mean()
    with pytest.raises(InputError):
        make_case(0, (4, 4, 4))


@pytest.mark.parametrize("fmt", ["nnunet", "uamt_h5"])
def test_written_dataset_reads_back(tmp_path, fmt):
    root = write_dataset(tmp_path / "ds", n_labelled=2, n_unlabelled=1, n_test=1, seed=3, shape=SHAPE,
                         num_classes=3, format=fmt)
    expected = {c.id: c for c in make_cases(4, 3, shape=SHAPE, num_classes=3)}
    if fmt == "nnunet":
        reader = NnUNetRawReader(root)
        assert reader.test_case_ids() == ["syn_003"] and reader.num_classes == 3
        # a valid nnU-Net dataset: numTraining = the cases of imagesTr, each with its label
        assert json.loads((root / "dataset.json").read_text())["numTraining"] == 2
        assert sorted(p.name for p in (root / "imagesTr").iterdir()) == ["syn_000_0000.nii.gz", "syn_001_0000.nii.gz"]
        assert len(list((root / "labelsTr").iterdir())) == 2
        assert [p.name for p in (root / "imagesUnlabelled").iterdir()] == ["syn_002_0000.nii.gz"]
    else:
        reader = UAMTH5Reader(root, list_file="train.list", num_classes=3)
        test_reader = UAMTH5Reader(root, list_file="test.list", num_classes=3)
        assert test_reader.case_ids() == ["syn_003"]
    assert reader.case_ids() == ["syn_000", "syn_001", "syn_002"]
    assert reader.labelled_ids() == ["syn_000", "syn_001"] and reader.unlabelled_ids() == ["syn_002"]
    for cid in ("syn_000", "syn_002", "syn_003"):
        source = test_reader if fmt == "uamt_h5" and cid == "syn_003" else reader
        case, want = source.load(cid), expected[cid]
        np.testing.assert_array_equal(case.image, want.image)
        if cid == "syn_002":
            assert case.label is None
        else:
            np.testing.assert_array_equal(case.label, want.label)
        if fmt == "nnunet":
            np.testing.assert_allclose(case.affine, want.affine, atol=1e-5)


def test_unknown_format(tmp_path):
    with pytest.raises(InputError, match="unknown synthetic dataset format"):
        write_dataset(tmp_path, format="dicom")


def test_nnunet_v2_verifies_the_synthetic_dataset(tmp_path):
    """nnU-Net's own integrity check accepts what the writer produces (the unlabelled pool outside
    imagesTr), and rejects the old layout with unlabelled images inside imagesTr."""
    verify = pytest.importorskip("nnunetv2.experiment_planning.verify_dataset_integrity").verify_dataset_integrity
    import shutil

    root = write_dataset(tmp_path / "Dataset001_Syn", n_labelled=3, n_unlabelled=2, n_test=1, shape=(16, 16, 12))
    verify(str(root), num_processes=1)
    extra = next((root / "imagesUnlabelled").iterdir())
    shutil.copy(extra, root / "imagesTr" / extra.name)
    with pytest.raises(AssertionError, match="expected number of training cases"):
        verify(str(root), num_processes=1)
