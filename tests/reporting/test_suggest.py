"""Next-cases-to-label: the scores and the ranking on known inputs, then the verb on tiny runs."""
import csv
import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from semi3d.cli import app
from semi3d.errors import InputError
from semi3d.models.slicing import SliceWise2D
from semi3d.reporting.suggest import (candidate_region, entropy_map, js_divergence_map, rank_cases,
                                      region_entropy, soft_dice_disagreement, suggest_cases)


def onehot(labels, k):
    return np.moveaxis(np.eye(k)[labels], -1, 0)


# ------------------------------------------------------------------------------ pure functions
def test_entropy_map_bounds():
    uniform = np.full((3, 2, 2, 2), 1 / 3)
    assert np.allclose(entropy_map(uniform), 1.0)
    assert np.allclose(entropy_map(onehot(np.zeros((2, 2, 2), int), 3)), 0.0)
    p = np.array([0.5, 0.5, 0.0])[:, None]  # two classes equally likely out of three: log 2 / log 3
    assert entropy_map(p)[0] == pytest.approx(math.log(2) / math.log(3))


def test_region_entropy_uses_the_dilated_candidate_region():
    k, shape = 2, (9, 9, 9)
    probs = np.zeros((k, *shape))
    probs[0] = 1.0                                  # confident background everywhere ...
    probs[:, 4, 4, 4] = [0.5, 0.5]                  # ... but one voxel undecided (entropy 1)
    region = candidate_region(probs, margin=1)
    assert region.sum() == 7                         # the voxel and its 6 neighbours
    assert region_entropy(probs, margin=1) == pytest.approx(1 / 7)
    assert region_entropy(probs, margin=0) == pytest.approx(1.0)
    # no candidate voxel: the volume mean
    probs[:, 4, 4, 4] = [0.95, 0.05]
    h = entropy_map(probs)
    assert region_entropy(probs) == pytest.approx(h.mean())


def test_soft_dice_disagreement_known_values():
    a = onehot(np.array([[0, 1], [1, 0]])[..., None], 2)
    assert soft_dice_disagreement(a, a) == pytest.approx(0.0)
    b = onehot(np.array([[1, 0], [0, 1]])[..., None], 2)           # foregrounds disjoint
    assert soft_dice_disagreement(a, b) == pytest.approx(1.0)
    c = onehot(np.array([[0, 1], [0, 0]])[..., None], 2)           # half of a's foreground
    assert soft_dice_disagreement(a, c) == pytest.approx(1 - 2 * 1 / (2 + 1))
    # soft maps: class 1 probabilities (0.5, 1) vs (1, 1) over two voxels -> 1 - 2*1.5/(1.25+2)
    s1 = np.array([[0.5, 0.0], [0.5, 1.0]])
    s2 = np.array([[0.0, 0.0], [1.0, 1.0]])
    assert soft_dice_disagreement(s1, s2) == pytest.approx(1 - 3 / 3.25)
    # a class empty in both maps is agreement; classes are averaged
    empty = onehot(np.zeros((2, 2, 1), int), 3)
    assert soft_dice_disagreement(empty, empty) == 0.0
    with pytest.raises(ValueError, match="shape"):
        soft_dice_disagreement(a, empty)


def test_js_divergence_map():
    a = onehot(np.array([0, 1]), 2)
    assert np.allclose(js_divergence_map(a, a), 0.0)
    assert np.allclose(js_divergence_map(a, a[::-1]), 1.0)  # opposite certain predictions: log 2, normalised
    u = np.full((2, 2), 0.5)
    assert np.all((js_divergence_map(a, u) > 0) & (js_divergence_map(a, u) < 1))


def test_rank_cases():
    scores = {"c": 0.2, "a": 0.5, "b": 0.5, "d": 0.1}
    assert rank_cases(scores) == [("a", 0.5), ("b", 0.5), ("c", 0.2), ("d", 0.1)]
    assert [c for c, _ in rank_cases(scores, 2)] == ["a", "b"]
    assert len(rank_cases(scores, 10)) == 4
    with pytest.raises(ValueError, match="non-finite"):
        rank_cases({"a": float("nan")})
    with pytest.raises(ValueError):
        rank_cases(scores, 0)


# ------------------------------------------------------------------------------ the verb
def test_suggest_entropy_on_a_supervised_run(sup_run, tmp_path):
    out = tmp_path / "sugg"
    res = suggest_cases(sup_run, k=2, out=out)
    pool = json.loads((sup_run / "splits.json").read_text())["unlabelled"]
    assert res["criterion"].startswith("entropy")
    assert sorted(r["case"] for r in res["ranking"]) == sorted(pool)
    scores = [r["score"] for r in res["ranking"]]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    assert res["suggested"] == [r["case"] for r in res["ranking"][:2]]
    on_disk = json.loads((out / "suggestions.json").read_text())
    assert on_disk["suggested"] == res["suggested"]
    rows = list(csv.DictReader((out / "suggestions.csv").open()))
    assert [r["case"] for r in rows] == [r["case"] for r in res["ranking"]]
    assert [r["suggested"] for r in rows] == ["1", "1"] + ["0"] * (len(pool) - 2)
    for r in res["ranking"][:2]:
        assert (out / r["overlay"]).stat().st_size > 1000
    assert "overlay" not in res["ranking"][2]


def test_suggest_disagreement_on_an_mn_run(mn_run, tmp_path):
    from semi3d.data.case import Case
    from semi3d.data.dataset import make_preprocessor
    from semi3d.data.formats import build_reader
    from semi3d.inference.predictor import predict_probs
    from semi3d.engine.rundir import RunDir
    from semi3d.reporting.suggest import load_method

    res = suggest_cases(mn_run, k=1, out=tmp_path / "s")
    assert res["criterion"].startswith("mn_disagreement") and len(res["suggested"]) == 1
    top = res["ranking"][0]
    assert 0 <= top["score"] <= 1 and "mean_js" in top
    # the score is the soft-Dice disagreement of the two checkpointed models
    cfg = RunDir(mn_run).load_config()
    m = load_method(mn_run, cfg)
    c = build_reader(cfg.data.format, cfg.data.root).load(top["case"])
    img = torch.from_numpy(make_preprocessor(cfg.data)(Case(c.id, c.image, None, c.spacing, c.affine)).image)
    dev = torch.device("cpu")
    p3 = predict_probs(m.groups["net3d"], img, cfg.data.patch_size, cfg.inference, dev).numpy()
    p2 = predict_probs(SliceWise2D(m.groups["net2d"], m.views), img, cfg.data.patch_size, cfg.inference, dev).numpy()
    assert top["score"] == pytest.approx(soft_dice_disagreement(p2, p3), abs=1e-5)


def test_suggest_bad_input(sup_run, mn_run, copy_run, tmp_path):
    with pytest.raises(InputError, match="no such run folder"):
        suggest_cases(tmp_path / "nope")
    with pytest.raises(InputError, match="--k"):
        suggest_cases(sup_run, k=0, out=tmp_path / "x")
    run = copy_run(mn_run, "mn_no_ckpt")
    (run / "checkpoints" / "last.pt").unlink()
    with pytest.raises(InputError, match="last.pt: no checkpoint"):
        suggest_cases(run, out=tmp_path / "y")
    run = copy_run(sup_run, "no_pool")
    splits = json.loads((run / "splits.json").read_text())
    splits["unlabelled"] = []
    (run / "splits.json").write_text(json.dumps(splits))
    with pytest.raises(InputError, match="no unlabelled cases"):
        suggest_cases(run, out=tmp_path / "z")


def test_cli_suggest(sup_run, tmp_path):
    r = CliRunner().invoke(app, ["suggest", str(sup_run), "--k", "1", "--out", str(tmp_path / "s")])
    assert r.exit_code == 0, r.output
    assert "criterion: entropy" in r.output and (tmp_path / "s" / "suggestions.csv").is_file()
    r = CliRunner().invoke(app, ["suggest", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "no such run folder" in r.output and "Traceback" not in r.output
