"""mining/train2d.py: the small 2D model trains with the shared trainer."""
from __future__ import annotations

import numpy as np
import pytest
import yaml

from semi3d.config import DataConfig, NetSpec
from semi3d.mining.data2d import Slice2D
from semi3d.mining.train2d import TrainOptions, predict_probabilities, round_config, slice_data, train_small_model
from semi3d.registry import NETS2D


def _discs(n: int, seed: int, prefix: str) -> list[Slice2D]:
    """Bright discs on noise: image (1, 32, 32), label the disc."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:32, :32]
    out = []
    for i in range(n):
        cy, cx, r = rng.integers(10, 22), rng.integers(10, 22), rng.integers(5, 9)
        lab = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).astype(np.uint8)
        img = (lab * 2.0 + rng.normal(0, 0.5, lab.shape)).astype(np.float32)[None]
        out.append(Slice2D(f"{prefix}{i}", img, lab, f"{prefix}{i}"))
    return out


def test_the_small_model_learns_through_the_trainer(tmp_path):
    labelled = _discs(6, 0, "l")
    net = NETS2D.build("unetpp2d", in_channels=1, num_classes=2, widths=[8, 16], deep_supervision=True)
    opts = TrainOptions(iterations=60, batch_size=4, patch=(32, 32), lr=0.01, log_every=5)
    cfg = round_config(tmp_path / "round0", DataConfig(format="folder", root=tmp_path), NetSpec(name="unetpp2d", options={
        "widths": [8, 16], "deep_supervision": True}), opts, 60, 0.01, (32, 32), seed=0, device="cpu", precision="fp32")
    losses = train_small_model(net, slice_data(labelled, [], 2, 1, 0.5), cfg)
    assert len(losses) == 12 and np.mean(losses[-2:]) < 0.6 * np.mean(losses[:2])
    test = _discs(4, 1, "t")
    dice = []
    for s, p in zip(test, predict_probabilities(net, test)):
        pred = p.argmax(0)
        dice.append(2 * (pred * s.label).sum() / (pred.sum() + s.label.sum()))
    assert np.mean(dice) > 0.8
    run = tmp_path / "round0"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["method"] == {"name": "supervised2d", "options": {"axis": 2, "loss": "dice_ce"}}
    assert saved["precision"] == "fp32" and saved["data"]["patch_size"] == [32, 32, 1]
    assert (run / "checkpoints" / "last.pt").is_file()


def test_pseudo_labels_get_their_share_of_the_draws():
    labelled, pseudo = _discs(2, 0, "l"), _discs(6, 1, "p")
    data = slice_data(labelled, pseudo, 2, 1, 0.25)
    assert sum(data.weights[s.id] for s in pseudo) == pytest.approx(0.25)
    assert data.weights["l0"] == pytest.approx(0.375) and data.cases("labelled")[0].image.shape == (1, 32, 32, 1)
    assert slice_data(labelled, [], 2, 1, 0.25).weights is None
    with pytest.raises(ValueError, match="unique"):
        slice_data(labelled, labelled, 2, 1, 0.5)
