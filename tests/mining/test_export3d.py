"""The 3D route end to end: mining writes its slice pseudo-labels as a 3D training dataset (real +
pseudo labels) in the source's layout, then a normal 3D training on it (the layouts of every format:
``test_dataset3d.py``)."""
from __future__ import annotations

import hashlib
import shutil
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from semi3d.data.volumes import read_volume
from semi3d.data.synthetic import write_dataset
from semi3d.mining.loop import run_mining

H5 = "2018LA_Seg_Training Set"


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _h5(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in f}


def _upsample(label: np.ndarray, shape, k: int) -> np.ndarray:
    """Independent reference: one-hot, trilinear (align_corners=False) to ``shape``, argmax."""
    onehot = np.stack([(label == c) for c in range(k)]).astype(np.float32)
    up = F.interpolate(torch.from_numpy(onehot)[None], size=tuple(shape), mode="trilinear", align_corners=False)
    return up[0].argmax(0).numpy()


@pytest.fixture(scope="module")
def la_like(tmp_path_factory):
    """UA-MT h5 layout, every case labelled (the mining splits hide the unlabelled ones' labels)."""
    root = tmp_path_factory.mktemp("la3d") / "LA"
    return write_dataset(root, n_labelled=6, n_unlabelled=0, seed=1, shape=(24, 24, 8), num_classes=2,
                         format="uamt_h5", noise=0.2)


def test_mining_writes_a_3d_dataset_that_trains(la_like, tmp_path):
    before = _hashes(la_like)
    tree = {"name": "m3d", "output_dir": str(tmp_path / "runs"), "device": "cpu",
            "data": {"format": "uamt_h5", "root": str(la_like), "options": {"list_file": str(la_like / "train.list")},
                     "num_classes": 2, "splits": {"labelled": {"first": 2}, "validation": {"last": 2}},
                     "preprocess": {"scale": [1.0, 1.0, 0.5]}},  # mined on 24x24x4, written back on 24x24x8
            "model": {"name": "unetpp2d", "options": {"widths": [4, 8]}},
            "train": {"iterations": 25, "finetune_iterations": 2, "batch_size": 4, "patch": [24, 24], "lr": 0.01},
            "rounds": 1,
            "select": {"unit": "case", "min_score": 0.0, "min_agreement": 0.0, "keep_empty": True,
                       "empty_max_prob": 1.0},
            "dataset_3d": {"enabled": True, "min_kept_fraction": 1.0}}
    summary = run_mining(tree)
    run = Path(summary["run_dir"])
    ds = run / "pseudo" / "round1" / "dataset"
    assert summary["rounds"][1]["dataset_3d"] == {"path": str(ds.resolve()), "n_real": 2, "n_pseudo": 2,
                                                  "n_rejected": 0, "n_validation": 2}
    rec = json.loads((ds / "pseudo_cases.json").read_text())
    real, pseudo, dev = ["syn_000", "syn_001"], ["syn_002", "syn_003"], ["syn_004", "syn_005"]
    assert (rec["real"], rec["pseudo"], rec["validation"], rec["rejected"]) == (real, pseudo, dev, [])
    assert rec["round"] == 1 and rec["kept_fraction"] == {"syn_002": 1.0, "syn_003": 1.0}
    lists = {p: (ds / p).read_text().split() for p in
             ("train.list", "labelled_real.list", "pseudo.list", "labelled.list", "dev.list")}
    assert lists == {"train.list": real + pseudo + dev, "labelled_real.list": real, "pseudo.list": pseudo,
                     "labelled.list": real + pseudo, "dev.list": dev}
    assert sorted(p.name for p in (ds / H5).iterdir()) == sorted(real + pseudo + dev)

    for cid in real + pseudo + dev:
        src, new = _h5(la_like / H5 / cid / "mri_norm2.h5"), _h5(ds / H5 / cid / "mri_norm2.h5")
        assert set(new) == {"image", "label"}
        assert new["image"].dtype == src["image"].dtype and np.array_equal(new["image"], src["image"])
        if cid in pseudo:  # mined on the preprocessed grid, resampled back to the original one
            mined = read_volume(run / "pseudo" / "round1" / "labels" / f"{cid}.nii.gz").array
            assert mined.shape == (24, 24, 4) and new["label"].shape == src["image"].shape == (24, 24, 8)
            np.testing.assert_array_equal(new["label"], _upsample(mined, (24, 24, 8), 2))
            assert 0 < new["label"].sum() < new["label"].size  # a real mask, not a trivial volume
        else:  # real labels: the source file, byte for byte
            assert (ds / H5 / cid / "mri_norm2.h5").read_bytes() == (la_like / H5 / cid / "mri_norm2.h5").read_bytes()
            np.testing.assert_array_equal(new["label"], src["label"])
    assert _hashes(la_like) == before  # the source is only read

    # a normal 3D training (any method; here supervised) on real + pseudo labels, validated on the dev cases
    from semi3d.config import DataConfig, load_config
    from semi3d.data.dataset import prepare_data
    from semi3d.engine.trainer import train

    run3d = {"name": "sup3d", "output_dir": str(tmp_path / "runs"), "seed": 0, "device": "cpu", "precision": "fp32",
             "data": {"format": "uamt_h5", "root": str(ds), "options": {"list_file": str(ds / "train.list")},
                      "num_classes": 2, "splits": {"labelled": {"ids": real + pseudo}, "validation": {"ids": dev},
                                                   "unlabelled": "none"},
                      "patch_size": [16, 16, 16], "fg_oversample": 0.5},
             "model": {"net3d": {"name": "unet3d", "options": {"levels": 3, "base": 4}}},
             "method": {"name": "supervised"},
             "train": {"iterations": 4, "batch_size": 2, "optimizer": {"lr": 0.01}, "val_every": 2,
                       "log_every": 1, "checkpoint_every": 4, "progress_bar": False}}
    out = train(load_config(tree=run3d))
    assert out["iterations"] == 4 and 0.0 <= out["best_val_dice"] <= 1.0
    splits = json.loads((tmp_path / "runs" / "sup3d" / "splits.json").read_text())
    assert splits["labelled"] == real + pseudo and splits["validation"] == dev and splits["unlabelled"] == []
    assert (tmp_path / "runs" / "sup3d" / "checkpoints" / "model_final.pt").is_file()
    # the data block written beside the dataset reads the same splits
    hint = prepare_data(DataConfig.model_validate(rec["data"]))
    assert {k: hint.splits[k] for k in ("labelled", "validation")} == {"labelled": real + pseudo, "validation": dev}
    assert _hashes(la_like) == before


def _store_as(path: Path, axcodes: str) -> None:
    """Rewrite a NIfTI file in another voxel order (the same world position for every voxel)."""
    import nibabel as nib
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    img = nib.load(path)
    img = nib.Nifti1Image(np.asarray(img.dataobj), img.affine)
    nib.save(img.as_reoriented(ornt_transform(io_orientation(img.affine), axcodes2ornt(tuple(axcodes)))), path)


def test_mining_cases_stored_in_other_orientations(synth_root, tmp_path):
    """``data.preprocess.orientation: RAS`` on cases stored LPS / PIL / ASL mines what the all-RAS
    dataset mines (the same rounds, dev Dice on the files' own grids), and the 3D dataset's
    pseudo-labels are written on each file's own grid: reoriented to RAS they equal the RAS run's."""
    import nibabel as nib

    root = tmp_path / "Dataset003_Mixed"
    shutil.copytree(synth_root, root)
    stored = {"syn_000": "LPS", "syn_002": "PIL", "syn_003": "LPS", "syn_004": "ASL"}
    for cid, codes in stored.items():
        _store_as(root / "imagesTr" / f"{cid}_0000.nii.gz", codes)
        _store_as(root / "labelsTr" / f"{cid}.nii.gz", codes)

    def mine(src: Path, name: str) -> dict:
        return run_mining({
            "name": name, "output_dir": str(tmp_path / "runs"), "device": "cpu", "axis": 2,
            "data": {"format": "nnunet", "root": str(src), "preprocess": {"orientation": "RAS"},
                     "splits": {"labelled": {"first": 2}, "validation": {"ids": ["syn_004"]},
                                "unlabelled": {"ids": ["syn_002", "syn_003"]}}},
            "model": {"name": "unetpp2d", "options": {"widths": [4, 8]}},
            "train": {"iterations": 25, "finetune_iterations": 5, "batch_size": 4, "patch": [24, 24]},
            "rounds": 1, "save_pseudo": "none", "dataset_3d": {"enabled": True, "min_kept_fraction": 0.0}})

    mixed, plain = mine(root, "mixed"), mine(synth_root, "plain")
    for key in ("dev_dice", "n_kept", "pseudo_dice_all", "model_dice_all"):
        assert [r.get(key) for r in mixed["rounds"]] == [r.get(key) for r in plain["rounds"]], key
    out_m, out_p = (Path(s["run_dir"]) / "pseudo" / "round1" / "dataset" for s in (mixed, plain))
    assert json.loads((out_m / "pseudo_cases.json").read_text())["pseudo"] == ["syn_002", "syn_003"]
    for cid in ("syn_002", "syn_003"):
        lab, img = nib.load(out_m / "labelsTr" / f"{cid}.nii.gz"), nib.load(out_m / "imagesTr" / f"{cid}_0000.nii.gz")
        assert "".join(nib.aff2axcodes(lab.affine)) == stored[cid]  # the file's own voxel order ...
        assert lab.shape == img.shape and np.allclose(lab.affine, img.affine)
        ras = np.asarray(nib.as_closest_canonical(lab).dataobj)  # ... holding the RAS run's label
        np.testing.assert_array_equal(ras, np.asarray(nib.load(out_p / "labelsTr" / f"{cid}.nii.gz").dataobj))
    assert np.asarray(nib.load(out_p / "labelsTr" / "syn_002.nii.gz").dataobj).any()  # not a trivial label


def test_slice_selection_with_the_ignore_label(synth_root, tmp_path):
    """``select.unit: slice`` with ``dataset_3d.not_kept: ignore``: in the written nnU-Net dataset a
    mined case's slices are ignored exactly where the round's ``kept`` vector says not kept (the
    grid is the files' own: no resampling), and the kept ones hold the round's stacked label."""
    from semi3d.data.nnunet import NnUNetRawReader
    from semi3d.losses import IGNORE_INDEX

    summary = run_mining({
        "name": "ign", "output_dir": str(tmp_path / "runs"), "device": "cpu", "axis": 2,
        "data": {"format": "nnunet", "root": str(synth_root),
                 "splits": {"labelled": {"first": 2}, "validation": {"ids": ["syn_004"]},
                            "unlabelled": {"ids": ["syn_005", "syn_006"]}}},
        "model": {"name": "unetpp2d", "options": {"widths": [4, 8]}},
        "train": {"iterations": 25, "finetune_iterations": 5, "batch_size": 4, "patch": [24, 24]},
        "select": {"unit": "slice", "min_score": 0.0, "min_agreement": 0.0, "keep_empty": False},
        "rounds": 1, "dataset_3d": {"enabled": True, "min_kept_fraction": 0.0, "not_kept": "ignore"}})
    round1 = Path(summary["run_dir"]) / "pseudo" / "round1"
    new = NnUNetRawReader(round1 / "dataset")
    assert new.ignore_value == 3
    flags = {cid: np.load(round1 / "kept" / f"{cid}.npy").astype(bool) for cid in ("syn_005", "syn_006")}
    assert any(f.any() for f in flags.values()) and not all(f.all() for f in flags.values())  # not trivial
    for cid, kept in flags.items():
        label = new.load(cid).label
        stacked = np.asarray(read_volume(round1 / "labels" / f"{cid}.nii.gz").array)
        assert label.shape == stacked.shape
        np.testing.assert_array_equal((label == IGNORE_INDEX).all(axis=(0, 1)), ~kept)
        np.testing.assert_array_equal(label[..., kept], stacked[..., kept])
