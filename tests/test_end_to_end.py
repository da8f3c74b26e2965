"""A nnU-Net / MONAI user's whole path on a valid nnU-Net v2 dataset with a separate unlabelled
folder: plan -> train (M&N, tiny) -> predict -> evaluate -> export -> `python -m monai.bundle run`,
whose masks must equal `semi3d predict`'s."""
from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from semi3d.cli import app
from semi3d.data.synthetic import write_dataset

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()


def _ok(args):
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_plan_train_predict_evaluate_export_monai_bundle_run(tmp_path):
    root = write_dataset(tmp_path / "Dataset001_Syn", n_labelled=4, n_unlabelled=3, n_test=2,
                         shape=(36, 32, 12), spacing=(1.0, 1.0, 2.5), num_classes=2)
    assert (root / "imagesUnlabelled").is_dir() and json.loads((root / "dataset.json").read_text())["numTraining"] == 4
    _ok(["plan", root, "-o", tmp_path / "plan.yaml", "--method", "mn"])
    tree = yaml.safe_load((tmp_path / "plan.yaml").read_text())
    assert tree["method"]["name"] == "mn" and tree["data"]["preprocess"]["target_spacing"] == [1.0, 1.0, 2.5]
    tiny = ["data.patch_size=[16,16,8]", "model.net3d.options={levels: 3, base: 4, strides: [[2,2,1],[2,2,2]]}",
            "train.iterations=6", "train.batch_size=2", "train.schedule.cycles=[2]", "train.schedule.warmup=0",
            "train.val_every=6", "train.checkpoint_every=6", "train.progress_bar=false", "precision=fp32",
            "method.options.warmup_iterations=2", "method.options.epoch_length=1", "method.options.guide_every=2",
            f"output_dir={tmp_path / 'runs'}", "name=e2e"]
    _ok(["train", tmp_path / "plan.yaml", *sum((["--set", s] for s in tiny), [])])
    run = tmp_path / "runs" / "e2e"
    splits = json.loads((run / "splits.json").read_text())
    assert len(splits["unlabelled"]) == 3 and len(splits["labelled"]) == 3 and len(splits["validation"]) == 1

    tests = sorted((root / "imagesTs").glob("*_0000.nii.gz"))
    _ok(["predict", run, *tests, "-o", tmp_path / "pred", "--precision", "fp32"])
    assert len(splits["test"]) == 2  # imagesTs, sealed
    _ok(["evaluate", run, "--split", "test"])
    assert len(json.loads((run / "eval_test" / "metrics.json").read_text())["per_case"]) == 2
    _ok(["export", run, "--out", tmp_path / "bundle"])

    (tmp_path / "images").mkdir()
    for f in tests:
        (tmp_path / "images" / f.name).symlink_to(f)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", tmp_path / "bundle/configs/inference.json",
           "--bundle_root", tmp_path / "bundle", "--dataset_dir", tmp_path / "images", "--output_dir", tmp_path / "monai"]
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    for f in tests:
        case = f.name.replace("_0000.nii.gz", "")
        ours, theirs = nib.load(tmp_path / "pred" / f"{case}.nii.gz"), nib.load(tmp_path / "monai" / f"{case}.nii.gz")
        assert theirs.shape == ours.shape == nib.load(f).shape and np.allclose(theirs.affine, nib.load(f).affine)
        assert np.array_equal(np.asarray(theirs.dataobj), np.asarray(ours.dataobj)), case
