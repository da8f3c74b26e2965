"""benchmarks/gpu_check.py (the prepared GPU run): the packed LA copy keeps the z-scored image up to
its 8-bit quantisation and the label exactly, and every config it builds is valid."""
from __future__ import annotations

import numpy as np
import pytest

from semi3d.config import load_config
from semi3d.data.preprocess import Preprocessor
from semi3d.data.readers import UAMTH5Reader
from semi3d.data.synthetic import write_dataset


@pytest.fixture
def mod(load_benchmark):
    return load_benchmark("gpu_check")


def test_packed_copy_is_the_half_resolution_case(mod, tmp_path):
    src = write_dataset(tmp_path / "LA", 2, 1, 0, seed=1, shape=(32, 28, 24), num_classes=2, format="uamt_h5")
    mod.pack_la(tmp_path / "half", root=src)
    ids = (tmp_path / "half" / "train.list").read_text().split()
    raw, packed = UAMTH5Reader(src), UAMTH5Reader(tmp_path / "half", list_file=tmp_path / "half" / "train.list")
    assert ids == raw.case_ids()
    half, z = Preprocessor(scale=0.5), Preprocessor()
    for cid in ids:
        a, b = half(raw.load(cid)), z(packed.load(cid))
        assert b.image.shape == a.image.shape == (1, 16, 14, 12)
        assert (a.label is None) == (b.label is None) and (a.label is None or np.array_equal(a.label, b.label))
        step = (a.image.max() - a.image.min()) / 255  # one quantisation level, in z units
        assert np.abs(b.image - a.image).max() <= step and np.abs(b.image - a.image).max() > 0


def test_configs_are_valid(mod, tmp_path):
    for m in mod.METHODS:
        cfg = load_config(tree=mod.tiny_tree(m, tmp_path, tmp_path, "auto", iterations=3))
        assert cfg.method.name == m and cfg.device == "cuda"
    ad = load_config(tree=mod.la_tree(tmp_path, tmp_path, "ad", 4, 800))
    sup = load_config(tree=mod.la_tree(tmp_path, tmp_path, "supervised", 4, 800))
    assert ad.data.splits.labelled.first == sup.data.splits.labelled.first == 4
    assert sup.model.net3d.name == "ad_student" and sup.method.options == {"strong_augment": True}
    assert sup.model.net3d.options == {k: ad.method.options[k] for k in sup.model.net3d.options}
    assert sup.data.splits.unlabelled == "none" and ad.data.splits.unlabelled == "rest"
    assert ad.data.preprocess.scale is None and ad.train.val_every == 200 and ad.train.selection == "final"
