"""benchmarks/mine_kvasir.py: every variant's config is valid, the controls get the mining runs'
total iterations, and the table averages seeds per (variant, percent)."""
from __future__ import annotations

import json

import pytest

from semi3d.mining.config import load_mining_config


@pytest.fixture
def mod(load_benchmark):
    return load_benchmark("mine_kvasir")


def test_run_configs(mod, tmp_path):
    b = mod.BUDGET
    total = b["train"]["iterations"] + b["rounds"] * b["train"]["finetune_iterations"]
    cfgs = {v: load_mining_config(tree=mod.run_tree(v, 25, 1, tmp_path)) for v in mod.VARIANTS}
    assert cfgs["labelled"].rounds == 0 and cfgs["labelled"].train.iterations == total
    assert cfgs["labelled"].images.splits.labelled.first == 200 and cfgs["labelled"].images.splits.unlabelled == "none"
    assert cfgs["full"].images.splits.labelled.first == 800 and cfgs["full"].train.iterations == total
    assert cfgs["identity"].refiner.name == "identity" and cfgs["identity"].rounds == b["rounds"]
    assert cfgs["schedule"].unlabelled_max == 0 and cfgs["schedule"].rounds == b["rounds"]
    assert cfgs["identity"].unlabelled_max is None and cfgs["schedule"].refiner.name == "identity"
    lm = cfgs["litemedsam"]
    assert lm.refiner.name == "litemedsam" and lm.refiner.options["cache_dir"] == str(tmp_path / "kvasir_embeddings")
    assert lm.images.splits.validation.last == 100 and lm.seed == 1
    assert mod.run_name("full", 25, 1) == "mine_kvasir_full_p100_s1"
    mb = load_mining_config(tree=mod.run_tree("litemedsam", 75, 0, tmp_path, "mbv2"))
    assert mb.model.name == "unet2d_mobilenet_v2" and mb.name == "mine_kvasir_mbv2_litemedsam_p75_s0"
    assert mb.images.splits.labelled.first == 600 and cfgs["litemedsam"].model.name == "unetpp2d"
    assert mod.run_name("litemedsam", 25, 0, "mbv2", "_conf") == "mine_kvasir_mbv2_litemedsam_conf_p25_s0"
    # the committed results taught every refined pixel (the package's default is now "ignore")
    assert mb.select.disagree == "refined" and lm.select.disagree == "refined"


def test_set_overrides_reach_the_controls_schedule(mod, tmp_path):
    """``--set train.iterations=...`` lengthens the labelled-only control to the mining runs' new total
    (before the fix it kept the default total), and a LiteMedSAM option set by ``--set`` survives."""
    sets = ["train.iterations=1800", "train.finetune_iterations=600", "refiner.options.use_points=true",
            "select.disagree=ignore"]
    cfg = {v: load_mining_config(tree=mod.run_tree(v, 25, 0, tmp_path, "mbv2", overrides=sets))
           for v in ("labelled", "litemedsam", "identity")}
    assert cfg["labelled"].train.iterations == 1800 + 2 * 600 and cfg["labelled"].rounds == 0
    assert cfg["litemedsam"].train.iterations == 1800 and cfg["litemedsam"].train.finetune_iterations == 600
    assert cfg["litemedsam"].refiner.options == {"use_points": True, "cache_dir": str(tmp_path / "kvasir_embeddings")}
    assert cfg["identity"].refiner.name == "identity" and cfg["identity"].refiner.options == {}
    assert cfg["litemedsam"].select.disagree == "ignore"  # the `_agree` runs' override


def test_image_metrics_and_table(mod, tmp_path):
    m = mod.image_metrics({"a": {"dice": 1.0}, "b": {"dice": 0.5}})
    assert m["dice"] == 0.75 and m["iou"] == pytest.approx((1 + 1 / 3) / 2)
    for seed, dice in ((0, 0.8), (1, 0.6)):
        rounds = [{"round": 0}, {"round": 1, "pseudo_dice_kept": 0.9, "model_dice_kept": 0.8, "n_kept": 10}]
        (tmp_path / f"mine_kvasir_litemedsam_p25_s{seed}.json").write_text(json.dumps(
            {"variant": "litemedsam", "percent": 25, "dice": dice, "iou": dice / 2, "rounds": rounds, "wall_s": 60}))
    (tmp_path / "mine_kvasir_labelled_p25_s0.json").write_text(json.dumps(
        {"variant": "labelled", "percent": 25, "dice": 0.5, "iou": 0.3, "rounds": [{"round": 0}], "wall_s": 30}))
    (tmp_path / "mine_kvasir_litemedsam_conf_p25_s0.json").write_text(json.dumps(  # an ablation (--tag _conf)
        {"variant": "litemedsam", "tag": "_conf", "percent": 25, "dice": 0.9, "iou": 0.8, "rounds": rounds,
         "wall_s": 60}))
    rows = mod.table(tmp_path)
    assert [(r["variant"], r["seeds"]) for r in rows] == [("labelled", 1), ("litemedsam", 2), ("litemedsam_conf", 1)]
    assert rows[1]["dice"] == pytest.approx(0.7) and rows[1]["pseudo_dice_kept"] == 0.9
    assert rows[0]["pseudo_dice_kept"] is None
    assert "| 25 | litemedsam | 2 |" in mod.write_table(tmp_path)
