"""Evaluating and predicting with several models at once (``--ensemble``): the mean of their class
probabilities, checked against the members' own probabilities; members that trained on an evaluated
case or predict other classes are refused before anything is written."""
import json
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from semi3d.cli import app
from semi3d.config import InferenceConfig, load_config
from semi3d.data.formats import build_reader
from semi3d.engine.trainer import train
from semi3d.errors import InputError
from semi3d.evaluation.evaluate import evaluate_run
from semi3d.evaluation.metrics import case_metrics
from semi3d.inference.predictor import MeanOfModels, Predictor, label_map, model_file

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(tree, name, **changes):
    tree = {**tree, "name": name, **changes}
    cfg = load_config(tree=tree)
    train(cfg)
    return cfg


def test_ensemble_evaluates_the_mean_probability_of_its_members(tiny_tree, synth_root, tmp_path):
    a, b = _run(tiny_tree, "a"), _run(tiny_tree, "b", seed=1)
    pa, pb = (Predictor(model_file(c.run_dir), "cpu") for c in (a, b))
    reader = build_reader(a.data.format, a.data.root, **a.data.options)
    cid = json.loads((a.run_dir / "splits.json").read_text())["validation"][0]
    case = reader.load(cid)
    mean = (pa(case) + pb(case)) / 2
    assert not torch.equal(pa(case), pb(case))  # two different models
    assert torch.allclose(MeanOfModels([pa, pb], [a.run_dir, b.run_dir])(case), mean)

    summary = evaluate_run(a.run_dir, "validation", ensemble=[b.run_dir])
    out = a.run_dir / "eval_validation_mean_of_2"  # the single model's eval_validation stays its own
    metrics = json.loads((out / "metrics.json").read_text())
    expected = case_metrics(label_map(mean, InferenceConfig(postprocess="none")), case.label, 3, case.spacing, pa.class_names[1:])
    assert metrics["per_case"][cid]["lesion"]["dice"] == pytest.approx(expected["lesion"]["dice"])
    assert len(metrics["ensemble"]) == 2 and summary["mean"]["dice"] == pytest.approx(
        np.mean([expected[k]["dice"] for k in expected]))
    single = evaluate_run(a.run_dir, "validation")
    assert single["mean"]["dice"] != summary["mean"]["dice"]
    # --which naming a's model file picks a's model only; the member run folder keeps its own
    again = evaluate_run(a.run_dir, "validation", which=str(model_file(a.run_dir)), ensemble=[b.run_dir], out=tmp_path / "w")
    assert json.loads((tmp_path / "w" / "metrics.json").read_text())["ensemble"] == metrics["ensemble"]
    assert again == summary

    # the CLI: predict writes the ensemble's label map and mean probabilities
    img = sorted((synth_root / "imagesTs").iterdir())[0]
    r = CliRunner().invoke(app, ["predict", str(a.run_dir), str(img), "-o", str(tmp_path / "p"), "--probabilities",
                                 "--ensemble", str(b.run_dir)])
    assert r.exit_code == 0, r.output
    name = img.name.replace("_0000.nii.gz", "")
    prob = np.asarray(nib.load(tmp_path / "p" / f"{name}_prob.nii.gz").dataobj)
    seg = np.asarray(nib.load(tmp_path / "p" / f"{name}.nii.gz").dataobj)
    assert np.array_equal(seg, prob.argmax(-1))
    r = CliRunner().invoke(app, ["predict", str(a.run_dir), str(img), "-o", str(tmp_path / "q"), "--probabilities"])
    alone = np.asarray(nib.load(tmp_path / "q" / f"{name}_prob.nii.gz").dataobj)
    assert r.exit_code == 0 and not np.allclose(prob, alone)


def test_a_member_that_trained_on_an_evaluated_case_is_refused(tiny_tree):
    a = _run(tiny_tree, "a")
    leaky = _run(tiny_tree, "leaky", data={**tiny_tree["data"], "splits": {"labelled": {"last": 3}, "validation": {"first": 1}}})
    with pytest.raises(InputError, match="trained on case") as e:
        evaluate_run(a.run_dir, "validation", ensemble=[leaky.run_dir])
    assert str(leaky.run_dir) in str(e.value) and not (a.run_dir / "eval_validation_mean_of_2").exists()
    # on the run's own labelled cases nothing is held out: allowed
    evaluate_run(a.run_dir, "labelled", ensemble=[leaky.run_dir])


def test_members_must_predict_the_same_classes():
    def member(k, names, channels=1):
        return SimpleNamespace(num_classes=k, class_names=names, in_channels=channels, cfg=None, step=1)

    with pytest.raises(InputError, match="cannot be averaged") as e:
        MeanOfModels([member(3, ["bg", "a", "b"]), member(2, ["bg", "a"])], ["m1.pt", "m2.pt"])
    assert "m2.pt" in str(e.value)
    with pytest.raises(InputError, match="channel"):
        MeanOfModels([member(2, ["bg", "a"]), member(2, ["bg", "a"], 2)], ["m1.pt", "m2.pt"])
