"""``data.preprocess.orientation``: cases stored in other voxel orders train and predict as the same
anatomy, and predictions come back in each file's own voxel order (semi3d predict and the MONAI bundle)."""
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import torch
import yaml
from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform
from typer.testing import CliRunner

from semi3d.cli import app
from semi3d.data.volumes import read_volume

runner = CliRunner()


def _store_as(path, axcodes):
    """Rewrite a NIfTI file in another voxel order (the same world position for every voxel)."""
    img = nib.load(path)
    img = nib.Nifti1Image(np.asarray(img.dataobj), img.affine)
    nib.save(img.as_reoriented(ornt_transform(io_orientation(img.affine), axcodes2ornt(tuple(axcodes)))), path)


def _train(cfg_tree, tmp_path, name, *sets):
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump(cfg_tree))
    r = runner.invoke(app, ["train", str(cfg), "--set", "train.iterations=2", "--set", f"name={name}", *sets])
    assert r.exit_code == 0, r.output
    return tmp_path / "runs" / name, r.output


def test_cases_in_other_orientations_train_and_predict_as_the_same_anatomy(synth_root, tiny_tree, tmp_path):
    root = tmp_path / "Dataset003_Mixed"
    shutil.copytree(synth_root, root)
    for case, codes in (("syn_000", "LPS"), ("syn_002", "PIL")):
        _store_as(root / "imagesTr" / f"{case}_0000.nii.gz", codes)
        _store_as(root / "labelsTr" / f"{case}.nii.gz", codes)
    test_ras = root / "imagesTs" / "syn_008_0000.nii.gz"
    test_lps = tmp_path / "lps" / "syn_008_0000.nii.gz"
    test_lps.parent.mkdir()
    shutil.copy(test_ras, test_lps)
    _store_as(test_lps, "LPS")
    assert "".join(nib.aff2axcodes(nib.load(test_lps).affine)) == "LPS"

    tiny_tree["data"]["root"] = str(root)
    mixed, out = _train(tiny_tree, tmp_path, "mixed", "--set", "data.preprocess.orientation=ras")
    assert "orientations" not in out
    tiny_tree["data"]["root"] = str(synth_root)
    plain, _ = _train(tiny_tree, tmp_path, "plain")
    # reoriented to RAS, the mixed dataset is the original one: the same training, the same model
    a, b = (torch.load(r / "checkpoints" / "model_final.pt", weights_only=False) for r in (mixed, plain))
    sa, sb = (m["state_dict"] for m in (a, b))
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert yaml.safe_load((mixed / "config.yaml").read_text())["data"]["preprocess"]["orientation"] == "RAS"

    # the LPS-stored test image is segmented as the RAS one, written in its own voxel order
    for image, out in ((test_ras, "o_ras"), (test_lps, "o_lps")):
        r = runner.invoke(app, ["predict", str(mixed), str(image), "-o", str(tmp_path / out), "--precision", "fp32"])
        assert r.exit_code == 0, r.output
    ras, lps = (read_volume(tmp_path / o / "syn_008.nii.gz") for o in ("o_ras", "o_lps"))
    assert np.allclose(lps.affine, nib.load(test_lps).affine)
    assert ras.array.any() and np.array_equal(lps.array, ras.array[::-1, ::-1, :])

    # so does the exported MONAI bundle
    assert runner.invoke(app, ["export", str(mixed), "-o", str(tmp_path / "bundle")]).exit_code == 0
    res = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                          str(tmp_path / "bundle/configs/inference.json"), "--bundle_root", str(tmp_path / "bundle"),
                          "--dataset_dir", str(test_lps.parent), "--output_dir", str(tmp_path / "monai")],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert np.array_equal(read_volume(tmp_path / "monai" / "syn_008.nii.gz").array, lps.array)


def test_without_an_orientation_the_files_voxel_order_is_kept(synth_root, tiny_tree, tmp_path):
    """The default (nnU-Net's): a case stored LPS is trained on as stored, so it is another training
    set, and training says so."""
    root = tmp_path / "Dataset003_Mixed"
    shutil.copytree(synth_root, root)
    _store_as(root / "imagesTr" / "syn_000_0000.nii.gz", "LPS")
    _store_as(root / "labelsTr" / "syn_000.nii.gz", "LPS")
    tiny_tree["data"]["root"] = str(root)
    mixed, out = _train(tiny_tree, tmp_path, "mixed")
    assert "warning: the cases are stored in 2 orientations (RAS 6, LPS 1 cases)" in out
    assert "set data.preprocess.orientation: RAS" in out
    tiny_tree["data"]["root"] = str(synth_root)
    plain, _ = _train(tiny_tree, tmp_path, "plain")
    sa, sb = (torch.load(r / "checkpoints" / "model_final.pt", weights_only=False)["state_dict"] for r in (mixed, plain))
    assert not all(torch.equal(sa[k], sb[k]) for k in sa)
