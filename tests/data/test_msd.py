"""The Medical Segmentation Decathlon reader (and nnU-Net v1's per-channel layout), planned and trained."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import yaml

from semi3d.config import load_config
from semi3d.data.formats import build_reader
from semi3d.errors import InputError
from semi3d.planning.plan import plan_dataset

from msd_task import write_task

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("per_channel", [False, True])
def test_a_decathlon_task_reads_its_listed_cases(tmp_path, per_channel):
    root, src = write_task(tmp_path / "Task99_Two", per_channel)
    r = build_reader("msd", root)
    assert r.case_ids() == ["syn_000", "syn_001", "syn_002", "syn_003", "syn_004"]
    assert r.labelled_ids() == r.case_ids()[:4] and r.unlabelled_ids() == ["syn_004"]  # the test image
    assert (r.channel_names, r.class_names, r.num_classes) == (["T2", "ADC"], ["background", "organ"], 2)
    case = r.load("syn_002")
    x = np.asarray(nib.load(src / "imagesTr" / "syn_002_0000.nii.gz").dataobj)
    np.testing.assert_allclose(case.image, np.stack([x, 2 * x + 1]), rtol=1e-6)
    np.testing.assert_array_equal(case.label, np.asarray(nib.load(src / "labelsTr" / "syn_002.nii.gz").dataobj))
    assert r.load("syn_004").label is None


def test_decathlon_errors_name_the_file(tmp_path):
    root, _ = write_task(tmp_path / "Task99_Two")
    meta = json.loads((root / "dataset.json").read_text())
    (root / "labelsTr" / "syn_001.nii.gz").unlink()
    with pytest.raises(InputError, match=r"labelsTr/syn_001.nii.gz: listed in dataset.json but missing"):
        build_reader("msd", root)
    (root / "dataset.json").write_text(json.dumps({**meta, "labels": {"1": "organ"}}))
    with pytest.raises(InputError, match="dataset.json: 'labels' must map"):
        build_reader("msd", root)
    (root / "dataset.json").write_text(json.dumps({**meta, "test": [{"image": "./imagesTs/syn_004.nii.gz"}]}))
    with pytest.raises(InputError, match="dataset.json: 'test' must be a list of image paths"):
        build_reader("msd", root)
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0}, "file_ending": ".nii.gz"}))
    with pytest.raises(InputError, match="dataset.json: missing key 'modality'"):
        build_reader("msd", root)
    (root / "dataset.json").write_text(json.dumps(meta))
    (root / "imagesTr" / "syn_000.nii.gz").unlink()
    with pytest.raises(InputError, match="syn_000.nii.gz: listed in dataset.json but missing .nor nnU-Net v1's syn_000_0000"):
        build_reader("msd", root)


def test_a_decathlon_task_is_planned_and_trains(tmp_path):
    root, _ = write_task(tmp_path / "Task99_Two")
    plan_dataset(root, tmp_path / "p.yaml", method="supervised")
    tree = yaml.safe_load((tmp_path / "p.yaml").read_text())
    assert tree["data"]["format"] == "msd"
    from semi3d.engine.trainer import train

    tree["output_dir"] = str(tmp_path / "runs")
    cfg = load_config(tree=tree, overrides=["train.iterations=2", "train.val_every=2", "train.batch_size=1",
                                            "model.net3d.options.base=4", "train.progress_bar=false"])
    assert train(cfg)["iterations"] == 2
    splits = json.loads((cfg.run_dir / "splits.json").read_text())
    assert "syn_004" in splits["unlabelled"]  # the Decathlon's test image, without label
