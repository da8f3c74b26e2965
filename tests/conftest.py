import copy
import importlib
import os
import sys
from pathlib import Path

import pytest
import torch

if "OMP_NUM_THREADS" not in os.environ:  # helpers / parallel jobs set it to share the cores
    torch.set_num_threads(min(2, os.cpu_count() or 1))

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"

TINY = {
    "name": "tiny",
    "seed": 0,
    "data": {
        "format": "nnunet",
        "root": "PLACEHOLDER",
        "splits": {"labelled": {"first": 3}, "validation": {"last": 1}, "test": {}},
        "patch_size": [16, 16, 16],
        "fg_oversample": 0.5,
    },
    "model": {"net3d": {"name": "unet3d", "options": {"levels": 3, "base": 4}}},
    "method": {"name": "supervised"},
    "train": {"iterations": 6, "batch_size": 2, "optimizer": {"lr": 0.01}, "val_every": 3,
              "log_every": 1, "checkpoint_every": 3, "progress_bar": False},
    "inference": {"overlap": 0.25},
}


@pytest.fixture(scope="module")
def one_thread():
    """Tiny convolutions on a shared 2-core machine run ~10x faster single-threaded; the thread
    count is restored after the module (also when a trainer set it from ``threads:``)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _fp32_on_every_cpu(monkeypatch):
    """``precision: auto`` means fp32 on CPU in every test, whatever the CPU: on one with native bf16
    (e.g. an AMD EPYC with avx512_bf16) auto would pick bf16 autocast, and tests that compare
    against fp32 references would depend on the machine (a V-Net whose tiny patches leave a 1x1x1
    level went NaN in bf16 until its tiny levels ran in fp32: ``engine.precision.fp32_small_convs``;
    ``test_trainer.py`` trains one under the real ``auto``). Tests of bf16 ask for it with ``precision: bf16``.
    ``tests/engine/test_distributed.py`` repeats this in its spawned ranks."""
    monkeypatch.setattr("semi3d.engine.precision.cpu_has_native_bf16", lambda: False)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """A tiny synthetic nnU-Net raw dataset: 5 labelled, 3 unlabelled, 2 test cases, 3 classes."""
    from semi3d.data.synthetic import write_dataset

    root = tmp_path_factory.mktemp("synth") / "Dataset001_Synth"
    write_dataset(root, n_labelled=5, n_unlabelled=3, n_test=2, seed=0, shape=(24, 24, 16), num_classes=3)
    return root


@pytest.fixture
def tiny_tree(synth_root, tmp_path):
    """A config dict for a few-second training on the synthetic dataset (run folder in tmp_path)."""
    tree = copy.deepcopy(TINY)
    tree["data"]["root"] = str(synth_root)
    tree["output_dir"] = str(tmp_path / "runs")
    return tree


@pytest.fixture(scope="session")
def mn_cpu_weights():
    """An override for ``configs/la_mn_cpu.yaml``'s 2D-model weights: the file the config names
    (relative to the repository root) when it is there (../shared), else random init (``null``),
    so the tests that build that config's 2D model run without ../shared too."""
    from semi3d.config import load_config

    weights = ROOT / load_config(ROOT / "configs" / "la_mn_cpu.yaml").model.net2d.options["pretrained"]
    return f"model.net2d.options.pretrained={weights if weights.is_file() else 'null'}"


@pytest.fixture(scope="session")
def load_benchmark():
    """``load_benchmark("compare_la")``: the script ``benchmarks/compare_la.py`` as a module, with
    ``benchmarks/`` on ``sys.path`` for the whole session (its scripts import each other)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module
