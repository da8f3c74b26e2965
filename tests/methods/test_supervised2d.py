"""supervised2d: M&N's 2D slice model alone, trained on labelled slices, evaluated as a 3D segmenter.

Tiny random-init U-Net++ (2 levels, 4 filters) on the tiny synthetic dataset, one thread.
"""
import copy
import json

import numpy as np
import pytest
import torch

from semi3d.config import load_config
from semi3d.data.formats import build_reader
from semi3d.data.splits import load_splits
from semi3d.engine.trainer import Trainer
from semi3d.errors import InputError
from semi3d.evaluation.evaluate import evaluate_run
from semi3d.inference.predictor import Predictor
from semi3d.losses import one_hot
from semi3d.methods.base import Batch, MethodContext
from semi3d.models.slicing import slices_to_volume, volume_to_slices
from semi3d.registry import METHODS, NETS2D, NETS3D
from semi3d.reporting.export import export_run
from semi3d.reporting.report import build_report

pytestmark = pytest.mark.usefixtures("one_thread")

NET2D = {"name": "unetpp2d", "options": {"widths": [4, 8]}}


def s2d_tree(tiny_tree, iterations=12, options=None):
    tree = copy.deepcopy(tiny_tree)
    tree["name"] = "s2d"
    tree["threads"] = 1
    tree["model"]["net2d"] = copy.deepcopy(NET2D)
    tree["method"] = {"name": "supervised2d", "options": options or {}}
    tree["train"].update(iterations=iterations, val_every=iterations, checkpoint_every=iterations)
    return tree


def build(tree):
    cfg = load_config(tree=tree)
    return METHODS.get("supervised2d")(MethodContext(cfg, 1, 3, cfg.train.iterations), **cfg.method.options)


def test_options_and_missing_net2d(tiny_tree):
    tree = s2d_tree(tiny_tree)
    tree["model"].pop("net2d")
    with pytest.raises(InputError, match="model.net2d") as e:
        build(tree)
    assert "supervised2d" in str(e.value)
    with pytest.raises(InputError, match="unknown option 'views'"):
        build(s2d_tree(tiny_tree, options={"views": [2]}))
    with pytest.raises(InputError, match="axis"):
        build(s2d_tree(tiny_tree, options={"axis": [2, 2]}))
    with pytest.raises(InputError, match="axis"):
        build(s2d_tree(tiny_tree, options={"axis": 3}))
    with pytest.raises(InputError, match="loss_weights"):
        build(s2d_tree(tiny_tree, options={"loss_weights": [0, 0]}))
    m = build(s2d_tree(tiny_tree, options={"axis": [0, 2]}))
    assert list(m.groups) == ["net2d"] and m.axes == (0, 2)
    assert m.predictor_spec().model_dump() == {"name": "slicewise2d", "options": {"net2d": NET2D, "axes": [0, 2]}}
    # pretrained CNN weights are replaced by the trained ones: the saved spec needs no weight file
    tree = s2d_tree(tiny_tree)
    tree["model"]["net2d"] = {"name": "unet2d_efficientnet_lite0",
                              "options": {"pretrained": "package", "decoder_channels": [8, 8, 8, 8, 8]}}
    spec = build(tree).predictor_spec().options["net2d"]
    assert spec == {"name": "unet2d_efficientnet_lite0", "options": {"decoder_channels": [8, 8, 8, 8, 8]}}


def test_loss_is_mns_2d_labelled_loss(tiny_tree):
    """The same value as M&N's stage-1 loss of its 2D model on the same labelled batch."""
    m = build(s2d_tree(tiny_tree))
    tree = s2d_tree(tiny_tree)
    tree["method"] = {"name": "mn", "options": {}}
    tree["train"]["schedule"] = {"name": "cosine", "cycles": [4]}
    cfg = load_config(tree=tree)
    mn = METHODS.get("mn")(MethodContext(cfg, 1, 3, cfg.train.iterations), **cfg.method.options)
    mn.groups["net2d"].load_state_dict(m.groups["net2d"].state_dict())
    x, lab = torch.randn(2, 1, 16, 16, 16), torch.randint(0, 3, (2, 16, 16, 16))
    loss = m.training_step(Batch(x, lab), 0)["net2d"]
    ref, dice, kl = mn._loss2d(x, one_hot(lab, 3))
    torch.testing.assert_close(loss, ref)
    assert m.log == {"dice/net2d": float(dice.detach()), "kl/net2d": float(kl.detach())}


def test_predictor_is_net2d_slice_by_slice(tiny_tree):
    net2d = NETS2D.build(NET2D["name"], in_channels=1, num_classes=3, **NET2D["options"]).eval()
    x = torch.randn(2, 1, 6, 5, 4)
    one = NETS3D.build("slicewise2d", in_channels=1, num_classes=3, net2d=NET2D, axes=[1])
    one.load_state_dict({f"net2d.{k}": v for k, v in net2d.state_dict().items()})
    one.eval()
    with torch.no_grad():
        # by hand: the (X, Z) slices along Y, volume-major, in one batch; each logit map put back at its Y
        out2d = net2d(torch.stack([x[n, :, :, j, :] for n in range(2) for j in range(5)]))
        by_hand = torch.zeros(2, 3, 6, 5, 4)
        for n in range(2):
            for j in range(5):
                by_hand[n, :, :, j, :] = out2d[n * 5 + j]
        assert torch.equal(one(x), by_hand)
        three = NETS3D.build("slicewise2d", in_channels=1, num_classes=3, net2d=NET2D, axes=[0, 1, 2])
        three.net2d.load_state_dict(net2d.state_dict())
        probs = sum(slices_to_volume(torch.softmax(net2d(volume_to_slices(x, a)), 1), 2, a) for a in (0, 1, 2)) / 3
        torch.testing.assert_close(torch.softmax(three.eval()(x), 1), probs)
    with pytest.raises(InputError, match="net2d"):
        NETS3D.build("slicewise2d", in_channels=1, num_classes=3)
    with pytest.raises(InputError, match="unknown option 'foo'"):
        NETS3D.build("slicewise2d", in_channels=1, num_classes=3, net2d=NET2D, foo=1)
    # the method's predictor wraps its own net2d, in its mode, without a second copy in the state dict
    m = build(s2d_tree(tiny_tree))
    assert m.predictor().net2d is m.groups["net2d"] and m.predictor().training
    assert all(k.startswith("groups.net2d.") for k in m.state_dict())


def test_train_lowers_loss_then_predict_evaluate_export(tiny_tree, tmp_path):
    cfg = load_config(tree=s2d_tree(tiny_tree, iterations=12))
    tr = Trainer(cfg)
    tr.fit()
    recs = [json.loads(r) for r in (cfg.run_dir / "log.jsonl").read_text().splitlines()]
    losses = [r["loss/net2d"] for r in recs if "loss/net2d" in r]
    assert len(losses) == 12 and np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3]), losses
    assert any("val/dice" in r for r in recs)

    model = cfg.run_dir / "checkpoints" / "model_final.pt"
    saved = torch.load(model, weights_only=False)
    assert saved["net"] == {"name": "slicewise2d", "options": {"net2d": NET2D, "axes": [2]}}
    pred = Predictor(model, device="cpu")
    net = tr.method.predictor().eval()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():  # equal up to float rounding: the trained net2d may be stored channels-last
        torch.testing.assert_close(pred.net(x), net(x))
    # the whole Predictor (preprocessing, sliding window, back to the grid) as with the in-memory model
    case = build_reader(cfg.data.format, cfg.data.root, **cfg.data.options).load(load_splits(cfg.run_dir / "splits.json")["validation"][0])
    in_memory = Predictor(model, device="cpu")
    in_memory.net = net
    torch.testing.assert_close(pred(case), in_memory(case))
    summary = evaluate_run(cfg.run_dir, split="validation")
    assert 0.0 <= summary["mean"]["dice"] <= 1.0
    assert (cfg.run_dir / "eval_validation" / "metrics.json").is_file()
    # the report names the network that predicts (the saved slice-wise 2D model, not the config's net3d)
    md = build_report(cfg.run_dir, tmp_path / "report")["markdown"].read_text()
    assert "**inference network**: slicewise2d" in md
    # the exported TorchScript bundle predicts the same
    export_run(cfg.run_dir, tmp_path / "bundle")
    bundle = Predictor(tmp_path / "bundle", device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(bundle.net(x), net(x))
