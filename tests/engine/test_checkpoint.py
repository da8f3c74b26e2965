"""Checkpoint files: atomic writes, one clear error on a bad file, and re-saving a run's inference
model under other inference options (nothing retrained)."""
import pytest
import torch

from semi3d.config import load_config
from semi3d.engine import checkpoint as ckpt
from semi3d.engine.trainer import Trainer
from semi3d.errors import InputError


def test_save_atomic_round_trip_and_no_partial_file_on_failure(tmp_path):
    path = tmp_path / "a" / "x.pt"
    ckpt.save_atomic({"w": torch.arange(3)}, path)
    assert torch.equal(ckpt.load(path)["w"], torch.arange(3))

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        ckpt.save_atomic({"bad": Unpicklable()}, path)
    assert torch.equal(ckpt.load(path)["w"], torch.arange(3))  # the old file survives
    assert [p.name for p in path.parent.iterdir()] == ["x.pt"]  # no temporary left behind


def test_load_names_the_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        ckpt.load(tmp_path / "none.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot read"):
        ckpt.load(bad)


def test_resave_inference_model_equals_the_final_model(tiny_tree):
    tr = Trainer(load_config(tree=tiny_tree))
    tr.fit()
    run = tr.run.path
    out = ckpt.resave_inference_model(run, ["inference.mirror_axes=[0,1]"], run / "checkpoints" / "model_tta.pt")
    a, b = ckpt.load(run / "checkpoints" / "model_final.pt"), ckpt.load(out)
    assert a["net"] == b["net"] and a["step"] == b["step"] == tiny_tree["train"]["iterations"]
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert b["config"]["inference"]["mirror_axes"] == [0, 1] and a["config"]["inference"]["mirror_axes"] == []
