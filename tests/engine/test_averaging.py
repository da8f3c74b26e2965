import copy
import json

import pytest
import torch
from torch import nn

from semi3d.config import load_config
from semi3d.engine import checkpoint as ckpt
from semi3d.engine.averaging import WeightAverage
from semi3d.engine.runlog import TIMING_KEYS
from semi3d.engine.trainer import Trainer, train
from semi3d.errors import InputError
from semi3d.reporting.suggest import load_method


class _Method(nn.Module):
    def __init__(self):
        super().__init__()
        self.groups = nn.ModuleDict({"net": nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))})

    def predictor(self):
        return self.groups["net"]


def _set(method, value):
    with torch.no_grad():
        for p in method.groups.parameters():
            p.fill_(value)
        bn = method.groups["net"][1]
        bn.running_mean.fill_(value)
        bn.num_batches_tracked.fill_(int(10 * value))


def test_known_answer_from_start_on_with_buffers():
    m = _Method()
    avg = WeightAverage(m.groups, decay=0.75, start=2)
    _set(m, 1.0)
    for step in (0, 1):  # before start: nothing averaged, the live predictor is the model
        avg.update(m.groups, step)
        assert avg.predictor(m) is m.groups["net"]
    avg.update(m.groups, 2)  # the first update copies
    _set(m, 3.0)
    avg.update(m.groups, 3)  # 0.75 * 1 + 0.25 * 3
    net = avg.predictor(m)
    assert net is avg.groups["net"] and m.groups["net"] is not net  # the method keeps its live groups
    for p in net.parameters():
        assert torch.allclose(p, torch.full_like(p, 1.5))
    assert torch.allclose(net[1].running_mean, torch.full((2,), 1.5))  # float buffers averaged
    assert int(net[1].num_batches_tracked) == 30  # integer buffers copied
    assert int(avg.count) == 2 and not any(p.requires_grad for p in net.parameters())
    assert all(p.requires_grad for p in m.groups.parameters())


def _log(run_dir, drop=()):
    recs = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS and k not in drop} for r in recs]


def _final(run_dir):
    return ckpt.load(run_dir / "checkpoints" / "model_final.pt")["state_dict"]


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_average_is_validated_and_saved_and_training_is_unchanged(tiny_tree):
    """The averaged weights are the run's model (validated as val/dice, saved as model_final),
    the live ones are logged as val/dice@live, and the live training (losses, weights) is exactly
    that of the same run without averaging; resave gives either model from last.pt."""
    plain = load_config(tree={**tiny_tree, "name": "plain"})
    train(plain)
    avg_tree = copy.deepcopy(tiny_tree)
    avg_tree["train"]["weight_average"] = {"decay": 0.5, "start": 2}
    averaged = load_config(tree={**avg_tree, "name": "averaged"})
    train(averaged)

    a, b = plain.run_dir, averaged.run_dir
    log_a, log_b = _log(a), _log(b, drop=("val/dice@live",))
    assert [r for r in log_a if "loss/net" in r] == [r for r in log_b if "loss/net" in r]
    assert _equal(ckpt.load(a / "checkpoints" / "last.pt")["method"], ckpt.load(b / "checkpoints" / "last.pt")["method"])
    live = [r["val/dice@live"] for r in _log(b) if "val/dice@live" in r]
    assert live == [r["val/dice"] for r in log_a if "val/dice" in r] and len(live) == 2

    state = ckpt.load(b / "checkpoints" / "last.pt")["weight_average"]
    assert int(state["count"]) == 4  # steps 2..5 of 6
    averaged_net = {k.removeprefix("groups.net."): v for k, v in state.items() if k.startswith("groups.net.")}
    assert _equal(_final(b), averaged_net) and not _equal(_final(b), _final(a))

    groups = load_method(b).groups.state_dict()  # suggest's networks: the averaged ones too
    assert _equal({k.removeprefix("net."): v for k, v in groups.items()}, averaged_net)

    out = b / "checkpoints" / "model_x.pt"
    assert _equal(ckpt.load(ckpt.resave_inference_model(b, [], out))["state_dict"], _final(b))
    assert _equal(ckpt.load(ckpt.resave_inference_model(b, ["train.weight_average=null"], out))["state_dict"], _final(a))
    with pytest.raises(InputError, match="no averaged weights"):
        ckpt.resave_inference_model(a, ["train.weight_average={decay: 0.5}"], out)


def test_resume_with_averaging_equals_uninterrupted(tiny_tree):
    tiny_tree["train"].update(iterations=6, checkpoint_every=3, weight_average={"decay": 0.5, "start": 1})
    full = load_config(tree={**tiny_tree, "name": "full"})
    train(full)
    part = load_config(tree={**tiny_tree, "name": "part"})
    assert Trainer(part).fit(stop_at=4)["stopped"]
    Trainer(part, resume=True).fit()
    assert _equal(_final(full.run_dir), _final(part.run_dir))
    assert _log(full.run_dir) == _log(part.run_dir)


def test_resume_cannot_switch_averaging_on(tiny_tree):
    tiny_tree["train"].update(iterations=2, checkpoint_every=2)
    train(load_config(tree=tiny_tree))
    with pytest.raises(InputError, match="train.weight_average"):
        Trainer(load_config(tree=tiny_tree, overrides=["train.weight_average={decay: 0.9}"]), resume=True)
