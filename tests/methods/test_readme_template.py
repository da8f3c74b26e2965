"""The README's method template is real code: it registers, trains (the loss falls) and predicts."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from semi3d.config import load_config
from semi3d.engine.trainer import Trainer
from semi3d.registry import METHODS

README = Path(__file__).resolve().parents[2] / "README.md"
pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_readme_method_template_trains(tiny_tree):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    code = next(b for b in blocks if '@METHODS.register("tiny_mean_teacher")' in b)
    exec(compile(code, str(README), "exec"), {"__name__": "readme_template"})
    try:
        _train(tiny_tree)
    finally:
        METHODS._builders.pop("tiny_mean_teacher", None)  # registered for this test only


def _train(tiny_tree):
    tree = {**tiny_tree, "name": "tmt", "method": {"name": "tiny_mean_teacher", "options": {"consistency": 0.5}},
            "train": {**tiny_tree["train"], "iterations": 12, "log_every": 1, "val_every": 12}}
    tr = Trainer(load_config(tree=tree))
    tr.fit()
    recs = [json.loads(x) for x in tr.run.log.read_text().splitlines()]
    losses = [r["loss/supervised"] for r in recs if "loss/supervised" in r]
    assert len(losses) == 12 and sum(losses[-3:]) < sum(losses[:3])
    assert tr.run.model("final").is_file()
