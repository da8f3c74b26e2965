"""Tiny trained runs shared by the reporting tests: each is trained (and evaluated) once per
session from the ``tiny_tree`` config of tests/conftest.py; tests that change a run copy it first."""
import shutil

import pytest

from semi3d.config import load_config
from semi3d.engine.trainer import train
from semi3d.evaluation.evaluate import evaluate_run
from tiny_configs import TINY_SEGFORMER

_RUNS: dict = {}


@pytest.fixture(autouse=True)
def _single_threaded(one_thread):  # (pytestmark does not apply from a conftest)
    yield


def _train_once(key, tree, tmp_path_factory, evaluate=True):
    if key not in _RUNS:
        tree["output_dir"] = str(tmp_path_factory.mktemp(f"runs_{key}"))
        cfg = load_config(tree=tree)
        train(cfg)
        if evaluate:
            evaluate_run(cfg.run_dir, "validation")
        _RUNS[key] = cfg.run_dir
    return _RUNS[key]


@pytest.fixture
def sup_run(tiny_tree, tmp_path_factory):
    """A 6-iteration supervised run on the synthetic dataset, evaluated on its validation split
    (``RUN/eval_validation``). Unlabelled pool: syn_003 (labelled on disk), syn_005..007."""
    return _train_once("sup", tiny_tree, tmp_path_factory)


@pytest.fixture
def mn_run(tiny_tree, tmp_path_factory):
    """A 6-iteration M&N run (tiny SegFormer + tiny 3D U-Net, stage 2 from iteration 3), evaluated."""
    tiny_tree["name"] = "tiny_mn"
    tiny_tree["model"]["net2d"] = dict(name="segformer", options=dict(adaptation="full", config=TINY_SEGFORMER))
    tiny_tree["method"] = dict(name="mn", options=dict(epoch_length=1))
    tiny_tree["train"]["schedule"] = dict(name="cosine", cycles=[3])
    return _train_once("mn", tiny_tree, tmp_path_factory)


@pytest.fixture
def copy_run(tmp_path):
    """Copy a run folder into tmp_path (for tests that remove or change files)."""
    def _copy(run, name="copy"):
        dst = tmp_path / name
        shutil.copytree(run, dst)
        return dst

    return _copy
