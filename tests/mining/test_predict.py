"""semi3d predict with a mining run on 2D images: PNG masks on the input's pixels, the run's own
dev Dice, clear errors and no partial output."""
from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from semi3d.cli import app
from semi3d.mining.loop import run_mining
from test_loop import TINY_TRAIN, _kvasir_tree

runner = CliRunner()


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """A one-round identity-refiner mining run on 8 synthetic 32x32 'polyp' images (2 labelled,
    2 dev: img6, img7), at native size (``max_size: None``)."""
    tmp = tmp_path_factory.mktemp("mine_predict")
    tree = _kvasir_tree(tmp, {"name": "identity"})
    tree["train"] = {**TINY_TRAIN, "iterations": 40, "patch": None}
    tree["precision"] = "fp32"  # (bf16 matmuls differ with the batch: the dev pass batches the images)
    summary = run_mining(tree)
    return tmp, summary


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * (a & b).sum() / (a.sum() + b.sum()) if a.sum() + b.sum() else 1.0


def test_predicted_masks_score_the_runs_own_dev_dice(image_run, tmp_path):
    tmp, summary = image_run
    images = tmp / "kvasir" / "images"
    r = runner.invoke(app, ["predict", summary["run_dir"], str(images), "-o", str(tmp_path / "out"), "--precision", "fp32"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"img{i}.png" for i in range(8)]
    assert str(tmp_path / "out" / "img7.png") in r.output
    last = summary["rounds"][-1]
    for cid in ("img6", "img7"):
        pred = np.asarray(Image.open(tmp_path / "out" / f"{cid}.png"))
        assert pred.shape == (32, 32) and set(np.unique(pred)) <= {0, 255}
        truth = np.asarray(Image.open(tmp / "kvasir" / "masks" / f"{cid}.jpg").convert("L")) > 127
        assert _dice(pred > 0, truth) == pytest.approx(last["dev_cases"][cid]["dice"], abs=1e-6)
    # an earlier round's model: round 0 (labelled only) is logged too
    r = runner.invoke(app, ["predict", summary["run_dir"], str(images / "img6.jpg"), "-o", str(tmp_path / "r0"),
                            "--round", "0", "--precision", "fp32"])
    assert r.exit_code == 0, r.output
    pred = np.asarray(Image.open(tmp_path / "r0" / "img6.png")) > 0
    truth = np.asarray(Image.open(tmp / "kvasir" / "masks" / "img6.jpg").convert("L")) > 127
    assert _dice(pred, truth) == pytest.approx(summary["rounds"][0]["dev_cases"]["img6"]["dice"], abs=1e-6)


def test_images_resized_for_the_model_get_masks_of_their_own_size(image_run, tmp_path):
    """A run that resizes (``images.max_size``) predicts at that size and maps the probabilities
    back to each image's own size."""
    tmp, summary = image_run
    run = tmp_path / "run"
    shutil.copytree(summary["run_dir"], run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["images"]["max_size"] = 16
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    big = np.asarray(Image.open(tmp / "kvasir" / "images" / "img3.jpg").resize((64, 48)))
    Image.fromarray(big).save(tmp_path / "big.png")
    r = runner.invoke(app, ["predict", str(run), str(tmp_path / "big.png"), "-o", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    assert np.asarray(Image.open(tmp_path / "out" / "big.png")).shape == (48, 64)


def test_bad_inputs_and_options_are_named_and_nothing_is_written(image_run, tmp_path):
    tmp, summary = image_run
    run, images, out = summary["run_dir"], tmp / "kvasir" / "images", tmp_path / "out"
    (tmp_path / "broken.png").write_bytes(b"not a png")
    cases = [([str(images), str(tmp_path / "broken.png")], [], "broken.png: cannot read"),
             ([str(tmp / "kvasir" / "masks" / "img0.jpg"), str(images / "img0.jpg")], [], "same mask img0.png"),
             ([str(images)], ["--which", "best"], "--which: not an option for a mining run"),
             ([str(images)], ["--round", "7"], "round 7 did not finish; finished rounds: 0, 1")]
    for inputs, opts, message in cases:
        r = runner.invoke(app, ["predict", run, *inputs, "-o", str(out), *opts])
        assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, r.output
        assert not out.exists()


def test_round_is_only_for_a_mining_run(tmp_path):
    r = runner.invoke(app, ["predict", str(tmp_path), str(tmp_path), "-o", str(tmp_path / "o"), "--round", "1"])
    assert r.exit_code == 2 and "--round: only for a mining run" in r.output


def test_a_mining_run_on_volumes_predicts_with_its_rounds_run_folder(tmp_path):
    """semi3d predict MINING_RUN VOLUME: the last (or --round) round's run folder segments the volume
    slice by slice: the same masks as giving that folder itself."""
    from semi3d.data.synthetic import write_dataset
    from test_loop import _tree

    root = write_dataset(tmp_path / "LA", n_labelled=6, n_unlabelled=0, seed=1, shape=(24, 24, 8), num_classes=2,
                         format="uamt_h5", noise=0.2)
    summary = run_mining(_tree(root, tmp_path / "runs", rounds=1, save_pseudo="none", refiner={"name": "identity"}))
    run, vol = summary["run_dir"], str(sorted(root.rglob("*.h5"))[-1])
    for args, out in (([run], "a"), ([f"{run}/round1"], "b"), ([run, "--round", "0"], "c"), ([f"{run}/round0"], "d")):
        r = runner.invoke(app, ["predict", args[0], vol, "-o", str(tmp_path / out), *args[1:], "--precision", "fp32"])
        assert r.exit_code == 0, r.output
    read = [np.asarray(h5py.File(tmp_path / o / "mri_norm2.h5")["label"]) for o in "abcd"]
    assert np.array_equal(read[0], read[1]) and np.array_equal(read[2], read[3])
    r = runner.invoke(app, ["predict", run, vol, "-o", str(tmp_path / "e"), "--round", "4"])
    assert r.exit_code == 2 and "round 4 did not finish; finished rounds: 0, 1" in r.output
