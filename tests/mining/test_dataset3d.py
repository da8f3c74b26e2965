"""The 3D pseudo-label dataset written in each source format's layout (real + dev cases copied,
accepted mined cases with their labels on the files' own grids), read back by the same reader."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from semi3d.config import DataConfig
from semi3d.data.dataset import prepare_data
from semi3d.data.formats import build_reader
from semi3d.data.nnunet import NnUNetRawReader
from semi3d.data.preprocess import Preprocessor
from semi3d.data.readers import FolderReader, IndexedReader
from semi3d.data.volumes import read_channels, write_volume
from semi3d.errors import InputError
from semi3d.losses import IGNORE_INDEX
from semi3d.mining.config import load_mining_config
from semi3d.mining.dataset3d import write_pseudo_dataset
from semi3d.mining.export import label_to_original_grid

from dicom_series import write_series
from msd_task import write_task


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _mined(reader, ids, k: int, axis: int = 2):
    """The unlabelled cases preprocessed at half resolution, random slice labels, every slice kept."""
    pre, rng = Preprocessor(scale=0.5), np.random.default_rng(0)
    cases = {cid: pre(reader.load(cid)) for cid in ids}
    labels = {}
    for cid, c in cases.items():
        shape2d = tuple(s for i, s in enumerate(c.shape) if i != axis)
        labels[cid] = {i: rng.integers(0, k, shape2d).astype(np.uint8) for i in range(c.shape[axis])}
    kept = {cid: dict.fromkeys(labels[cid], True) for cid in cases}
    return cases, labels, kept


def _round_trip(reader, sources: list[Path], splits: dict, out: Path, k: int) -> tuple[dict, object]:
    """Write the dataset, read it back with its ``data:`` block: same images and geometry, real
    labels for the labelled / dev cases, the stacked pseudo-labels on the files' grids for the
    mined ones; the sources are only read."""
    before = [_hashes(s) for s in sources]
    cases, labels, kept = _mined(reader, splits["unlabelled"], k)
    rec = write_pseudo_dataset(out, reader, splits, cases, labels, kept, k)
    real, pseudo, dev = splits["labelled"], splits["unlabelled"], splits["validation"]
    assert (rec["real"], rec["pseudo"], rec["validation"]) == (real, pseudo, dev)
    bundle = prepare_data(DataConfig.model_validate(rec["data"]))
    assert (bundle.splits["labelled"], bundle.splits["validation"]) == (real + pseudo, dev)
    new = build_reader(rec["data"]["format"], rec["data"]["root"], **rec["data"]["options"])
    assert sorted(new.case_ids()) == sorted(real + pseudo + dev) and sorted(new.labelled_ids()) == sorted(new.case_ids())
    assert new.channel_names == reader.channel_names
    for cid in real + pseudo + dev:
        a, b = reader.load(cid), new.load(cid)
        np.testing.assert_array_equal(b.image, a.image)
        np.testing.assert_allclose(b.affine, a.affine, atol=1e-5)
        if cid in pseudo:
            stacked = np.stack([labels[cid][i] for i in range(cases[cid].shape[2])], axis=2)
            expected = label_to_original_grid(stacked, a.shape, k, a.affine)
            assert expected.shape == a.shape and set(np.unique(expected)) == set(range(k))  # not trivial
            np.testing.assert_array_equal(b.label, expected)
        else:
            np.testing.assert_array_equal(b.label, a.label)
    assert [_hashes(s) for s in sources] == before
    return rec, new


def test_folder_of_nifti_files(synth_root, tmp_path):
    """A plain folder (with given channel names and suffixes): a mined case whose label the mining
    split hides (syn_002) gets its pseudo-label, not the hidden one."""
    images, labs = tmp_path / "src" / "images", tmp_path / "src" / "labels"
    images.mkdir(parents=True), labs.mkdir()
    for f in [*(synth_root / "imagesTr").glob("*_0000.nii.gz"), *(synth_root / "imagesUnlabelled").glob("*.nii.gz")]:
        shutil.copy(f, images / f.name.replace("_0000", ""))
    for f in (synth_root / "labelsTr").glob("*.nii.gz"):
        shutil.copy(f, labs / f.name)
    reader = FolderReader(images, labs, suffixes=[".nii.gz"], channel_names=["CT"])
    splits = {"labelled": ["syn_000", "syn_001"], "validation": ["syn_004"], "unlabelled": ["syn_002", "syn_005"]}
    out = tmp_path / "run" / "dataset"
    rec, new = _round_trip(reader, [images.parent], splits, out, 3)
    assert rec["data"]["root"] == str(out / "images")
    assert rec["data"]["options"] == {"labels": str(out / "labels"), "suffixes": [".nii.gz"], "channel_names": ["CT"]}
    assert not np.array_equal(new.load("syn_002").label, reader.load("syn_002").label)
    assert (out / "images" / "syn_005.nii.gz").read_bytes() == (images / "syn_005.nii.gz").read_bytes()
    assert sorted(p.name for p in (out / "labels").iterdir()) == [f"syn_00{i}.nii.gz" for i in (0, 1, 2, 4, 5)]
    with pytest.raises(InputError, match="outside the source"):  # the labels folder is a source too
        write_pseudo_dataset(labs / "pseudo", reader, splits, {}, {}, {}, 3)


def test_folder_of_dicom_series(tmp_path):
    """DICOM series folders (labels as NIfTI on the series' grid): the series are copied file for
    file, the pseudo-label gets the series' affine."""
    rng = np.random.default_rng(3)
    images, labs = tmp_path / "src" / "images", tmp_path / "src" / "labels"
    for i, cid in enumerate(("ct_a", "ct_b", "ct_c")):
        lab = np.zeros((16, 12, 6), np.uint8)
        lab[4:12, 3:9, 1:5] = 1
        image = lab.astype(np.int16) * 300 + rng.integers(-50, 50, lab.shape)
        write_series(images / cid, image, uid=f"1.2.826.0.1.3680043.2.1125.{7 + i}")
        if cid != "ct_c":
            write_volume(labs / f"{cid}.nii.gz", lab, affine=read_channels(images / cid)[0].affine)
    reader = FolderReader(images, labs)
    splits = {"labelled": ["ct_a"], "validation": ["ct_b"], "unlabelled": ["ct_c"]}
    out = tmp_path / "dataset"
    rec, new = _round_trip(reader, [images.parent], splits, out, 2)
    assert new.channel_names == ["CT"]  # the Modality tag of the copied series
    assert _hashes(out / "images" / "ct_c") == _hashes(images / "ct_c")
    assert "channel_names" not in rec["data"]["options"]  # read from the copy, as from the source


@pytest.mark.parametrize("per_channel", [False, True])
def test_decathlon_task(tmp_path, per_channel):
    """A Decathlon task (4D images, or nnU-Net v1's per-channel files): a test image is mined."""
    root, _ = write_task(tmp_path / "Task99_Two", per_channel)
    reader = build_reader("msd", root)
    splits = {"labelled": ["syn_000"], "validation": ["syn_003"], "unlabelled": ["syn_001", "syn_004"]}
    out = tmp_path / "dataset"
    rec, new = _round_trip(reader, [root], splits, out, 2)
    meta = json.loads((out / "dataset.json").read_text())
    assert (meta["numTraining"], meta["numTest"], meta["test"]) == (4, 0, [])
    assert meta["training"][-2] == {"image": "./imagesTs/syn_004.nii.gz", "label": "./labelsTr/syn_004.nii.gz"}
    assert meta["modality"] == {"0": "T2", "1": "ADC"}


def test_decathlon_files_listed_outside_the_task(tmp_path):
    """An image listed through ``..`` (outside the task folder) is copied into ``imagesTr`` of the
    new dataset, never beside it (before: it was written through the same ``..``)."""
    root, _ = write_task(tmp_path / "Task99_Two")
    (tmp_path / "extra").mkdir()
    (root / "imagesTr" / "syn_001.nii.gz").rename(tmp_path / "extra" / "syn_001.nii.gz")
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"][1]["image"] = "../extra/syn_001.nii.gz"
    (root / "dataset.json").write_text(json.dumps(meta))
    splits = {"labelled": ["syn_000"], "validation": ["syn_003"], "unlabelled": ["syn_001"]}
    out = tmp_path / "run" / "dataset"
    _round_trip(build_reader("msd", root), [root, tmp_path / "extra"], splits, out, 2)
    assert (out / "imagesTr" / "syn_001.nii.gz").is_file() and not (out.parent / "extra").exists()
    assert json.loads((out / "dataset.json").read_text())["training"][1]["image"] == "./imagesTr/syn_001.nii.gz"


def test_nnunet_dataset_listing_its_files(synth_root, tmp_path):
    """An nnU-Net source whose dataset.json lists its files (``dataset``): the copy is written in the
    standard layout without that list, so the mined unlabelled cases are read too (before: the
    copied list named only the source's training cases)."""
    root = tmp_path / "Dataset004_Listed"
    shutil.copytree(synth_root, root)
    (root / "imagesTr").rename(root / "scans")
    meta = json.loads((root / "dataset.json").read_text())
    meta["dataset"] = {f"syn_00{i}": {"images": [f"scans/syn_00{i}_0000.nii.gz"], "label": f"labelsTr/syn_00{i}.nii.gz"}
                       for i in range(5)}
    (root / "dataset.json").write_text(json.dumps(meta))
    reader = NnUNetRawReader(root)
    splits = {"labelled": ["syn_000", "syn_001"], "validation": ["syn_004"], "unlabelled": ["syn_005", "syn_006"]}
    _round_trip(reader, [root], splits, tmp_path / "dataset", 3)
    assert "dataset" not in json.loads((tmp_path / "dataset" / "dataset.json").read_text())


def test_inclusion_rule_and_errors(synth_root, tmp_path):
    """nnU-Net raw source (3 classes), slicing axis 0, preprocessed at half resolution: a mined case
    is included when its kept fraction reaches the threshold; rejected and test cases stay out."""
    before = _hashes(synth_root)
    reader = NnUNetRawReader(synth_root)
    splits = {"labelled": ["syn_000", "syn_001"], "validation": ["syn_004"],
              "unlabelled": ["syn_005", "syn_006", "syn_007"], "test": []}
    cases, labels, _ = _mined(reader, splits["unlabelled"], 3, axis=0)
    n = cases["syn_005"].shape[0]  # slices along X
    kept = {"syn_005": {i: True for i in range(n)},
            "syn_006": {i: i < n // 2 for i in range(n)},    # half of the slices kept
            "syn_007": {i: False for i in range(n)}}
    out = tmp_path / "run" / "dataset"
    rec = write_pseudo_dataset(out, reader, splits, cases, labels, kept, 3, axis=0, min_kept_fraction=0.5)
    assert rec["pseudo"] == ["syn_005", "syn_006"] and rec["rejected"] == ["syn_007"]
    assert rec["kept_fraction"] == {"syn_005": 1.0, "syn_006": 0.5, "syn_007": 0.0}
    new = NnUNetRawReader(out)  # a valid nnU-Net raw folder: labels on the image grids (affine checked)
    assert new.case_ids() == ["syn_000", "syn_001", "syn_004", "syn_005", "syn_006"]
    assert new.labelled_ids() == new.case_ids() and new.test_case_ids() == []
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 5
    assert (out / "dev.list").read_text().split() == ["syn_004"]
    assert (out / "pseudo.list").read_text().split() == rec["pseudo"]
    for cid in new.case_ids():
        img = f"{cid}_0000.nii.gz"
        src = next(synth_root / d / img for d in ("imagesTr", "imagesUnlabelled") if (synth_root / d / img).is_file())
        assert (out / "imagesTr" / img).read_bytes() == src.read_bytes()
        case = new.load(cid)
        if cid in rec["pseudo"]:
            stacked = np.stack([labels[cid][i] for i in range(n)], axis=0)  # slices along X
            np.testing.assert_array_equal(case.label, label_to_original_grid(stacked, case.shape, 3))
            assert case.shape == reader.load(cid).shape == (24, 24, 16)
        else:
            assert (out / f"labelsTr/{cid}.nii.gz").read_bytes() == (synth_root / f"labelsTr/{cid}.nii.gz").read_bytes()
    # written again with a stricter threshold: the folder is replaced, syn_006 is gone
    rec = write_pseudo_dataset(out, reader, splits, cases, labels, kept, 3, axis=0, min_kept_fraction=1.0)
    assert rec["pseudo"] == ["syn_005"] and not (out / "labelsTr" / "syn_006.nii.gz").exists()
    assert not any(p.name.startswith(".") for p in out.parent.iterdir())  # no temp folder left
    assert _hashes(synth_root) == before

    with pytest.raises(InputError, match="outside the source"):
        write_pseudo_dataset(synth_root / "pseudo", reader, splits, cases, labels, kept, 3, axis=0)

    class Listed(IndexedReader):
        """A reader of a format with no pseudo-label layout."""

    with pytest.raises(InputError, match="formats uamt_h5, nnunet, msd, folder, not Listed"):
        write_pseudo_dataset(tmp_path / "x", Listed.__new__(Listed), splits, {}, {}, {}, 3)
    assert not (tmp_path / "x").exists() and _hashes(synth_root) == before


def test_slices_not_kept_as_the_nnunet_ignore_label(synth_root, tmp_path):
    """``not_kept="ignore"``: an included case's slices the selection did not keep carry nnU-Net's
    ignore label (value K = 3, added to dataset.json), read back as IGNORE_INDEX; kept slices keep
    their refined mask; a case with every slice kept has no ignored voxel."""
    reader = NnUNetRawReader(synth_root)
    splits = {"labelled": ["syn_000"], "validation": [], "unlabelled": ["syn_005", "syn_006"]}
    cases, labels, _ = _mined(reader, splits["unlabelled"], 3, axis=0)
    n = cases["syn_005"].shape[0]
    kept = {"syn_005": dict.fromkeys(range(n), True), "syn_006": {i: i < n // 2 for i in range(n)}}
    out = tmp_path / "dataset"
    rec = write_pseudo_dataset(out, reader, splits, cases, labels, kept, 3, axis=0, min_kept_fraction=0.5,
                               not_kept="ignore")
    assert rec["pseudo"] == ["syn_005", "syn_006"] and rec["not_kept"] == "ignore"
    assert json.loads((out / "dataset.json").read_text())["labels"]["ignore"] == 3
    new = NnUNetRawReader(out)
    assert new.ignore_value == 3 and new.num_classes == 3
    stacked = np.stack([labels["syn_006"][i] for i in range(n)], axis=0)
    stacked[n // 2:] = 3
    expected = label_to_original_grid(stacked, (24, 24, 16), 4)
    label = new.load("syn_006").label
    np.testing.assert_array_equal(label, np.where(expected == 3, IGNORE_INDEX, expected))
    assert (label[12:] == IGNORE_INDEX).all() and not (label[:11] == IGNORE_INDEX).any()
    assert not (new.load("syn_005").label == IGNORE_INDEX).any()
    assert (out / "labelsTr/syn_000.nii.gz").read_bytes() == (synth_root / "labelsTr/syn_000.nii.gz").read_bytes()
    msd = build_reader("msd", write_task(tmp_path / "Task99_Two")[0])
    with pytest.raises(InputError, match="'ignore' needs an nnunet or folder source .* not msd"):
        write_pseudo_dataset(tmp_path / "f", msd, {"labelled": ["syn_000"]}, {}, {}, {}, 2, not_kept="ignore")
    with pytest.raises(InputError, match="unknown 'zero'; choose refined or ignore"):
        write_pseudo_dataset(tmp_path / "f", reader, splits, cases, labels, kept, 3, not_kept="zero")
    assert not (tmp_path / "f").exists()


@pytest.mark.parametrize("source_ignore", [None, 255])
def test_slices_not_kept_ignored_in_a_plain_folder(synth_root, tmp_path, source_ignore):
    """A plain folder source with ``not_kept="ignore"``: the slices not kept are written with the
    source's ``ignore_value`` (255: the value its own labels use), else K = 3, which the copy's
    ``data.options`` name, so the copy reads them as IGNORE_INDEX and the kept slices as refined
    (before: refused, "needs an nnunet source")."""
    images, labs = tmp_path / "src" / "images", tmp_path / "src" / "labels"
    images.mkdir(parents=True), labs.mkdir()
    for f in [*(synth_root / "imagesTr").glob("*_0000.nii.gz"), *(synth_root / "imagesUnlabelled").glob("*.nii.gz")]:
        shutil.copy(f, images / f.name.replace("_0000", ""))
    shutil.copy(synth_root / "labelsTr" / "syn_000.nii.gz", labs)
    reader = FolderReader(images, labs, suffixes=[".nii.gz"], ignore_value=source_ignore)
    splits = {"labelled": ["syn_000"], "validation": [], "unlabelled": ["syn_005"]}
    cases, labels, _ = _mined(reader, splits["unlabelled"], 3, axis=0)
    n = cases["syn_005"].shape[0]
    kept = {"syn_005": {i: i < n // 2 for i in range(n)}}
    rec = write_pseudo_dataset(tmp_path / "out", reader, splits, cases, labels, kept, 3, axis=0,
                               min_kept_fraction=0.5, not_kept="ignore")
    value = source_ignore or 3
    assert rec["data"]["options"]["ignore_value"] == value
    stored = np.asarray(read_channels(tmp_path / "out" / "labels" / "syn_005.nii.gz")[0].array)
    assert set(np.unique(stored)) <= {0, 1, 2, value} and (stored[12:] == value).all()
    new = build_reader(rec["data"]["format"], rec["data"]["root"], **rec["data"]["options"])
    stacked = np.stack([labels["syn_005"][i] for i in range(n)], axis=0)
    stacked[n // 2:] = 3
    expected = label_to_original_grid(stacked, (24, 24, 16), 4)
    np.testing.assert_array_equal(new.load("syn_005").label, np.where(expected == 3, IGNORE_INDEX, expected))
    assert np.array_equal(new.load("syn_000").label, reader.load("syn_000").label)


def test_dataset_3d_config(tmp_path):
    base = {"name": "x", "output_dir": str(tmp_path), "rounds": 1}
    data = {"format": "folder", "root": str(tmp_path)}
    assert load_mining_config(tree={**base, "data": data}).dataset_3d.enabled is False
    assert load_mining_config(tree={**base, "data": data, "dataset_3d": {"enabled": True}}).dataset_3d.enabled
    with pytest.raises(InputError, match="dataset_3d needs 3D volumes"):
        load_mining_config(tree={**base, "images": {"root": str(tmp_path)}, "dataset_3d": {"enabled": True}})
    with pytest.raises(InputError, match="rounds >= 1"):
        load_mining_config(tree={**base, "rounds": 0, "data": {**data, "format": "uamt_h5"},
                                 "dataset_3d": {"enabled": True}})
    with pytest.raises(InputError, match="'ignore' needs an nnunet or folder source"):
        load_mining_config(tree={**base, "data": {**data, "format": "uamt_h5"},
                                 "dataset_3d": {"enabled": True, "not_kept": "ignore"}})
    assert load_mining_config(tree={**base, "data": data,
                                    "dataset_3d": {"enabled": True, "not_kept": "ignore"}}).dataset_3d.not_kept == "ignore"
    assert load_mining_config(tree={**base, "data": {**data, "format": "nnunet"},
                                    "dataset_3d": {"enabled": True, "not_kept": "ignore"}}).dataset_3d.not_kept == "ignore"
    with pytest.raises(InputError, match="min_kept_fraction"):
        load_mining_config(tree={**base, "data": {**data, "format": "uamt_h5"},
                                 "dataset_3d": {"enabled": True, "min_kept_fraction": 1.5}})
