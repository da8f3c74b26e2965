"""Deciding the largest-component post-processing per class from a run's predictions (nnU-Net's
determine_postprocessing): known answers, and a trained run whose decision, applied, scores what
the decision said."""
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from semi3d.cli import app
from semi3d.config import load_config
from semi3d.engine.trainer import train
from semi3d.data.postprocess import keep_largest_component, keep_largest_foreground
from semi3d.evaluation.evaluate import evaluate_run
from semi3d.evaluation.postprocessing import choose_postprocessing, format_decision, postprocessing_dice
from semi3d.losses import IGNORE_INDEX

pytestmark = pytest.mark.usefixtures("one_thread")


def _maps():
    """Class 1: one true cube, predicted with a spurious 8-voxel blob; class 2: two true blobs,
    predicted exactly; class 3: one cube predicted exactly (one component: no change)."""
    ref = np.zeros((20, 20, 20), np.uint8)
    ref[2:6, 2:6, 2:6] = 1                      # 64 voxels
    ref[10:12, 2:4, 2:4] = 2                    # 8 voxels
    ref[15:18, 2:5, 2:5] = 2                    # 27 voxels, a second component
    ref[10:13, 12:15, 12:15] = 3
    pred = ref.copy()
    pred[16:18, 16:18, 16:18] = 1               # spurious, 8 voxels
    return pred, ref


def _kidney():
    """Class 1 (kidney) with two class-2 tumours touching it but not each other; the prediction
    adds a spurious 8-voxel class-2 blob far away."""
    ref = np.zeros((20, 20, 20), np.uint8)
    ref[2:8, 2:8, 2:8] = 1                      # 216 voxels
    ref[8:10, 2:5, 2:5] = 2                     # 18 voxels, touching the kidney
    ref[2:4, 8:10, 2:4] = 2                     # 8 voxels, touching the kidney
    pred = ref.copy()
    pred[15:17, 15:17, 15:17] = 2               # spurious
    return pred, ref


def test_known_answers():
    pred, ref = _maps()
    d = postprocessing_dice(pred, ref, 4)
    assert d["none"] == pytest.approx({1: 2 * 64 / (72 + 64), 2: 1.0, 3: 1.0})
    assert d["class"] == pytest.approx({1: 1.0, 2: 2 * 27 / (27 + 35), 3: 1.0})
    assert d["foreground"] == pytest.approx({1: 1.0, 2: 0.0, 3: 0.0})  # the organ cube is the largest region
    decision = choose_postprocessing({"a": d}, ["organ", "vessel", "node"])
    assert decision["foreground"]["keep"] is False and decision["foreground"]["worse"] == ["vessel", "node"]
    assert [c["keep"] for c in decision["classes"].values()] == [True, False, False]
    assert decision["inference"] == {"largest_foreground_component": False, "postprocess": "largest_component",
                                     "largest_component_classes": [1]}
    assert decision["set"] == ["inference.largest_foreground_component=false", "inference.postprocess=largest_component",
                               "inference.largest_component_classes=[1]"]
    # ignore-label voxels of the reference are left out: the spurious blob there costs nothing
    ref_ignored = ref.copy()
    ref_ignored[15:19, 15:19, 15:19] = IGNORE_INDEX
    assert postprocessing_dice(pred, ref_ignored, 4)["none"][1] == 1.0
    # ... but the components are the prediction's own: a larger predicted blob lying in the ignored
    # region is the one the post-processing keeps, so the true blob outside it goes
    ref_ignored[:] = 0
    ref_ignored[2:5, 2:5, 2:5] = 1
    ref_ignored[10:20, 10:20, 10:20] = IGNORE_INDEX
    pred = ref_ignored.copy()
    pred[10:20, 10:20, 10:20] = 0
    pred[12:16, 12:16, 12:16] = 1
    d = postprocessing_dice(pred, ref_ignored, 2)
    assert (d["none"][1], d["class"][1], d["foreground"][1]) == (1.0, 0.0, 0.0)


def test_all_foreground_as_one_region():
    """Step 1 removes the spurious tumour blob and keeps both true tumours (connected through the
    kidney); step 2 on top would drop the smaller true tumour, so it is left."""
    pred, ref = _kidney()
    d = postprocessing_dice(pred, ref, 3)
    assert d["none"] == pytest.approx({1: 1.0, 2: 52 / 60})
    assert d["class"] == pytest.approx({1: 1.0, 2: 36 / 44})
    assert d["foreground"] == pytest.approx({1: 1.0, 2: 1.0})
    assert d["foreground_class"] == pytest.approx({1: 1.0, 2: 36 / 44})
    decision = choose_postprocessing({"a": d}, ["kidney", "tumour"])
    assert decision["foreground"].pop("worse") == []
    assert decision["foreground"] == pytest.approx({"dice_none": (1 + 52 / 60) / 2, "dice_largest_component": 1.0,
                                                    "keep": True})
    assert decision["classes"]["tumour"] == pytest.approx({"class": 2, "dice_none": 52 / 60, "dice_before": 1.0,
                                                           "dice_largest_component": 36 / 44, "keep": False})
    assert decision["set"] == ["inference.largest_foreground_component=true", "inference.postprocess=none"]
    assert "all foreground classes as one region: mean Dice 93.33 -> 100.00 (+6.667: keep)" in format_decision(
        {**decision, "foreground": {**decision["foreground"], "worse": []}})


def test_the_mean_over_cases_decides():
    """One foreground class: no step 1 (the same maps as step 2). One case helped by 0.06, one hurt
    by 0.1 -> left; two classes, step 1 no change, every class kept by step 2 ->
    ``largest_component_classes=null``."""
    def case(none, largest):
        return {"none": none, "class": largest, "foreground": none, "foreground_class": largest}

    mixed = choose_postprocessing({"a": case({1: 0.9}, {1: 0.96}), "b": case({1: 0.8}, {1: 0.7})}, ["organ"])
    assert mixed["foreground"] is None
    assert mixed["classes"]["organ"] == pytest.approx({"class": 1, "dice_none": 0.85, "dice_before": 0.85,
                                                        "dice_largest_component": 0.83, "keep": False})
    assert mixed["set"] == ["inference.largest_foreground_component=false", "inference.postprocess=none"]
    every = choose_postprocessing({"a": case({1: 0.5, 2: 0.1}, {1: 0.6, 2: 0.2})}, ["x", "y"])
    assert not every["foreground"]["keep"] and every["set"] == [
        "inference.largest_foreground_component=false", "inference.postprocess=largest_component",
        "inference.largest_component_classes=null"]


def test_a_run_decides_and_the_decision_applied_scores_what_it_said(tiny_tree, monkeypatch):
    """A trained run whose argmax gets a spurious 2x2x2 'organ' blob in a corner (so that keeping
    the largest component matters): the decision is taken on the maps as predicted, and the
    settings it gives score, applied, the Dice it reported per class."""
    import semi3d.inference.predictor as predictor

    argmax = predictor.class_argmax

    def with_blob(probs, dim):
        label = argmax(probs, dim)
        label[:2, :2, :2] = 1
        return label

    monkeypatch.setattr(predictor, "class_argmax", with_blob)
    tree = {**tiny_tree, "name": "pp", "inference": {"overlap": 0.25, "postprocess": "largest_component"}}
    tree["data"] = {**tree["data"], "splits": {"labelled": {"first": 3}, "validation": {"last": 2}, "test": {}}}
    tree["train"] = {**tree["train"], "iterations": 40, "val_every": 40, "checkpoint_every": 40, "log_every": 10}
    cfg = load_config(tree=tree)
    train(cfg)
    r = CliRunner().invoke(app, ["evaluate", str(cfg.run_dir), "--determine-postprocessing"])
    assert r.exit_code == 0, r.output
    assert "apply with: --set inference.largest_foreground_component=" in r.output
    metrics = json.loads((cfg.run_dir / "eval_validation" / "metrics.json").read_text())
    decision = metrics["postprocessing"]
    assert metrics["postprocess"] == "none" and decision["n_cases"] == 2  # scored as predicted, not as configured
    for name, c in decision["classes"].items():
        assert c["dice_none"] == pytest.approx(metrics["mean"][name]["dice"])
    applied = evaluate_run(cfg.run_dir, overrides=decision["set"], out=cfg.run_dir / "applied")
    final = {name: c["dice_largest_component"] if c["keep"] else c["dice_before"] for name, c in decision["classes"].items()}
    for name, dice in final.items():
        assert applied[name]["dice"] == pytest.approx(dice)
    assert final["organ"] > decision["classes"]["organ"]["dice_none"]  # the blob went, by one step or the other


def test_evaluate_folder_decides_on_any_tools_predictions(tmp_path):
    """evaluate-folder scores the predictions as they are and decides from them: the known maps of
    ``_maps`` as one case, and a second case without the spurious blob."""
    from semi3d.data.volumes import write_volume

    pred, ref = _maps()
    for folder, maps in (("pred", (pred, ref)), ("ref", (ref, ref))):
        write_volume(tmp_path / folder / "a.nii.gz", maps[0])
        write_volume(tmp_path / folder / "b.nii.gz", maps[1])
    r = CliRunner().invoke(app, ["evaluate-folder", str(tmp_path / "pred"), str(tmp_path / "ref"), "--num-classes", "4",
                                 "--determine-postprocessing"])
    assert r.exit_code == 0, r.output
    assert "apply with: --set inference.largest_foreground_component=false --set inference.postprocess=largest_component " \
        "--set inference.largest_component_classes=[1]" \
        in r.output.replace("\n", " ")
    metrics = json.loads((tmp_path / "pred" / "metrics.json").read_text())
    expected = choose_postprocessing({"a": postprocessing_dice(pred, ref, 4),
                                      "b": postprocessing_dice(ref, ref, 4)}, ["class1", "class2", "class3"])
    assert metrics["postprocessing"] == json.loads(json.dumps(expected))
    assert metrics["postprocessing"]["classes"]["class1"]["dice_none"] == pytest.approx(metrics["mean"]["class1"]["dice"])


def test_postprocess_applies_a_decision_to_a_folder(tmp_path):
    """``semi3d postprocess`` with the decision of ``evaluate-folder --determine-postprocessing``:
    the files it writes score what the decision said, with the inputs' affines and names; ``--set``
    goes on top; the predictions are only read; bad input writes nothing."""
    import hashlib

    from semi3d.data.volumes import read_volume, write_volume

    pred, ref = _kidney()
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    for folder, maps in (("pred", (pred, ref)), ("ref", (ref, ref))):
        write_volume(tmp_path / folder / "a.nii.gz", maps[0], affine=affine)
        write_volume(tmp_path / folder / "b.nrrd", maps[1], affine=affine)
    runner = CliRunner()
    r = runner.invoke(app, ["evaluate-folder", str(tmp_path / "pred"), str(tmp_path / "ref"), "--num-classes", "3",
                            "--determine-postprocessing", "-o", str(tmp_path / "scores")])
    assert r.exit_code == 0, r.output
    decision = json.loads((tmp_path / "scores" / "metrics.json").read_text())["postprocessing"]
    assert decision["inference"]["largest_foreground_component"]
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "pred").iterdir()}
    r = runner.invoke(app, ["postprocess", str(tmp_path / "pred"), "-o", str(tmp_path / "pp"),
                            "--decision", str(tmp_path / "scores" / "metrics.json")])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "pp").iterdir()) == ["a.nii.gz", "b.nrrd"]
    assert np.allclose(read_volume(tmp_path / "pp" / "b.nrrd").affine, affine)
    r = runner.invoke(app, ["evaluate-folder", str(tmp_path / "pp"), str(tmp_path / "ref"), "--num-classes", "3"])
    assert r.exit_code == 0, r.output
    scored = json.loads((tmp_path / "pp" / "metrics.json").read_text())["mean"]
    for name, c in decision["classes"].items():
        assert scored[name]["dice"] == pytest.approx(c["dice_largest_component"] if c["keep"] else c["dice_before"])
    assert scored["class2"]["dice"] == 1.0  # the spurious blob went
    # --set on top of the decision: every class's own largest component too (the small tumour goes)
    r = runner.invoke(app, ["postprocess", str(tmp_path / "pred"), "-o", str(tmp_path / "pp2"), "--decision",
                            str(tmp_path / "scores" / "metrics.json"), "--set", "inference.postprocess=largest_component"])
    assert r.exit_code == 0, r.output
    out = np.asarray(read_volume(tmp_path / "pp2" / "a.nii.gz").array)
    np.testing.assert_array_equal(out, keep_largest_component(keep_largest_foreground(pred), 3))
    assert before == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "pred").iterdir()}

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.nii.gz").write_bytes((tmp_path / "pred" / "a.nii.gz").read_bytes())
    (tmp_path / "bad" / "c.nii.gz").write_bytes(b"garbage")
    for args, says in (([str(tmp_path / "bad"), "-o", str(tmp_path / "x"), "--set", "inference.postprocess=none"],
                        "c.nii.gz: cannot read"),
                       ([str(tmp_path / "pred"), "-o", str(tmp_path / "pred"), "--set", "inference.postprocess=none"],
                        "is the prediction folder"),
                       ([str(tmp_path / "pred"), "-o", str(tmp_path / "x")], "nothing to apply"),
                       ([str(tmp_path / "pred"), "-o", str(tmp_path / "x"), "--set", "inference.overlap=0.1"],
                        "postprocess sets inference.largest_foreground_component"),
                       ([str(tmp_path / "pred"), "-o", str(tmp_path / "x"), "--decision", str(tmp_path / "ref" / "a.nii.gz")],
                        "not a metrics.json with a post-processing decision")):
        r = runner.invoke(app, ["postprocess", *args])
        assert r.exit_code == 2 and says in r.output.replace("\n", " "), r.output
        assert not (tmp_path / "x").exists()
