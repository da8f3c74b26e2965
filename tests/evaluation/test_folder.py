"""Scoring a folder of predictions against a folder of references (``semi3d evaluate-folder``)."""
import json

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from semi3d.cli import app
from semi3d.data.volumes import write_h5, write_volume
from semi3d.errors import InputError
from semi3d.evaluation.folder import evaluate_folder

SPACING = (1.0, 1.0, 2.0)


def _cube(lo, hi, value=1, shape=(12, 12, 8)):
    a = np.zeros(shape, np.uint8)
    a[lo:hi, lo:hi, lo:hi] = value
    return a


@pytest.fixture
def folders(tmp_path):
    """nnU-Net layout: Dataset/labelsTs (references, with the ignore label 2) and a predictions folder."""
    ds = tmp_path / "Dataset001_X"
    (ds / "labelsTs").mkdir(parents=True)
    (ds / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "organ": 1, "ignore": 2},
                                                 "channel_names": {"0": "CT"}, "file_ending": ".nii.gz"}))
    ref_a = _cube(2, 6)                       # 64 voxels
    ref_b = _cube(2, 6)
    ref_b[8:10, 8:10, 0:2] = 2                # ignored voxels: whatever is predicted there counts for nothing
    write_volume(ds / "labelsTs" / "a.nii.gz", ref_a, spacing=SPACING)
    write_volume(ds / "labelsTs" / "b.nii.gz", ref_b, spacing=SPACING)
    pred = tmp_path / "pred"
    pred_a = _cube(2, 6)
    pred_a[2:6, 2:6, 2:4] = 0                 # half of it: Dice 2*32 / (32 + 64)
    pred_b = _cube(2, 6)
    pred_b[8:10, 8:10, 0:2] = 1               # only on ignored voxels: Dice stays 1
    write_volume(pred / "a.nii.gz", pred_a, spacing=SPACING)
    write_volume(pred / "b.nii.gz", pred_b, spacing=SPACING)
    write_volume(pred / "a_prob.nii.gz", np.zeros((2, 12, 12, 8), np.float32), spacing=SPACING)  # predict --probabilities
    return pred, ds / "labelsTs"


def test_known_dice_with_the_ignore_label_of_the_dataset_json_beside(folders):
    pred, ref = folders
    summary = evaluate_folder(pred, ref)
    m = json.loads((pred / "metrics.json").read_text())
    assert m["per_case"]["a"]["organ"]["dice"] == pytest.approx(64 / 96)
    assert m["per_case"]["b"]["organ"]["dice"] == pytest.approx(1.0)
    assert summary["organ"]["dice"] == pytest.approx((64 / 96 + 1) / 2)
    assert m["classes"] == ["organ"] and m["n_cases"] == 2 and m["dataset_json"].endswith("dataset.json")
    assert (pred / "metrics.csv").read_text().count("\n") == 1 + 2


def test_an_ignore_value_without_a_dataset_json(folders, tmp_path):
    """Plain references (no dataset.json) marking unannotated voxels 255: ``--ignore-value 255``
    scores them as the dataset.json's ignore label (before: 255 was an error or a class)."""
    pred, ref = folders
    plain = tmp_path / "plain"
    plain.mkdir()
    for f in ref.iterdir():
        a = np.asarray(nib.load(f).dataobj)
        write_volume(plain / f.name, np.where(a == 2, 255, a).astype(np.uint8), spacing=SPACING)
    with pytest.raises(InputError, match="label values 255 are not in 0..1"):
        evaluate_folder(pred, plain, num_classes=2)
    r = CliRunner().invoke(app, ["evaluate-folder", str(pred), str(plain), "--num-classes", "2",
                                 "--ignore-value", "255", "-o", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert m["per_case"]["a"]["class1"]["dice"] == pytest.approx(64 / 96) and m["per_case"]["b"]["class1"]["dice"] == 1.0
    with pytest.raises(InputError, match="--ignore-value: 1 is a class value"):
        evaluate_folder(pred, plain, num_classes=2, ignore_value=1)
    with pytest.raises(InputError, match="names the ignore label; give --num-classes"):
        evaluate_folder(pred, ref, ignore_value=255)


def test_the_cli_prints_the_table(folders, tmp_path):
    """In full where the output is no terminal (CliRunner's, like a log file's): rich took it as 80
    columns and cut a class name to 'left_atr…' and the NSD column off."""
    pred, ref = folders
    meta = ref.parent / "dataset.json"
    meta.write_text(meta.read_text().replace('"organ"', '"left_atrium_appendage"'))
    r = CliRunner().invoke(app, ["evaluate-folder", str(pred), str(ref), "-o", str(tmp_path / "m"),
                                 "--nsd-tolerance", "1"])
    assert r.exit_code == 0, r.output
    assert "left_atrium_appendage" in r.output and (tmp_path / "m" / "metrics.json").is_file()
    assert "NSD %" in r.output and "HD95 (mm)" in r.output and "…" not in r.output


def _nothing_written(pred):
    return not (pred / "metrics.json").exists()


def test_a_missing_prediction_is_named_and_nothing_is_written(folders):
    pred, ref = folders
    (pred / "b.nii.gz").unlink()
    with pytest.raises(InputError, match=r"pred: no prediction for 1 case\(s\): b \(--subset"):
        evaluate_folder(pred, ref)
    assert _nothing_written(pred)
    evaluate_folder(pred, ref, subset=True)  # the predicted cases only
    assert list(json.loads((pred / "metrics.json").read_text())["per_case"]) == ["a"]


def test_a_prediction_on_another_grid_is_named(folders):
    pred, ref = folders
    write_volume(pred / "b.nii.gz", np.zeros((12, 12, 6), np.uint8), spacing=SPACING)
    with pytest.raises(InputError, match=r"b.nii.gz: prediction shape \(12, 12, 6\) does not match the shape"):
        evaluate_folder(pred, ref)
    assert _nothing_written(pred)


def test_classes_without_a_dataset_json(folders):
    pred, ref = folders
    (ref.parent / "dataset.json").unlink()
    with pytest.raises(InputError, match="give --dataset-json or --num-classes"):
        evaluate_folder(pred, ref)
    with pytest.raises(InputError, match="label values 2 are not in 0..1"):  # the ignore label is a value now
        evaluate_folder(pred, ref, num_classes=2)
    assert _nothing_written(pred)
    summary = evaluate_folder(pred, ref, num_classes=3)  # value 2 is a class now: b's reference has it, no prediction
    assert list(summary) == ["class1", "class2", "mean"] or set(summary) >= {"class1", "class2"}
    assert json.loads((pred / "metrics.json").read_text())["per_case"]["b"]["class2"]["dice"] == 0.0


def test_h5_files_are_scored_by_their_label_dataset(tmp_path):
    """UA-MT style h5 references hold image and label; ``semi3d predict`` writes h5 labels as "label"."""
    ref, pred = _cube(2, 6), _cube(2, 6)
    pred[2:6, 2:6, 2:4] = 0
    write_h5(tmp_path / "ref" / "a.h5", {"image": np.random.rand(12, 12, 8).astype(np.float32), "label": ref})
    write_volume(tmp_path / "pred" / "a.h5", pred)
    no_spacing = evaluate_folder(tmp_path / "pred", tmp_path / "ref", num_classes=2)["class1"]
    assert no_spacing["dice"] == pytest.approx(64 / 96) and no_spacing["hd95_mm"] == no_spacing["hd95"] > 0
    r = CliRunner().invoke(app, ["evaluate-folder", str(tmp_path / "pred"), str(tmp_path / "ref"), "--num-classes", "2",
                                 "--spacing", "1", "1", "2"])
    assert r.exit_code == 0, r.output
    row = json.loads((tmp_path / "pred" / "metrics.json").read_text())["per_case"]["a"]["class1"]
    assert row["hd95_mm"] == pytest.approx(2 * row["hd95"])  # the prediction lacks the cube's top half along Z


def test_the_same_dice_as_nnunets_own_evaluation(folders, tmp_path):
    """A known answer from the tool users compare against: nnU-Net v2's compute_metrics_on_folder
    (its ignore label included) gives the same Dice and IoU per case."""
    nnunet = pytest.importorskip("nnunetv2.evaluation.evaluate_predictions")
    from nnunetv2.imageio.nibabel_reader_writer import NibabelIO

    pred, ref = folders
    (pred / "a_prob.nii.gz").unlink()  # nnU-Net would read it as a case
    theirs = nnunet.compute_metrics_on_folder(str(ref), str(pred), str(tmp_path / "summary.json"), NibabelIO(),
                                              ".nii.gz", [1], ignore_label=2, num_processes=1)
    evaluate_folder(pred, ref)
    ours = json.loads((pred / "metrics.json").read_text())["per_case"]
    for row in theirs["metric_per_case"]:
        case = row["prediction_file"].rsplit("/", 1)[1].removesuffix(".nii.gz")
        assert ours[case]["organ"]["dice"] == pytest.approx(row["metrics"][1]["Dice"])
        assert ours[case]["organ"]["jaccard"] == pytest.approx(row["metrics"][1]["IoU"])
    assert len(theirs["metric_per_case"]) == len(ours) == 2


def test_normalised_surface_dice_on_request(folders, tmp_path):
    """--nsd-tolerance adds ``nsd`` (at that many mm, the references' spacing) to every case, the
    CSV and the table; without it the metrics are as before."""
    from semi3d.evaluation.metrics import case_metrics

    pred, ref = folders
    r = CliRunner().invoke(app, ["evaluate-folder", str(pred), str(ref), "-o", str(tmp_path / "m"), "--nsd-tolerance", "2"])
    assert r.exit_code == 0, r.output
    assert "NSD %" in r.output
    m = json.loads((tmp_path / "m" / "metrics.json").read_text())
    want = case_metrics(_cube(2, 6) * (np.arange(8) >= 4), _cube(2, 6), 2, SPACING, nsd_tolerance=2.0)["class1"]["nsd"]
    assert m["per_case"]["a"]["organ"]["nsd"] == pytest.approx(want) and 0 < want < 1
    assert m["per_case"]["b"]["organ"]["nsd"] == 1.0 and m["nsd_tolerance_mm"] == 2.0
    assert (tmp_path / "m" / "metrics.csv").read_text().splitlines()[0].endswith(",asd_mm,nsd")
    r = CliRunner().invoke(app, ["evaluate-folder", str(pred), str(ref), "-o", str(tmp_path / "m2"),
                                 "--nsd-tolerance", "2", "--nsd-tolerance", "3"])  # two tolerances, one class
    assert r.exit_code == 2 and "one per foreground class (1)" in r.output and not (tmp_path / "m2").exists()
    evaluate_folder(pred, ref)
    assert "nsd" not in json.loads((pred / "metrics.json").read_text())["per_case"]["a"]["organ"]
